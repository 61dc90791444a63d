"""Keras models of the digit-recognizer pipeline, built from moe_keras layers.

Two architectures, each with a dense baseline so every MoE run has one:

* `cnn`: augmentation, two conv blocks (2 x (conv, batch norm, ReLU), max-pool),
  then a feature block (MoEDense MoE(k,n) with MLP experts of size `hidden`,
  or a dense MLP of the same shape for the baseline), then the classifier.
* `mlp`: the same feature block straight on the 784 raw pixels (the setup of
  the expert-collapse study); its baseline is the MLP 784-128-64-10.
"""

from dataclasses import dataclass
from dataclasses import field

import keras

from moe_keras import MoEConv2D
from moe_keras import MoEDense

ARCHITECTURES = ("cnn", "mlp")
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
# Width of the feature block's output, MoE or dense, in both architectures.
FEATURE_UNITS = 128


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the model (not the training).

    Attributes:
        arch: "cnn" or "mlp".
        moe: `(k, n)` for an MoE(k,n) feature block, `None` for the baseline.
        hidden: expert hidden size (MoE) or hidden width (baseline).
        shared: shared experts of the MoE block.
        conv_moe: `(k, n)` to make the second conv block an MoEConv2D.
        augment: random rotation/shift/zoom in front of the CNN.
        hidden_dropout: dropout on the feature block's hidden layer: the
            experts' hidden activations (MoEDense `expert_dropout`) or the
            dense baseline's hidden layer, so both get the same recipe.
        routing: MoE layer arguments for balancing and capacity
            (`switch_loss_weight`, `bias_update_rate`, `capacity_factor`, ...);
            `bias_update_rate=None` means `resolve_routing`'s choice.
    """

    arch: str = "cnn"
    moe: tuple[int, int] | None = (3, 5)
    hidden: int = 64
    shared: int = 0
    conv_moe: tuple[int, int] | None = None
    augment: bool = True
    hidden_dropout: float = 0.0
    routing: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(
                f"Unknown architecture {self.arch!r}; expected one of {ARCHITECTURES}."
            )
        for name in ("moe", "conv_moe"):
            value = getattr(self, name)
            if value is not None:
                k, n = value
                if not 1 <= k <= n:
                    raise ValueError(
                        f"`{name}` must be K,N with 1 <= K <= N; got {k},{n}."
                    )
        if not 0 <= self.hidden_dropout < 1:
            raise ValueError(
                f"`hidden_dropout` must be in [0, 1); got {self.hidden_dropout}."
            )
        if self.conv_moe is not None and self.arch != "cnn":
            raise ValueError("`conv_moe` needs the cnn architecture.")

    @property
    def name(self):
        """Run name that spells the config, e.g. `cnn-moe3of5-h64-s0`."""
        if self.moe is None:
            parts = [self.arch, "dense", f"h{self.hidden}"]
        else:
            k, n = self.moe
            parts = [self.arch, f"moe{k}of{n}", f"h{self.hidden}", f"s{self.shared}"]
        if self.conv_moe is not None:
            parts.append("conv{}of{}".format(*self.conv_moe))
        if self.arch == "cnn" and not self.augment:
            parts.append("noaug")
        if self.hidden_dropout:
            parts.append(f"hdrop{self.hidden_dropout:g}")
        return "-".join(parts)


def _augmentation(seed):
    return keras.Sequential(
        [
            keras.layers.RandomRotation(0.05, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(
                0.1, 0.1, fill_mode="constant", seed=seed
            ),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed),
        ],
        name="augment",
    )


def _conv_block(x, filters, index, conv_moe=None, routing=None):
    """Two 3x3 convs (the first an MoEConv2D with `conv_moe`), BN, ReLU, pool."""
    for position in (1, 2):
        name = f"conv{index}_{position}"
        if position == 1 and conv_moe is not None:
            k, n = conv_moe
            x = MoEConv2D(
                filters,
                3,
                num_experts=n,
                top_k=k,
                padding="same",
                use_bias=False,
                name=f"moe_conv{index}",
                **_conv_routing(routing or {}, k),
            )(x)
        else:
            x = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, name=name
            )(x)
        # Momentum 0.9: with ~30-60 steps an epoch on the embedded sample, the
        # default 0.99 leaves the inference statistics epochs behind.
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{index}_{position}")(x)
        x = keras.layers.Activation("relu", name=f"relu{index}_{position}")(x)
    return keras.layers.MaxPooling2D(name=f"pool{index}")(x)


def _conv_routing(routing, top_k):
    # Capacity is a token-dropping notion of MoEDense; conv experts are dropless.
    routing = resolve_routing(routing, top_k)
    return {k: v for k, v in routing.items() if k != "capacity_factor"}


# Loss-free balancing rate used when the routing config leaves it to us.
DEFAULT_BIAS_UPDATE_RATE = 1e-3


def resolve_routing(routing, top_k):
    """Fills the pipeline's routing defaults for a layer choosing `top_k`.

    The router is cosine (`router_type="cosine"`) unless the config says
    otherwise: the MoE block routes a flattened 3,136-wide conv feature map,
    on which a linear router's logits grew to a standard deviation of 15
    within three epochs, so MoE(3,5) mixed its 3 experts with weights
    0.96/0.03/0.005, in effect a top-1 layer (reports/router_saturation.md).

    `bias_update_rate=None` means "auto":
    The DeepSeek-V3 bias is on (1e-3) for k >= 2, where the selected
    experts' weights are renormalised, so an expert the bias brings in gets a
    real share of the output. For k = 1 it stays off: there the Switch gate
    is the expert's raw probability, and on a collapsed router the bias
    (growing by `rate` every step) eventually hands every token at once to
    experts whose probability is ~0: outputs near zero, and training broke
    down in the measured MoE(1,5) run (train accuracy 0.95 -> 0.18 within
    two epochs, see README).
    """
    routing = dict(routing)
    routing.setdefault("router_type", "cosine")
    if routing.get("bias_update_rate") is None:
        routing["bias_update_rate"] = DEFAULT_BIAS_UPDATE_RATE if top_k > 1 else 0.0
    return routing


def _feature_block(x, config, seed):
    """MoE(k,n) of MLP experts, or the dense MLP it is compared with."""
    if config.moe is None:
        if config.arch == "mlp":
            # The collapse study's baseline MLP 784-128-64-10.
            x = keras.layers.Dense(128, activation="relu", name="dense1")(x)
            if config.hidden_dropout:
                x = keras.layers.Dropout(
                    config.hidden_dropout, seed=seed, name="dropout_hidden"
                )(x)
            return keras.layers.Dense(64, activation="relu", name="dense2")(x)
        x = keras.layers.Dense(config.hidden, activation="relu", name="dense_hidden")(x)
        if config.hidden_dropout:
            x = keras.layers.Dropout(
                config.hidden_dropout, seed=seed, name="dropout_hidden"
            )(x)
        return keras.layers.Dense(FEATURE_UNITS, activation="relu", name="dense_out")(x)
    k, n = config.moe
    return MoEDense(
        FEATURE_UNITS if config.arch == "cnn" else 64,
        num_experts=n,
        top_k=k,
        expert_hidden=config.hidden,
        expert_dropout=config.hidden_dropout,
        num_shared_experts=config.shared,
        activation="relu",
        seed=seed,
        name="moe",
        **resolve_routing(config.routing, k),
    )(x)


def build_model(config, seed=0):
    """Builds the (uncompiled) Keras model for `config`.

    Args:
        config: a `ModelConfig`.
        seed: seed of the augmentation and the router noise.

    Returns:
        A Functional `keras.Model` mapping `(batch, 28, 28, 1)` images in
        [0, 1] to class probabilities.
    """
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = inputs
    if config.arch == "cnn":
        if config.augment:
            x = _augmentation(seed)(x)
        x = _conv_block(x, 32, 1)
        x = _conv_block(x, 64, 2, config.conv_moe, config.routing)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dropout(0.25, seed=seed, name="dropout_features")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    x = _feature_block(x, config, seed)
    if config.arch == "cnn":
        x = keras.layers.Dropout(0.25, seed=seed, name="dropout_head")(x)
    # float32 head: the softmax stays exact under a mixed precision policy.
    outputs = keras.layers.Dense(
        NUM_CLASSES, activation="softmax", dtype="float32", name="classifier"
    )(x)
    return keras.Model(inputs, outputs, name=config.name)


def count_parameters(model):
    """`(total, active_per_input)` trainable parameters.

    Active parameters replace each MoE layer's experts by what one input uses
    (its k routed experts plus the shared ones, and the router). For a
    pixel-routed conv layer that is per pixel; the pipeline routes per sample.
    """
    from moe_keras.usage import moe_layers

    total = int(sum(keras.ops.size(w) for w in model.trainable_weights))
    active = total
    for layer in moe_layers(model):
        layer_total = int(sum(keras.ops.size(w) for w in layer.trainable_weights))
        active += layer.count_params_per_token() - layer_total
    return total, active
