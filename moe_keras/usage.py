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
    layers = moe_layers(model)
    if isinstance(layer, str):
        layer = model.get_layer(layer)
    elif layer is None:
        if not layers:
            raise ValueError(f"Model `{model.name}` has no MoE layer.")
        layer = layers[0]
    y = np.asarray(y).astype(np.int64).reshape(-1)
    num_classes = int(num_classes or y.max() + 1)
    feeder = _router_inputs_model(model, layer)
    counts = np.zeros((num_classes, layer.num_experts), dtype=np.int64)
    for start in range(0, len(y), batch_size):
        stop = start + batch_size
        inputs = feeder(x[start:stop], training=False)
        indices = ops.convert_to_numpy(layer.expert_choices(inputs))
        # indices: (batch, positions..., k) -> one label per example.
        per_example = indices.reshape(indices.shape[0], -1)
        labels = np.repeat(y[start:stop], per_example.shape[1])
        np.add.at(counts, (labels, per_example.reshape(-1)), 1)
    return counts
