"""The two models the study compares, as `pipelines.models.ModelConfig`s.

Baseline: MLP 784-128-64-10 (relu). MoE: `MoEDense(64, n experts, top-k,
expert_hidden=128, relu)` -> Dense(10, softmax), so each expert *is* the
baseline's 784-128-64 block and at k=1 one input uses about as many
parameters as the baseline does (plus the 784 x n router). Both are the
pipeline's `mlp` architecture; the MoE layer keeps its own routing defaults
(linear router, Switch loss 0.01), which the study measures.
"""

from __future__ import annotations

from pipelines.models import MLP_HIDDEN as HIDDEN
from pipelines.models import MLP_UNITS as UNITS  # noqa: F401 (the report quotes it)
from pipelines.models import MOE_LAYER_NAME  # noqa: F401 (the runner's column prefix)
from pipelines.models import ModelConfig


def baseline() -> ModelConfig:
    """Dense MLP features-128-64-10."""
    return ModelConfig(arch="mlp", moe=None, hidden=HIDDEN, routing_defaults="layer")


def moe(num_experts: int, top_k: int = 1, standardize: bool = False, **routing) -> ModelConfig:
    """MoEDense(64) with MLP experts (features-128-64) and a softmax head.

    Args:
        num_experts: routed experts n.
        top_k: experts per input k.
        standardize: standardise the pixels first (torchvision's MNIST
            normalisation) instead of using them raw.
        **routing: `MoELayer` balancing/routing arguments; unspecified
            balancing weights keep the layer defaults (Switch 0.01).
    """
    return ModelConfig(arch="mlp", moe=(top_k, num_experts), hidden=HIDDEN,
                       routing=dict(routing), routing_defaults="layer", standardize=standardize)
