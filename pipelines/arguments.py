"""argparse types shared by the pipeline's command line and the examples:
each turns a bad value into argparse's one-line error and exit code 2."""

import argparse


def seed(text):
    """A run's seed, 0 to 2**32 - 1 (`pipelines.models.parse_seed`)."""
    # pipelines.models imports Keras: only commands that train parse a seed.
    from pipelines.models import parse_seed

    try:
        return parse_seed(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def at_least_one(text):
    """A whole number of at least 1 (epochs, counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
