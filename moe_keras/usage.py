"""Expert usage: routing statistics and class x expert routing counts.

Host-side (NumPy) helpers that read what the MoE layers recorded or route a
dataset through a trained model; the collapse study and the
`ExpertUsage` callback are built on them.
"""

import math

import keras
import numpy as np
from keras import ops


def moe_layers(model):
    """All `MoELayer`s of a model (or layer), outer first, in build order."""
    from moe_keras.layers.moe_layer import MoELayer

    found = [model] if isinstance(model, MoELayer) else []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, MoELayer):
            found.append(layer)
    return found


def summarize_counts(counts, dropped_slots=0.0):
    """Routing statistics of per-expert token-slot counts.

    Args:
        counts: `(n,)` token-slots routed to each expert.
        dropped_slots: slots dropped for lack of capacity.

    Returns:
        A dict: `load` (list of fractions summing to 1, all 0 before any
        token), `entropy` (nats; `log(n)` means perfectly balanced, 0 means
        one expert takes everything), `max_load_ratio` (largest load over the
        ideal `1/n`; 1.0 is perfect), `dead_experts` (experts with no token),
        `dropped_fraction` and `tokens` (slots counted).
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    num_experts = len(counts)
    load = counts / total if total > 0 else np.zeros_like(counts)
    nonzero = load[load > 0]
    # "+ 0.0" turns the -0.0 of a single busy expert into 0.0 for display.
    entropy = float(-(nonzero * np.log(nonzero)).sum()) + 0.0
    return {
        "load": [float(v) for v in load],
        "entropy": entropy,
        "max_entropy": math.log(num_experts),
        "max_load_ratio": float(load.max() * num_experts) if total > 0 else 0.0,
        "dead_experts": int((counts == 0).sum()) if total > 0 else num_experts,
        "dropped_fraction": float(dropped_slots / (total + 1e-12)) if total else 0.0,
        "tokens": float(total),
    }


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
