"""`MoEDense`: a Mixture-of-Experts drop-in for `keras.layers.Dense`."""

import functools

import keras
from keras import activations
from keras import ops

from moe_keras import dispatch as dispatch_lib
from moe_keras import routing
from moe_keras.dispatch.strategy import DISPATCH_MODES
from moe_keras.layers.moe_layer import MoELayer
from moe_keras.layers.moe_layer import cast_to_compute_dtype
from moe_keras.layers.moe_layer import _positive_int
from moe_keras.layers.moe_layer import reshape_like


@keras.saving.register_keras_serializable(package="moe_keras")
class MoEDense(MoELayer):
    """Mixture-of-Experts dense layer: each token goes to its top-k of n experts.

    A linear router scores the `n` routed experts for every token,
    `p = softmax(x W_r)` (in float32 under every dtype policy); the token is
    sent to its `top_k` best experts and the layer returns

    `output = activation(sum_{e in topk(x)} g_e(x) E_e(x) + sum_s S_s(x))`

    where `g_e` are the mixing weights (see `normalize_top_k`), `E_e` the
    routed experts and `S_s` the always-active shared experts (DeepSeekMoE).
    Each expert is a linear map `features -> units`, or with `expert_hidden`
    a two-layer MLP `features -> expert_hidden -> units`.

    During training the layer adds its balancing losses with `add_loss`
    (the Switch loss at 0.01 by default), so `model.fit` optimises them with
    no change to the training loop, and it counts the tokens each expert gets
    (`routing_stats()`, `moe_keras.callbacks.ExpertUsage`).

    Inputs of any rank are routed per row of the last axis: `(batch, features)`
    routes each example, `(batch, seq, features)` each sequence position.

    Args:
        units: output dimension.
        num_experts: number of routed experts `n`.
        top_k: experts per token `k`.
        expert_hidden: `None` for linear experts, or the hidden size of
            two-layer MLP experts.
        expert_activation: activation of the MLP experts' hidden layer.
        expert_dropout: dropout rate on the MLP experts' hidden activations
            in training (Switch Transformer's "expert dropout", which helped
            its fine-tuning on small datasets); needs `expert_hidden`.
        num_shared_experts: always-active experts added to the mixture.
        capacity_factor: `None` for dropless routing; a number caps every
            expert at `ceil(capacity_factor * tokens * k / n)` token slots per
            training batch (first choices placed first). A dropped slot
            contributes nothing: a token dropped by all its experts gets only
            the shared experts' output.
        eval_capacity_factor: the same cap at inference. `None` (default)
            is dropless, so every prediction gets all its experts; Mesh
            TensorFlow and Switch use a larger factor than in training (2.0).
        dispatch: `"auto"` (default) picks per call
            (`moe_keras.dispatch.strategy.choose_dispatch`): every expert
            on every token while `n / k` is at most the backend's bound,
            dropless sparse otherwise (compute `~ T * k`, whatever `n`),
            capacity-sized buffers when a capacity factor is set.
            `"dense"` runs every expert on every token (MLP experts as two
            plain matmuls over their concatenated weights); `"sparse"` is
            dropless, or the capacity buffers with a capacity factor. All
            compute the same mixture, less any slots a capacity drops.
        **kwargs: the expert-weight arguments of `MoELayer` (`activation`
            of the layer output, `use_bias`, `kernel_initializer`,
            `bias_initializer`, `kernel_regularizer`, `bias_regularizer`,
            `kernel_constraint`, `bias_constraint`, as in `Dense`; variance-
            scaling initializers use one expert's fans), its routing and
            balancing arguments (`normalize_top_k`, `router_noise`,
            `noise_std`, `switch_loss_weight`, `importance_loss_weight`,
            `diversity_loss_weight`, `overflow_loss_weight`, `z_loss_weight`,
            `bias_update_rate`, `router_type`, `router_temperature`,
            `router_initializer`, `router_regularizer`,
            `seed`) and base `Layer` arguments (`name`, `dtype`, ...).

    Input shape:
        N-D tensor with shape `(batch_size, ..., features)`, N >= 2.

    Output shape:
        N-D tensor with shape `(batch_size, ..., units)`.

    Example:

    >>> layer = MoEDense(16, num_experts=4, top_k=2, num_shared_experts=1)
    >>> layer(np.zeros((8, 32))).shape
    (8, 16)
    >>> inputs = keras.Input((10, 32))
    >>> MoEDense(16, num_experts=8, expert_hidden=64)(inputs).shape
    (None, 10, 16)
    """

    def __init__(
        self,
        units,
        num_experts,
        top_k=1,
        expert_hidden=None,
        expert_activation="relu",
        expert_dropout=0.0,
        num_shared_experts=0,
        capacity_factor=None,
        eval_capacity_factor=None,
        dispatch="auto",
        **kwargs,
    ):
        super().__init__(num_experts=num_experts, top_k=top_k, **kwargs)
        _positive_int(units, "units")
        if expert_hidden is not None:
            _positive_int(expert_hidden, "expert_hidden")
        _positive_int(num_shared_experts, "num_shared_experts", allow_zero=True)
        if (
            not isinstance(expert_dropout, (int, float))
            or isinstance(expert_dropout, bool)
            or not 0 <= expert_dropout < 1
        ):
            raise ValueError(
                "Received an invalid value for `expert_dropout`, expected a "
                f"rate in [0, 1). Received: expert_dropout={expert_dropout!r}"
            )
        if expert_dropout and expert_hidden is None:
            raise ValueError(
                "`expert_dropout` drops the experts' hidden activations and "
                "needs MLP experts: set `expert_hidden`. Received: "
                f"expert_dropout={expert_dropout}, expert_hidden=None"
            )
        for name, factor in (
            ("capacity_factor", capacity_factor),
            ("eval_capacity_factor", eval_capacity_factor),
        ):
            if factor is not None and (
                not isinstance(factor, (int, float))
                or isinstance(factor, bool)
                or factor <= 0
            ):
                raise ValueError(
                    f"Received an invalid value for `{name}`, expected None "
                    f"(dropless) or a positive number. Received: {name}={factor!r}"
                )
        if dispatch not in DISPATCH_MODES:
            raise ValueError(
                "Received an invalid value for `dispatch`, expected one of "
                f"{DISPATCH_MODES}. Received: dispatch={dispatch!r}"
            )
        self.units = units
        self.expert_hidden = expert_hidden
        self.expert_activation = activations.get(expert_activation)
        self.expert_dropout = expert_dropout
        if expert_dropout:
            self.dropout_seed_generator = keras.random.SeedGenerator(
                None if self.seed is None else self.seed + 1
            )
        self.num_shared_experts = num_shared_experts
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.dispatch = dispatch
        # Expert choice sums into a segment count taken from the batch,
        # which TensorFlow's XLA bridge cannot size for an unknown batch.
        self.supports_jit = dispatch_lib.supports_xla(
            self.selection == "expert_choice"
            or "dropless" in (self.resolved_dispatch(True), self.resolved_dispatch(False))
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def resolved_dispatch(self, training=False):
        """`"dense"`, `"dropless"` or `"capacity"`: what `dispatch` means for
        a training or an inference call (`moe_keras.dispatch.strategy`)."""
        factor = self.capacity_factor if training else self.eval_capacity_factor
        return dispatch_lib.choose_dispatch(
            self.dispatch, self.num_experts, self.top_k, factor
        )

    @property
    def overflow_capacity_factor(self):
        return 1.0 if self.capacity_factor is None else float(self.capacity_factor)

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "The last dimension of the inputs to `MoEDense` should be "
                f"defined. Received: input_shape={input_shape}"
            )
        self.build_router(input_dim)
        self.experts = self._add_experts("expert", self.num_experts, input_dim)
        self.shared_experts = (
            self._add_experts("shared", self.num_shared_experts, input_dim)
            if self.num_shared_experts
            else None
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def _add_experts(self, prefix, count, input_dim):
        """Creates the stacked weights of `count` experts, as a dict."""
        if self.expert_hidden is None:
            return self.add_expert_weights(prefix, count, (input_dim, self.units))
        return {
            **self.add_expert_weights(
                prefix, count, (input_dim, self.expert_hidden), name="hidden_kernel"
            ),
            **self.add_expert_weights(
                prefix, count, (self.expert_hidden, self.units)
            ),
        }

    def _hidden_dropout(self, hidden, training, dropout_mask=None):
        if not (training and self.expert_dropout):
            return hidden
        if dropout_mask is None:
            return keras.random.dropout(
                hidden, self.expert_dropout, seed=self.dropout_seed_generator
            )
        return hidden * ops.cast(dropout_mask, hidden.dtype) / (1.0 - self.expert_dropout)

    def _run_experts(self, weights, x, training=False, dropout_mask=None):
        """Runs stacked experts: `(T, d)` shared or `(e, T, d)` per-expert input.

        Returns `(e, T, units)`.
        """
        if len(x.shape) == 3 and dispatch_lib.loops_over_experts(training):
            return dispatch_lib.map_experts(self._run_one_expert, x, weights)
        equation = "td,edh->eth" if len(x.shape) == 2 else "etd,edh->eth"
        if self.expert_hidden is not None:
            x = ops.einsum(equation, x, weights["hidden_kernel"])
            if self.use_bias:
                x = x + weights["hidden_bias"][:, None, :]
            x = self.expert_activation(x)
            x = self._hidden_dropout(x, training, dropout_mask)
            equation = "etd,edh->eth"
        y = ops.einsum(equation, x, weights["kernel"])
        if self.use_bias:
            y = y + weights["bias"][:, None, :]
        return y

    def _mix_all_experts(self, weights, tokens, combine=None, training=False):
        """Every expert on every `(T, d)` token, mixed by `(T, e)` weights
        (all ones when `combine` is `None`) -> `(T, units)`.

        MLP experts run as two plain matmuls: the first layers over their
        concatenated kernels, then the mixing weights scale the hidden
        activations, so the second layers sum over experts inside one
        matmul. Stacked einsums would make `(e, T, h)` and `(e, T, units)`
        intermediates in expert-major layout instead.
        """
        if self.expert_hidden is None:
            return dispatch_lib.dense_combine(self._run_experts(weights, tokens, training), combine)
        num_experts, input_dim, hidden_units = weights["hidden_kernel"].shape
        width = num_experts * hidden_units
        hidden = ops.matmul(
            tokens,
            ops.reshape(ops.transpose(weights["hidden_kernel"], (1, 0, 2)), (input_dim, width)),
        )
        hidden = ops.reshape(hidden, (-1, num_experts, hidden_units))
        if self.use_bias:
            hidden = hidden + weights["hidden_bias"]
        hidden = self.expert_activation(hidden)
        hidden = self._hidden_dropout(hidden, training)
        if combine is not None:
            combine = ops.cast(combine, hidden.dtype)
            hidden = hidden * combine[:, :, None]
        outputs = ops.matmul(
            ops.reshape(hidden, (-1, width)), ops.reshape(weights["kernel"], (width, self.units))
        )
        if self.use_bias:
            if combine is None:
                outputs = outputs + ops.sum(weights["bias"], axis=0)
            else:
                outputs = outputs + ops.matmul(combine, weights["bias"])
        return outputs

    def _run_one_expert(self, x, weights, dropout_mask=None, training=False):
        """One expert: its `(C, d)` rows and its own weights -> `(C, units)`."""
        if self.expert_hidden is not None:
            x = ops.matmul(x, weights["hidden_kernel"])
            if self.use_bias:
                x = x + weights["hidden_bias"]
            x = self.expert_activation(x)
            x = self._hidden_dropout(x, training, dropout_mask)
        y = ops.matmul(x, weights["kernel"])
        if self.use_bias:
            y = y + weights["bias"]
        return y

    def _run_grouped(self, rows, plan, training=False, dropout_mask=None):
        """The routed experts on `(R, d)` rows sorted by expert -> `(R, units)`."""
        weights = self.experts
        if dispatch_lib.loops_over_groups():
            # One split for the whole MLP: `grouped_matmul` would split the
            # rows and concatenate them again around each of the two matmuls.
            masks = () if dropout_mask is None else (dropout_mask,)
            return dispatch_lib.map_groups(
                functools.partial(self._run_one_expert, training=training),
                rows,
                plan.group_sizes,
                weights,
                *masks,
            )
        x = rows
        if self.expert_hidden is not None:
            x = dispatch_lib.grouped_matmul(x, weights["hidden_kernel"], plan.group_sizes)
            if self.use_bias:
                x = x + dispatch_lib.take_row_bias(weights["hidden_bias"], plan)
            x = self.expert_activation(x)
            x = self._hidden_dropout(x, training, dropout_mask)
        y = dispatch_lib.grouped_matmul(x, weights["kernel"], plan.group_sizes)
        if self.use_bias:
            y = y + dispatch_lib.take_row_bias(weights["bias"], plan)
        return y

    def _choice_dropout_mask(self, num_choices, training):
        """One keep-mask row per token choice, drawn before the dropless
        engines lay the choices out (random draws cannot happen inside the
        branches of `ops.switch` on JAX)."""
        if not (training and self.expert_dropout):
            return None
        noise = keras.random.uniform(
            (num_choices, self.expert_hidden), seed=self.dropout_seed_generator
        )
        return ops.cast(noise >= self.expert_dropout, "float32")

    def call(self, inputs, training=None, mask=None, use_causal_mask=False):
        inputs = cast_to_compute_dtype(inputs, self.compute_dtype)
        tokens = ops.reshape(inputs, (-1, inputs.shape[-1]))
        token_mask = None if mask is None else ops.reshape(mask, (-1,))
        if self.selection == "expert_choice":
            if use_causal_mask:
                raise ValueError(
                    "`selection='expert_choice'` lets every expert choose among "
                    "all tokens of the batch, later positions included, so it "
                    "cannot be causal. Use `selection='token_choice'` with "
                    "`use_causal_mask=True`."
                )
            outputs = self._expert_choice(tokens, token_mask, training)
            return reshape_like(outputs, inputs, (self.units,))
        factor = self.capacity_factor if training else self.eval_capacity_factor
        strategy = self.resolved_dispatch(training)
        num_tokens = tokens.shape[0]
        if num_tokens is None:
            num_tokens = ops.shape(tokens)[0]
        if strategy == "dropless" and not dispatch_lib.dropless_runs(num_tokens):
            strategy = "dense"
        if strategy == "capacity" and not dispatch_lib.static_buffers_run(num_tokens):
            # The dense mixture drops the same choices, with a traced capacity.
            strategy = "dense"
        capacity = limit = None
        if factor is not None:
            capacity, real_capacity = self._capacities(num_tokens, token_mask, factor)
            limit = capacity if real_capacity is None else real_capacity
        result = self.route(
            tokens, training=training, capacity=limit, token_mask=token_mask
        )
        if strategy == "dense":
            combine = routing.combine_weights(
                result.expert_weights,
                result.expert_indices,
                self.num_experts,
                result.keep,
            )
            outputs = self._mix_all_experts(self.experts, tokens, combine, training)
        elif strategy == "capacity":
            plan = dispatch_lib.sparse_dispatch_plan(
                result.expert_indices,
                result.positions,
                result.keep,
                self.num_experts,
                capacity,
            )
            buffers = dispatch_lib.gather_tokens(tokens, plan, self.num_experts)
            outputs = dispatch_lib.combine_slots(
                self._run_experts(self.experts, buffers, training),
                plan,
                result.expert_weights,
                result.keep,
            )
        else:
            outputs = self._dropless(tokens, result, token_mask, training)
        if self.shared_experts is not None:
            outputs = outputs + self._mix_all_experts(self.shared_experts, tokens, training=training)
        outputs = self.activation(outputs)
        return reshape_like(outputs, inputs, (self.units,))

    def _capacities(self, num_tokens, token_mask, factor):
        """Slots per expert for all `num_tokens` (the buffers' static size)
        and for the real, unmasked tokens alone (`None` without a mask):
        padding takes no slot, so it must not change which choices fit."""
        capacity = routing.expert_capacity(num_tokens, self.num_experts, self.top_k, factor)
        if token_mask is None:
            return capacity, None
        real_tokens = ops.sum(ops.cast(token_mask, "int32"))
        return capacity, routing.expert_capacity(real_tokens, self.num_experts, self.top_k, factor)

    def _expert_choice(self, tokens, token_mask, training):
        """Every expert runs on the `capacity` tokens it chose; every token
        sums what its choosers return (zero when none chose it)."""
        num_tokens = tokens.shape[0]
        if num_tokens is None:
            num_tokens = ops.shape(tokens)[0]
        if not dispatch_lib.static_buffers_run(num_tokens):
            raise ValueError(
                "`selection='expert_choice'` gives every expert a fixed number "
                "of tokens, computed from the number of tokens per call, which "
                f"must be static on the {keras.backend.backend()} backend; got "
                f"{num_tokens!r} (an export with a polymorphic batch size). "
                "Export with a fixed batch size, or use "
                "`selection='token_choice'`."
            )
        factor = (self.capacity_factor if training else self.eval_capacity_factor) or 1.0
        capacity, limit = self._capacities(num_tokens, token_mask, factor)
        weights, token_indices = self.route_expert_choice(
            tokens, capacity, training, token_mask, limit
        )
        flat = ops.reshape(token_indices, (-1,))
        buffers = ops.reshape(
            ops.take(tokens, flat, axis=0), (self.num_experts, -1, tokens.shape[-1])
        )
        outputs = self._run_experts(self.experts, buffers, training)
        outputs = outputs * ops.cast(weights, outputs.dtype)[..., None]
        outputs = ops.segment_sum(
            ops.reshape(outputs, (-1, self.units)), flat, num_segments=num_tokens
        )
        if self.shared_experts is not None:
            outputs = outputs + self._mix_all_experts(self.shared_experts, tokens, training=training)
        return self.activation(outputs)

    def _dropless(self, tokens, result, token_mask, training):
        """Every token through all k of its experts, compute `~ T * k`."""
        indices = result.expert_indices
        dropout_mask = self._choice_dropout_mask(
            ops.shape(indices)[0] * self.top_k, training
        )

        def laid_out(layout):
            return None if dropout_mask is None else layout(dropout_mask)

        return dispatch_lib.dropless_mixture(
            tokens,
            indices,
            result.expert_weights,
            self.num_experts,
            run_buffers=lambda buffers, layout: self._run_experts(
                self.experts, buffers, training, laid_out(layout)
            ),
            run_rows=lambda rows, plan, layout: self._run_grouped(
                rows, plan, training, laid_out(layout)
            ),
            token_mask=token_mask,
            rematerialize=training is not False,
        )

    @classmethod
    def from_dense(cls, layer, num_experts, top_k=1, output_layer=None, **moe_kwargs):
        """Sparse upcycling: a built `MoEDense` whose experts are copies of
        a trained `Dense` (or of the pair `layer -> output_layer`), with the
        same output at creation for every `top_k`; see `moe_keras.upcycle`."""
        from moe_keras.upcycle import from_dense

        return from_dense(layer, num_experts, top_k, output_layer, **moe_kwargs)

    def expert_choices(self, inputs):
        """Inference-time top-k expert indices, shape `inputs.shape[:-1] + (k,)`."""
        tokens = ops.reshape(inputs, (-1, inputs.shape[-1]))
        indices = self.route(tokens, training=False).expert_indices
        return reshape_like(indices, inputs, (self.top_k,))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "expert_hidden": self.expert_hidden,
                "expert_activation": activations.serialize(self.expert_activation),
                "expert_dropout": self.expert_dropout,
                "num_shared_experts": self.num_shared_experts,
                "capacity_factor": self.capacity_factor,
                "eval_capacity_factor": self.eval_capacity_factor,
                "dispatch": self.dispatch,
            }
        )
        return config
