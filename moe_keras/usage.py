"""Expert usage: routing statistics and class x expert routing counts.

Host-side (NumPy) helpers that read what the MoE layers recorded or route a
dataset through a trained model; the collapse study and the
`ExpertUsage` callback are built on them.
"""

import keras
import numpy as np
from keras import ops

from moe_keras.layers.moe_layer import MoELayer
from moe_keras.stats import summarize_counts  # noqa: F401  (public here too)


def _sublayers(layer):
    """The layers a layer holds: a model's `layers`, and layers kept as
    attributes (or in lists, tuples and dicts of them), as Keras tracks them."""
    held = list(getattr(layer, "layers", None) or [])
    for value in vars(layer).values():
        values = value.values() if isinstance(value, dict) else value
        if isinstance(values, (list, tuple)) or isinstance(value, dict):
            held.extend(v for v in values if isinstance(v, keras.layers.Layer))
        elif isinstance(value, keras.layers.Layer):
            held.append(value)
    return held


def moe_layers(model):
    """All `MoELayer`s of a model (or layer), outer first, depth first."""
    found, seen, stack = [], set(), [model]
    while stack:
        layer = stack.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, MoELayer):
            found.append(layer)
        stack[:0] = _sublayers(layer)
    return found


def _router_inputs_model(model, layer):
    """A model from `model`'s inputs to `layer`'s input (functional models)."""
    try:
        return keras.Model(model.input, layer.input)
    except (AttributeError, ValueError) as error:
        raise ValueError(
            "Routing counts need a Functional or Sequential model whose MoE "
            f"layer `{layer.name}` was called once on symbolic inputs; "
            f"could not reach its input: {error}"
        ) from error


def _resolve_layer(model, layer):
    if isinstance(layer, str):
        return model.get_layer(layer)
    if layer is None:
        layers = moe_layers(model)
        if not layers:
            raise ValueError(f"Model `{model.name}` has no MoE layer.")
        return layers[0]
    return layer


def _expert_choices(model, x, layer, batch_size):
    """Yields `(start, indices)`: the inference top-k choices of `layer`
    for `x[start:start + batch_size]`, `(batch, positions..., k)` NumPy."""
    feeder = _router_inputs_model(model, layer)
    for start in range(0, len(x), batch_size):
        inputs = feeder(x[start:start + batch_size], training=False)
        yield start, ops.convert_to_numpy(layer.expert_choices(inputs))


def routing_counts(model, x, y, layer=None, num_classes=None, batch_size=256):
    """Class x expert routing counts of a trained model on a dataset.

    Every token routed by `layer` is counted once for each of its top-k
    experts under the label of the example it came from (for images routed
    per pixel or sequences routed per position, all positions of an example
    carry its label). Inference routing: no noise, no capacity dropping.

    Args:
        model: a Functional or Sequential Keras model.
        x: inputs (NumPy array).
        y: integer class labels `(N,)`.
        layer: the MoE layer, or its name; defaults to the first MoE layer.
        num_classes: rows of the result; defaults to `max(y) + 1`.
        batch_size: batch size of the forward passes.

    Returns:
        `(num_classes, n)` int64 NumPy array.
    """
    layer = _resolve_layer(model, layer)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    num_classes = int(num_classes or y.max() + 1)
    counts = np.zeros((num_classes, layer.num_experts), dtype=np.int64)
    for start, indices in _expert_choices(model, x, layer, batch_size):
        # indices: (batch, positions..., k) -> one label per example.
        per_example = indices.reshape(indices.shape[0], -1)
        labels = np.repeat(y[start:start + len(indices)], per_example.shape[1])
        np.add.at(counts, (labels, per_example.reshape(-1)), 1)
    return counts


def routing_maps(model, x, layer=None, batch_size=256):
    """Share of the inputs that send each position to each expert.

    For a layer that routes per position (`MoEConv2D(routing="pixel")`, or
    `MoEDense` on sequences), this is where in the image (or sequence) each
    expert works: 1 where every input picks that expert at that position.
    With top-k, each of the k choices counts, so the shares at a position
    add up to k.

    Args:
        model: a Functional or Sequential Keras model.
        x: inputs (NumPy array).
        layer: the MoE layer, or its name; defaults to the first MoE layer.
        batch_size: batch size of the forward passes.

    Returns:
        `(positions..., n)` float64 NumPy array, e.g. `(H, W, n)` for a
        pixel-routed convolution; `(n,)` for a layer that routes per sample.
    """
    layer = _resolve_layer(model, layer)
    total, seen = None, 0
    for _, indices in _expert_choices(model, x, layer, batch_size):
        one_hot = np.eye(layer.num_experts, dtype=np.float64)[indices].sum(axis=-2)
        batch_sum = one_hot.sum(axis=0)
        total = batch_sum if total is None else total + batch_sum
        seen += len(indices)
    if total is None:
        raise ValueError("`routing_maps` needs at least one input.")
    return total / seen
