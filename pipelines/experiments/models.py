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


def wide_baseline(num_experts: int) -> ModelConfig:
    """The dense MLP 784-w-64-10 with (within one unit of w) the total
    parameters of `moe(num_experts)`: the MoE's parameters, all active."""
    from dataclasses import replace

    from pipelines.models import build_model
    from pipelines.models import count_parameters

    flat = (784,)
    moe_total, _ = count_parameters(build_model(replace(moe(num_experts), input_shape=flat)))
    base = baseline()
    narrow, _ = count_parameters(build_model(replace(base, input_shape=flat)))
    # Each unit of the first layer adds 784 inputs, a bias and 64 outputs.
    per_unit = flat[0] + 1 + UNITS
    width = HIDDEN + round((moe_total - narrow) / per_unit)
    return ModelConfig(arch="mlp", moe=None, hidden=HIDDEN, mlp_hidden=width, routing_defaults="layer")


# The pipeline's CNN (`pipelines.models`, default recipe of the digit
# recognizer) with its MoE(3,5) head of h64 experts, and the dense head of
# the same active size (h192), as the digit-recognizer grid compares them.
CNN_MOE = (3, 5)
CNN_MOE_HIDDEN = 64
CNN_DENSE_HIDDEN = 192
# The trunk every recorded CNN run of the study used (the pipeline's default
# until it moved to strided convs): pending runs must match them.
CNN_TRUNK = "pool"


def cnn_moe_head() -> ModelConfig:
    return ModelConfig(arch="cnn", moe=CNN_MOE, hidden=CNN_MOE_HIDDEN, trunk=CNN_TRUNK)


def cnn_dense_head() -> ModelConfig:
    return ModelConfig(arch="cnn", moe=None, hidden=CNN_DENSE_HIDDEN, trunk=CNN_TRUNK)


def cnn_conv_experts(routing: str, num_experts: int = 4, top_k: int = 1) -> ModelConfig:
    """The CNN with its dense head and an `MoEConv2D` (top-k of n 3x3 conv
    experts, `routing` "sample" or "pixel") as the second block's first conv."""
    # The recorded runs had the pipeline's routing defaults of their day: no
    # loss-free bias for k = 1 (the pipeline has used it for every k since
    # December 2026). Pending runs must match them.
    layer_routing = {"bias_update_rate": 0.0} if top_k == 1 else {}
    return ModelConfig(arch="cnn", moe=None, hidden=CNN_DENSE_HIDDEN, conv_moe=(top_k, num_experts),
                       conv_routing=routing, trunk=CNN_TRUNK, routing=layer_routing)
