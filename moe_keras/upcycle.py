"""Sparse upcycling (Komatsuzaki et al. 2022): trained Dense layers become
MoE layers whose experts all start as copies of them.

Every expert equals the dense layer at creation, and the mixing weights of
a token sum to one, so the MoE computes exactly what the dense layer did
until training moves the experts apart. With `top_k > 1` the k weights are
renormalised (`normalize_top_k=True`); with `top_k=1` the single weight is
renormalised to 1 as well, which keeps the output exact but means the task
loss does not reach the router until a second expert is in play: it learns
from the balancing losses only (pass `normalize_top_k=False` to trade
exactness at creation for a task-loss gradient: the output is then scaled
by the top probability).
"""

import keras
import numpy as np

from moe_keras.layers.moe_dense import MoEDense


def _check_dense(layer, name):
    if not isinstance(layer, keras.layers.Dense):
        raise ValueError(
            f"`{name}` must be a `keras.layers.Dense`. Received: "
            f"{type(layer).__name__} `{getattr(layer, 'name', layer)}`"
        )
    if not layer.built:
        raise ValueError(f"`{name}` (`{layer.name}`) must be built: call it once first.")
    if getattr(layer, "quantization_mode", None):
        raise ValueError(
            f"`{name}` (`{layer.name}`) is quantized ({layer.quantization_mode}); "
            "MoE layers cannot be quantized: upcycle the float model instead."
        )
    if len(layer.kernel.shape) != 2:
        raise ValueError(f"`{name}` (`{layer.name}`) must have a 2D kernel.")


def from_dense(layer, num_experts, top_k=1, output_layer=None, **moe_kwargs):
    """A built `MoEDense` whose experts are copies of a trained Dense layer.

    Args:
        layer: a built `keras.layers.Dense`. Alone, it becomes linear
            experts with its activation as the layer's activation.
        num_experts: routed experts `n`.
        top_k: experts per token `k`.
        output_layer: optional built `Dense` applied to `layer`'s output:
            the pair `layer -> activation -> output_layer` becomes MLP
            experts (`expert_hidden = layer.units`, `expert_activation =
            layer.activation`, activation `output_layer.activation`).
        **moe_kwargs: other `MoEDense` arguments (routing, balancing,
            `name`, ...). `normalize_top_k` defaults to `True` here, which
            keeps the output exact for every `top_k` (see the module doc).

    Returns:
        A built `MoEDense` that computes what the dense layer(s) computed.
    """
    _check_dense(layer, "layer")
    input_dim = int(layer.kernel.shape[0])
    use_bias = layer.use_bias
    kwargs = {"normalize_top_k": True, "dtype": layer.dtype_policy, **moe_kwargs}
    if output_layer is None:
        moe = MoEDense(layer.units, num_experts, top_k=top_k, use_bias=use_bias,
                       activation=layer.activation, **kwargs)
        expert_weights = {"kernel": layer.kernel, "bias": layer.bias}
    else:
        _check_dense(output_layer, "output_layer")
        if int(output_layer.kernel.shape[0]) != layer.units:
            raise ValueError(
                f"`output_layer` (`{output_layer.name}`) takes "
                f"{output_layer.kernel.shape[0]} inputs but `layer` "
                f"(`{layer.name}`) gives {layer.units}."
            )
        if use_bias != output_layer.use_bias:
            raise ValueError(
                "`layer` and `output_layer` must both use biases or neither "
                f"(MoEDense has one `use_bias`). Received: {layer.use_bias} "
                f"and {output_layer.use_bias}."
            )
        moe = MoEDense(output_layer.units, num_experts, top_k=top_k,
                       expert_hidden=layer.units, expert_activation=layer.activation,
                       activation=output_layer.activation, use_bias=use_bias, **kwargs)
        expert_weights = {
            "hidden_kernel": layer.kernel, "hidden_bias": layer.bias,
            "kernel": output_layer.kernel, "bias": output_layer.bias,
        }
    moe.build((None, input_dim))
    for name, variable in moe.experts.items():
        source = keras.ops.convert_to_numpy(expert_weights[name])
        variable.assign(np.broadcast_to(source, variable.shape))
    return moe


def upcycle(model, layers, num_experts, top_k=1, **moe_kwargs):
    """Copies a Functional or Sequential model with Dense layers upcycled.

    Args:
        model: a built Functional or Sequential `keras.Model`.
        layers: names of Dense layers to turn into linear-expert MoE layers,
            or pairs `(first, second)` of Dense layers where `second`
            consumes only `first`'s output: the pair becomes one MLP-expert
            `MoEDense` (and `second` an identity).
        num_experts: routed experts `n` of every new MoE layer.
        top_k: experts per token.
        **moe_kwargs: other `MoEDense` arguments for every new layer.

    Returns:
        A new model (through `keras.models.clone_model`) with the other
        layers' weights copied, which predicts what `model` predicts until
        it trains.
    """
    if isinstance(layers, str):
        layers = [layers]
    replace, identities, used = {}, set(), set()
    for entry in layers:
        names = [entry] if isinstance(entry, str) else entry
        if (
            not isinstance(names, (list, tuple))
            or len(names) not in (1, 2)
            or not all(isinstance(name, str) for name in names)
        ):
            raise ValueError(
                "Each entry of `layers` must be a Dense layer's name or a pair "
                f"`(first, second)` of names. Received: {entry!r}"
            )
        for name in names:
            if name in used:
                raise ValueError(
                    f"Layer `{name}` is named by more than one entry of `layers`; "
                    "each Dense layer can be upcycled once."
                )
            used.add(name)
        if len(names) == 1:
            (name,) = names
            replace[name] = from_dense(model.get_layer(name), num_experts, top_k,
                                       name=f"{name}_moe", **moe_kwargs)
            continue
        first, second = (model.get_layer(name) for name in names)
        if second.input is not first.output:
            raise ValueError(
                f"`{second.name}` must take exactly `{first.name}`'s output to "
                "become the second half of its MLP experts."
            )
        replace[first.name] = from_dense(first, num_experts, top_k, output_layer=second,
                                         name=f"{first.name}_moe", **moe_kwargs)
        identities.add(second.name)
    def clone(layer):
        if layer.name in replace:
            return replace[layer.name]
        if layer.name in identities:
            return keras.layers.Identity(name=f"{layer.name}_upcycled")
        return layer.__class__.from_config(layer.get_config())

    upcycled = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in replace or layer.name in identities or not layer.weights:
            continue
        upcycled.get_layer(layer.name).set_weights(layer.get_weights())
    return upcycled
