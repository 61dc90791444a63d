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
        layer = model.get_layer(layer)
    if layer is None:
        layers = moe_layers(model)
        if not layers:
            raise ValueError(f"Model `{model.name}` has no MoE layer.")
        return layers[0]
    if not isinstance(layer, MoELayer):
        raise ValueError(
            f"`layer` must be an MoE layer (MoEDense, MoEConv2D) of the model. "
            f"Received: {type(layer).__name__} `{getattr(layer, 'name', layer)}`"
        )
    return layer


def _num_inputs(x):
    """Examples in `x`: an array, or a list or dict of arrays (one per
    model input)."""
    return len(keras.tree.flatten(x)[0])


def _expert_choices(model, x, layer, batch_size):
    """Yields `(start, indices, real)`: the inference top-k choices of
    `layer` for `x[start:start + batch_size]`, `(batch, positions..., k)`
    NumPy, and `(batch, positions...)` booleans of the tokens that are not
    masked (`None` without a Keras mask)."""
    feeder = _router_inputs_model(model, layer)
    for start in range(0, _num_inputs(x), batch_size):
        rows = keras.tree.map_structure(lambda a: a[start:start + batch_size], x)
        inputs = feeder(rows, training=False)
        real = None
        if isinstance(inputs, (list, tuple)):
            # A Keras mask reached the layer: its node's inputs are
            # `[inputs, mask]`; masked tokens (padding) are not counted.
            inputs, mask = inputs[0], (inputs[1] if len(inputs) > 1 else None)
            if mask is not None:
                real = ops.convert_to_numpy(mask).astype(bool)
        yield start, ops.convert_to_numpy(layer.expert_choices(inputs)), real


def routing_counts(model, x, y, layer=None, num_classes=None, batch_size=256):
    """Class x expert routing counts of a trained model on a dataset.

    Every token routed by `layer` is counted once for each of its top-k
    experts under the label of the example it came from (for images routed
    per pixel or sequences routed per position, all positions of an example
    carry its label). Inference routing: no noise, no capacity dropping.
    Tokens masked by a Keras mask (padding) are not counted.

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
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != _num_inputs(x) or not len(y):
        raise ValueError(
            "`y` must hold one integer class label per input (shape `(N,)`, "
            f"N = len(x) = {_num_inputs(x)} > 0; one-hot labels: pass `argmax`). "
            f"Received: y of shape {y.shape}"
        )
    y = y.astype(np.int64)
    num_classes = int(num_classes or y.max() + 1)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"Labels must be in [0, num_classes={num_classes}). Received labels "
            f"from {y.min()} to {y.max()}."
        )
    counts = np.zeros((num_classes, layer.num_experts), dtype=np.int64)
    for start, indices, real in _expert_choices(model, x, layer, batch_size):
        # indices: (batch, positions..., k) -> one label per example.
        per_example = indices.reshape(indices.shape[0], -1)
        labels = np.repeat(y[start:start + len(indices)], per_example.shape[1])
        experts = per_example.reshape(-1)
        if real is not None:
            keep = np.repeat(real[..., None], indices.shape[-1], axis=-1).reshape(-1)
            labels, experts = labels[keep], experts[keep]
        np.add.at(counts, (labels, experts), 1)
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
    for _, indices, real in _expert_choices(model, x, layer, batch_size):
        one_hot = np.eye(layer.num_experts, dtype=np.float64)[indices].sum(axis=-2)
        if real is None:
            real = np.ones(indices.shape[:-1], dtype=bool)
        batch_sum = (one_hot * real[..., None]).sum(axis=0)
        total = batch_sum if total is None else total + batch_sum
        seen = seen + real.sum(axis=0)
    if total is None:
        raise ValueError("`routing_maps` needs at least one input.")
    # Masked positions (padding) count for neither the shares nor the
    # inputs they are shares of.
    seen = np.asarray(seen, dtype=np.float64)[..., None]
    return np.divide(total, seen, out=np.zeros_like(total), where=seen > 0)
