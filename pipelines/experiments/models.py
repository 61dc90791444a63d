"""The two models the study compares, and their parameter counts.

Baseline: MLP 784-128-64-10 (relu). MoE: `MoEDense(64, n experts, top-k,
expert_hidden=128, relu)` -> Dense(10, softmax), so each expert *is* the
baseline's 784-128-64 block and at k=1 one input uses about as many
parameters as the baseline does (plus the 784 x n router).
"""

from __future__ import annotations

import keras

from moe_keras import MoEDense

HIDDEN = 128
UNITS = 64
NUM_CLASSES = 10
MOE_LAYER_NAME = "moe"

# torchvision's MNIST recipe, Normalize((0.1307,), (0.3081,)), which PyTorch
# studies usually apply: it centres the pixels that the router sees.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

# Every balancing term off: the layer's default Switch weight is 0.01, and a
# run that asks for "no balancing" must really get none.
NO_BALANCING = {"switch_loss_weight": 0.0}


def build_baseline(features: int, seed: int) -> keras.Model:
    """Dense MLP features-128-64-10."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,))
    hidden = keras.layers.Dense(HIDDEN, activation="relu")(inputs)
    hidden = keras.layers.Dense(UNITS, activation="relu")(hidden)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(hidden)
    return keras.Model(inputs, outputs, name="baseline")


def build_moe(features: int, seed: int, num_experts: int, top_k: int = 1, standardize: bool = False,
              **routing) -> keras.Model:
    """MoEDense(64) with MLP experts (features-128-64) and a softmax head.

    Args:
        features: input size.
        seed: seeds weights and router noise.
        num_experts: routed experts n.
        top_k: experts per input k.
        standardize: map pixels x in [0, 1] to (x - 0.1307) / 0.3081 first
            (torchvision's MNIST normalisation) instead of using them raw.
        **routing: `MoELayer` balancing/routing arguments; unspecified
            balancing weights keep the layer defaults (Switch 0.01).
    """
    keras.utils.set_random_seed(seed)
    # Functional, so that `routing_counts` can reach the MoE layer's input.
    inputs = keras.Input((features,))
    hidden = inputs
    if standardize:
        hidden = keras.layers.Rescaling(1 / MNIST_STD, offset=-MNIST_MEAN / MNIST_STD)(hidden)
    hidden = MoEDense(
        UNITS,
        num_experts=num_experts,
        top_k=top_k,
        expert_hidden=HIDDEN,
        activation="relu",
        seed=seed,
        name=MOE_LAYER_NAME,
        **routing,
    )(hidden)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(hidden)
    return keras.Model(inputs, outputs, name=f"moe_n{num_experts}_k{top_k}")
