"""Keras models of the digit-recognizer pipeline and of the MoE study, built
from moe_keras layers.

Two architectures, each with a dense baseline so every MoE run has one:

* `cnn`: augmentation, two conv blocks of two 3x3 convs with batch norm and
  ReLU, each halving the resolution (`trunk`: a stride of 2 in its second
  conv, or a max-pool after it; or the deeper trunk of the best Kaggle
  entry), then a feature block (MoEDense MoE(k,n)
  with MLP experts of size `hidden`, or a dense MLP of the same shape for
  the baseline), then the classifier.
* `mlp`: the same feature block straight on the raw pixels; its baseline is
  the MLP 784-128-64-10. The MoE study (`pipelines.experiments`) trains this
  architecture with `hidden=128` and the MoE layer's own routing defaults
  (`routing_defaults="layer"`), so that every expert is the baseline's
  784-128-64 block.
"""

import re
from dataclasses import dataclass
from dataclasses import field

import keras
import numpy as np

from moe_keras import MoEConv2D
from moe_keras import MoEDense
from pipelines.augment import ElasticDistortion

ARCHITECTURES = ("cnn", "mlp")
ROUTING_DEFAULTS = ("pipeline", "layer")
CONV_ROUTINGS = ("sample", "pixel")
TRUNKS = ("pool", "strided", "deep")
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
# Width of the cnn's feature block output, MoE or dense.
FEATURE_UNITS = 128
# The mlp's block: the baseline is 784-MLP_HIDDEN-MLP_UNITS-10 and an MoE
# block outputs MLP_UNITS.
MLP_HIDDEN = 128
MLP_UNITS = 64
MOE_LAYER_NAME = "moe"
# Simard et al.'s smoothness of the elastic distortion field, in pixels.
ELASTIC_SIGMA = 4.0

# torchvision's MNIST recipe, Normalize((0.1307,), (0.3081,)), which PyTorch
# studies usually apply: it centres the pixels that the router sees.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

# keras.utils.set_random_seed hands the seed to NumPy, which takes 32 bits.
MAX_SEED = 2**32 - 1


def parse_seed(value):
    """A run's seed as a plain `int`, from an int, a NumPy integer or a
    string of decimal digits (as a command line gives it).

    Keras' `SeedGenerator` accepts only `int`, so a `numpy.int64` seed (from
    `np.arange`, a DataFrame, ...) would otherwise fail deep in a layer.

    Raises:
        ValueError: for anything else (bools, floats, signs, other text) and
            for seeds outside [0, 2**32 - 1].
    """
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        seed = int(value.strip())
    elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        seed = int(value)
    else:
        raise ValueError(
            f"A seed must be a whole number from 0 to {MAX_SEED} (an int, a NumPy "
            f"integer or a string of digits); got {value!r} ({type(value).__name__})."
        )
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"A seed must be from 0 to {MAX_SEED}; got {seed}.")
    return seed


# Each run owns a block of this many layer seeds, so that no layer of run s
# replays the draws of some layer of run s + 1 (as seed, seed + 1, ... would).
_SEEDS_PER_RUN = 64
# MoEDense also seeds its expert dropout, with its seed + 1.
_SEED_STEP = 2
# Every backend's SeedGenerator state holds a seed below 2**31.
_SEED_MODULUS = 2**31


def layer_seeds(seed):
    """Yields a distinct seed for each random layer of one model, derived
    from the run's `seed`; take them with `next()` in build order."""
    start = parse_seed(seed) * _SEEDS_PER_RUN
    for offset in range(0, _SEEDS_PER_RUN, _SEED_STEP):
        yield (start + offset) % _SEED_MODULUS


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the model (not the training).

    Attributes:
        arch: "cnn" or "mlp".
        moe: `(k, n)` for an MoE(k,n) feature block, `None` for the baseline.
        hidden: expert hidden size (MoE) or hidden width (cnn baseline; the
            mlp baseline is 784-`mlp_hidden`-64).
        shared: shared experts of the MoE block.
        conv_moe: `(k, n)` to make the second conv block an MoEConv2D.
        augment: random rotation/shift/zoom in front of the CNN.
        elastic: `alpha` of an elastic distortion after that augmentation
            (`pipelines.augment.ElasticDistortion`, sigma
            `ELASTIC_SIGMA`); 0 leaves it out.
        hidden_dropout: dropout on the feature block's hidden layer: the
            experts' hidden activations (MoEDense `expert_dropout`) or the
            dense baseline's hidden layer, so both get the same recipe.
        routing: MoE layer arguments for balancing and capacity
            (`switch_loss_weight`, `bias_update_rate`, `capacity_factor`, ...).
        routing_defaults: "pipeline" fills `routing` with `resolve_routing`'s
            choices (cosine router, loss-free bias); "layer" passes
            it as it is, so unset arguments keep the MoE layer's own defaults
            (linear router, Switch loss 0.01), as the study measured them.
        input_shape: shape of one input; the cnn needs `(height, width,
            channels)`, the mlp flattens whatever it gets.
        standardize: map pixels x in [0, 1] to (x - 0.1307) / 0.3081 first
            (torchvision's MNIST normalisation) instead of using them raw.
        mlp_hidden: first-layer width of the mlp's dense baseline
            (784-`mlp_hidden`-64-10); the study widens it to match an MoE's
            total parameters.
        conv_routing: `MoEConv2D`'s `routing` for `conv_moe`, "sample" (one
            choice per image) or "pixel" (one per output position).
        trunk: how the cnn's conv blocks halve the resolution: "strided",
            a stride of 2 in the block's second conv (a quarter of that
            conv's work); "pool", a max-pool after two full-resolution convs;
            "deep", the best Kaggle entry's trunk (`_deep_trunk`), which
            ends in 128 features instead of 7 x 7 x 64. Runs recorded
            before this field existed used "pool".
    """

    arch: str = "cnn"
    moe: tuple[int, int] | None = (3, 5)
    hidden: int = 64
    shared: int = 0
    conv_moe: tuple[int, int] | None = None
    augment: bool = True
    elastic: float = 0.0
    hidden_dropout: float = 0.0
    routing: dict = field(default_factory=dict)
    routing_defaults: str = "pipeline"
    input_shape: tuple[int, ...] = IMAGE_SHAPE
    standardize: bool = False
    mlp_hidden: int = MLP_HIDDEN
    conv_routing: str = "sample"
    trunk: str = "strided"

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
        if self.elastic < 0:
            raise ValueError(f"`elastic` must be at least 0; got {self.elastic}.")
        if self.elastic and not (self.arch == "cnn" and self.augment):
            raise ValueError("`elastic` needs the cnn architecture with augmentation.")
        if not 0 <= self.hidden_dropout < 1:
            raise ValueError(
                f"`hidden_dropout` must be in [0, 1); got {self.hidden_dropout}."
            )
        if self.conv_moe is not None and self.arch != "cnn":
            raise ValueError("`conv_moe` needs the cnn architecture.")
        if self.conv_routing not in CONV_ROUTINGS:
            raise ValueError(
                f"`conv_routing` must be one of {CONV_ROUTINGS}; got {self.conv_routing!r}."
            )
        if self.trunk not in TRUNKS:
            raise ValueError(f"`trunk` must be one of {TRUNKS}; got {self.trunk!r}.")
        if self.mlp_hidden < 1:
            raise ValueError(f"`mlp_hidden` must be at least 1; got {self.mlp_hidden}.")
        if self.routing_defaults not in ROUTING_DEFAULTS:
            raise ValueError(
                f"`routing_defaults` must be one of {ROUTING_DEFAULTS}; "
                f"got {self.routing_defaults!r}."
            )
        # A record read back from JSON gives a list.
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        if self.arch == "cnn" and len(self.input_shape) != 3:
            raise ValueError(
                f"The cnn needs (height, width, channels) inputs; got {self.input_shape}."
            )

    @property
    def name(self):
        """Run name that spells the config, e.g. `cnn-moe3of5-h64-s0`."""
        if self.moe is None:
            parts = [self.arch, "dense", f"h{self.hidden}"]
        else:
            k, n = self.moe
            parts = [self.arch, f"moe{k}of{n}", f"h{self.hidden}", f"s{self.shared}"]
        if self.arch == "mlp" and self.moe is None and self.mlp_hidden != MLP_HIDDEN:
            parts.append(f"w{self.mlp_hidden}")
        if self.conv_moe is not None:
            parts.append("conv{}of{}".format(*self.conv_moe))
            if self.conv_routing != "sample":
                parts.append(self.conv_routing)
        if self.arch == "cnn" and self.trunk != "strided":
            parts.append(self.trunk)
        if self.arch == "cnn" and not self.augment:
            parts.append("noaug")
        if self.elastic:
            parts.append(f"el{self.elastic:g}")
        if self.hidden_dropout:
            parts.append(f"hdrop{self.hidden_dropout:g}")
        if self.standardize:
            parts.append("std")
        if self.routing_defaults == "layer":
            parts.append("layerrouting")
        return "-".join(parts)


def _augmentation(seeds, elastic):
    # One seed each: with a shared seed the three layers draw the same
    # uniforms, so rotation, shift and zoom of an image move together.
    layers = [
        keras.layers.RandomRotation(
            0.05, fill_mode="constant", seed=next(seeds), name="rotation"
        ),
        keras.layers.RandomTranslation(
            0.1, 0.1, fill_mode="constant", seed=next(seeds), name="translation"
        ),
        keras.layers.RandomZoom(0.1, fill_mode="constant", seed=next(seeds), name="zoom"),
    ]
    if elastic:
        layers.append(
            ElasticDistortion(elastic, ELASTIC_SIGMA, seed=next(seeds), name="elastic")
        )
    return keras.Sequential(layers, name="augment")


def _conv(x, filters, size, name, config, seeds, strides=1, padding="same", conv_moe=None):
    """A conv (an MoEConv2D MoE(k,n) when `conv_moe` is `(k, n)`), batch
    norm and ReLU."""
    if conv_moe is not None:
        k, n = conv_moe
        routing = _layer_routing(config)
        # Capacity is a token-dropping notion of MoEDense; conv experts
        # are dropless.
        routing.pop("capacity_factor", None)
        x = MoEConv2D(
            filters,
            size,
            num_experts=n,
            top_k=k,
            strides=strides,
            padding=padding,
            use_bias=False,
            routing=config.conv_routing,
            seed=next(seeds),
            name="moe_" + name.split("_")[0],
            **routing,
        )(x)
    else:
        x = keras.layers.Conv2D(
            filters, size, strides=strides, padding=padding, use_bias=False, name=name
        )(x)
    suffix = name.removeprefix("conv")
    # Momentum 0.9: with ~30-60 steps an epoch on the embedded sample, the
    # default 0.99 leaves the inference statistics epochs behind.
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{suffix}")(x)
    return keras.layers.Activation("relu", name=f"relu{suffix}")(x)


def _conv_block(x, filters, index, config, seeds=None, conv_moe=None):
    """Two 3x3 convs (the first an MoEConv2D MoE(k,n) when `conv_moe` is
    `(k, n)`), then half the resolution (`config.trunk`)."""
    strided = config.trunk == "strided"
    x = _conv(x, filters, 3, f"conv{index}_1", config, seeds, conv_moe=conv_moe)
    x = _conv(x, filters, 3, f"conv{index}_2", config, seeds, strides=2 if strided else 1)
    if strided:
        return x
    return keras.layers.MaxPooling2D(name=f"pool{index}")(x)


def _deep_trunk(x, config, seeds):
    """The trunk of the best Kaggle digit-recognizer entry: 32C3-32C3-32C5s2,
    64C3-64C3-64C5s2, 128C4 (the first conv of the 64 stage an MoEConv2D
    with `config.conv_moe`), each conv followed by batch norm and ReLU,
    dropout 0.4 after each stage; 28 x 28 pixels end as 1 x 1 x 128."""
    for filters, index in ((32, 1), (64, 2)):
        conv_moe = config.conv_moe if index == 2 else None
        x = _conv(x, filters, 3, f"conv{index}_1", config, seeds, padding="valid", conv_moe=conv_moe)
        x = _conv(x, filters, 3, f"conv{index}_2", config, seeds, padding="valid")
        x = _conv(x, filters, 5, f"conv{index}_3", config, seeds, strides=2)
        x = keras.layers.Dropout(0.4, seed=next(seeds), name=f"dropout{index}")(x)
    return _conv(x, 128, 4, "conv3", config, seeds, padding="valid")


def _layer_routing(config):
    if config.routing_defaults == "layer":
        return dict(config.routing)
    return resolve_routing(config.routing)


# Loss-free balancing rate used when the routing config leaves it to us.
DEFAULT_BIAS_UPDATE_RATE = 1e-3


def resolve_routing(routing):
    """Fills the pipeline's routing defaults for an MoE layer.

    The router is cosine (`router_type="cosine"`) unless the config says
    otherwise: the MoE block routes a flattened 3,136-wide conv feature map,
    on which a linear router's logits grew to a standard deviation of 15
    within three epochs, so MoE(3,5) mixed its 3 experts with weights
    0.96/0.03/0.005, in effect a top-1 layer (reports/router_saturation.md).

    `bias_update_rate=None` means the DeepSeek-V3 loss-free bias at 1e-3,
    for every k. Without it the cosine-routed MoE(1,5) ended with one to
    three of its five experts dead (one expert took 86% and 100% of the
    tokens in two of three seeds); with it every expert kept about a fifth
    of the tokens, and validation accuracy was 0.75 pp higher on the mean
    of the 3 seeds (95% t interval -1.73 to +3.23; the runs in
    `reports/records/digit_recognizer/k1-bias-off/` and `k1-bias-on/`).
    It was once off for k = 1: with the linear router, on an earlier
    recipe, the bias had handed every token at once to experts whose Switch
    gate (the raw probability) was near 0, and training broke down (no
    record kept).
    """
    routing = dict(routing)
    routing.setdefault("router_type", "cosine")
    if routing.get("bias_update_rate") is None:
        routing["bias_update_rate"] = DEFAULT_BIAS_UPDATE_RATE
    return routing


def _feature_block(x, config, seeds):
    """MoE(k,n) of MLP experts, or the dense MLP it is compared with."""
    if config.moe is None:
        if config.arch == "mlp":
            # The collapse study's baseline MLP 784-128-64-10 (wider with
            # `mlp_hidden`).
            x = keras.layers.Dense(config.mlp_hidden, activation="relu", name="dense1")(x)
            if config.hidden_dropout:
                x = keras.layers.Dropout(
                    config.hidden_dropout, seed=next(seeds), name="dropout_hidden"
                )(x)
            return keras.layers.Dense(MLP_UNITS, activation="relu", name="dense2")(x)
        x = keras.layers.Dense(config.hidden, activation="relu", name="dense_hidden")(x)
        if config.hidden_dropout:
            x = keras.layers.Dropout(
                config.hidden_dropout, seed=next(seeds), name="dropout_hidden"
            )(x)
        return keras.layers.Dense(FEATURE_UNITS, activation="relu", name="dense_out")(x)
    k, n = config.moe
    return MoEDense(
        FEATURE_UNITS if config.arch == "cnn" else MLP_UNITS,
        num_experts=n,
        top_k=k,
        expert_hidden=config.hidden,
        expert_dropout=config.hidden_dropout,
        num_shared_experts=config.shared,
        activation="relu",
        seed=next(seeds),
        name=MOE_LAYER_NAME,
        **_layer_routing(config),
    )(x)


def build_model(config, seed=0):
    """Builds the (uncompiled) Keras model for `config`.

    Weights are initialised from Keras' global seed (`fit` sets it); the
    random layers (augmentation, dropout, router noise) each get their own
    seed from `layer_seeds(seed)`.

    Args:
        config: a `ModelConfig`.
        seed: the run's seed (see `parse_seed`).

    Returns:
        A Functional `keras.Model` mapping `(batch, *config.input_shape)`
        inputs in [0, 1] to class probabilities.
    """
    seeds = layer_seeds(seed)
    inputs = keras.Input(config.input_shape, name="image")
    x = inputs
    if config.standardize:
        x = keras.layers.Rescaling(
            1 / MNIST_STD, offset=-MNIST_MEAN / MNIST_STD, name="standardize"
        )(x)
    if config.arch == "cnn":
        if config.augment:
            x = _augmentation(seeds, config.elastic)(x)
        if config.trunk == "deep":
            x = _deep_trunk(x, config, seeds)
        else:
            x = _conv_block(x, 32, 1, config)
            x = _conv_block(x, 64, 2, config, seeds, conv_moe=config.conv_moe)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dropout(0.25, seed=next(seeds), name="dropout_features")(x)
    elif len(config.input_shape) > 1:
        x = keras.layers.Flatten(name="flatten")(x)
    x = _feature_block(x, config, seeds)
    if config.arch == "cnn":
        x = keras.layers.Dropout(0.25, seed=next(seeds), name="dropout_head")(x)
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
