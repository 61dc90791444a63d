"""Kaggle digit-recognizer pipeline built on moe_keras."""
