"""`MoELayer`: the router, balancing losses and routing statistics shared by
every Mixture-of-Experts layer of the package.

A subclass computes router features for its tokens (`(T, d)`), calls
`self.route(features, training)` and mixes its experts with what comes back.
Everything about *which* expert a token goes to lives here, once.
"""

import numbers
from typing import NamedTuple

import keras
from keras import activations
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from moe_keras import losses
from moe_keras import routing
from moe_keras.stats import summarize_counts

ROUTER_NOISE_TYPES = (None, "gaussian", "learned")
ROUTER_TYPES = ("linear", "cosine")
ROUTER_ACTIVATIONS = ("softmax", "sigmoid")
SELECTIONS = ("token_choice", "expert_choice")
CAPACITY_PRIORITIES = ("score", "position")


class Routing(NamedTuple):
    """What the router decided for one batch of `T` tokens.

    Attributes:
        logits: `(T, n)` float32 clean router logits.
        probabilities: `(T, n)` float32 softmax (of the noisy logits in
            training when router noise is on).
        expert_indices: `(T, k)` int32 selected experts, best first.
        expert_weights: `(T, k)` float32 mixing weights.
        positions: `(T, k)` int32 slot in the expert buffer, or `None` when
            routing is dropless.
        keep: `(T, k)` float32, 0 for slots dropped for lack of capacity.
    """

    logits: object
    probabilities: object
    expert_indices: object
    expert_weights: object
    positions: object
    keep: object


def _positive_int(value, name, allow_zero=False):
    smallest = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < smallest:
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a {kind} "
            f"integer. Received: {name}={value!r}"
        )


def _non_negative_float(value, name):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a non-negative "
            f"number. Received: {name}={value!r}"
        )


def reshape_like(x, like, trailing):
    """Reshapes `x` to `like.shape[:-1] + trailing`, leaving the batch as -1.

    Static sizes are used wherever they are known: a target shape built from
    `ops.shape(...)` of an unknown batch makes XLA (TensorFlow
    `jit_compile=True`) treat every later size as dynamic, which breaks the
    segment sums of sparse dispatch further down the model.
    """
    middle = tuple(like.shape[1:-1])
    if any(size is None for size in middle):
        middle = tuple(ops.shape(like)[1:-1])
    # A static batch is given as it is: with an empty axis (a sequence of
    # length 0) a -1 could be any size.
    batch = like.shape[0] if like.shape[0] is not None else -1
    return ops.reshape(x, (batch,) + middle + tuple(trailing))


def cast_to_compute_dtype(inputs, dtype):
    """Integer or boolean inputs (pixels, one-hot rows) as `dtype`.

    Keras casts floating inputs to a layer's compute dtype but leaves
    integers as they are, and PyTorch's matmuls and convolutions refuse to
    mix integer inputs with float kernels.
    """
    if keras.backend.is_float_dtype(inputs.dtype):
        return inputs
    return ops.cast(inputs, dtype)


def expert_initializer(initializer, num_experts):
    """Makes a variance-scaling initializer see one expert's fans.

    Keras computes fans of a `(n, ..., in, out)` kernel as if the leading
    expert axis were part of the receptive field, which shrinks the variance
    of `glorot_uniform`, `he_normal`, ... by a factor `n`. Scaling `scale` by
    `n` restores the per-expert variance exactly; other initializers do not
    depend on fans and are returned as they are.
    """
    initializer = initializers.get(initializer)
    if isinstance(initializer, initializers.VarianceScaling):
        return initializers.VarianceScaling(
            scale=initializer.scale * num_experts,
            mode=initializer.mode,
            distribution=initializer.distribution,
            seed=initializer.seed,
        )
    return initializer


class MoELayer(keras.layers.Layer):
    """Base class of the MoE layers: routing, balancing losses, statistics.

    Args:
        num_experts: number of routed experts `n`.
        top_k: experts per token `k`, `1 <= k <= n`.
        normalize_top_k: divide the k mixing weights by their sum. `None`
            (default) means `False` for `k=1` (Switch Transformer: the weight
            is the softmax probability, so the task loss trains the router)
            and `True` for `k>1` (Mixtral).
        router_noise: `None`, `"gaussian"` (logits + N(0, `noise_std`)) or
            `"learned"` (Shazeer et al. 2017 noisy top-k: logits +
            N(0, 1) * softplus(x W_noise) * `noise_std`). Training only.
        noise_std: scale of the router noise.
        switch_loss_weight: coefficient of the Switch load-balancing loss.
        importance_loss_weight: coefficient of the importance CV^2 loss.
        diversity_loss_weight: coefficient of the routing-entropy loss.
        overflow_loss_weight: coefficient of the over-capacity loss.
        z_loss_weight: coefficient of the router z-loss.
        bias_update_rate: DeepSeek-V3 loss-free balancing rate; 0 disables it.
            A frozen layer (`trainable=False`) keeps its bias.
        router_activation: `"softmax"` (probabilities over the experts) or
            `"sigmoid"` (DeepSeek-V3: every expert scores the token on its
            own; top-k on score + the loss-free bias, the chosen experts
            mixed by their unbiased scores normalised over the k; the
            balancing losses see the scores normalised per token).
        selection: `"token_choice"` (every token picks its top-k experts)
            or `"expert_choice"` (Zhou et al. 2022: every expert picks its
            top `capacity_factor * T * k / n` tokens, so the load is
            balanced by construction; a token may get several experts or
            none). Expert choice looks at the whole batch, so it is not
            causal: layers refuse it with `use_causal_mask=True`.
        capacity_priority: which tokens keep their slots when a capacity
            factor drops some: `"score"` (V-MoE's batch-prioritised routing:
            the tokens with the highest top router score) or `"position"`
            (GShard: the first in the batch).
        router_type: `"linear"` (logits `x W_r`, the usual router) or
            `"cosine"` (logits `cos(x, w_e) / router_temperature`, X-MoE):
            bounded logits that do not saturate the softmax when the
            features are wide and unnormalised, e.g. a flattened conv map.
        router_temperature: temperature of the cosine router.
        router_initializer: initializer of the router kernel. The default,
            `"orthogonal"`, gives every expert's column the same norm, so no
            expert is favoured at initialisation: a random column a few
            percent longer wins the top-k of many tokens when `n` is large,
            and the dropless engines' compute follows the busiest expert.
        router_regularizer: regularizer of the router kernel.
        seed: seed of the router noise.
        activation: activation applied to the layer output.
        use_bias: whether experts have biases.
        kernel_initializer: initializer of expert kernels (variance-scaling
            initializers are corrected to each expert's own fans).
        bias_initializer: initializer of expert biases.
        kernel_regularizer: regularizer of expert kernels.
        bias_regularizer: regularizer of expert biases.
        kernel_constraint: constraint on expert kernels.
        bias_constraint: constraint on expert biases.
    """

    def __init__(
        self,
        num_experts,
        top_k=1,
        normalize_top_k=None,
        router_noise=None,
        noise_std=1.0,
        switch_loss_weight=0.01,
        importance_loss_weight=0.0,
        diversity_loss_weight=0.0,
        overflow_loss_weight=0.0,
        z_loss_weight=0.0,
        bias_update_rate=0.0,
        router_type="linear",
        router_temperature=0.1,
        router_activation="softmax",
        selection="token_choice",
        capacity_priority="score",
        router_initializer="orthogonal",
        router_regularizer=None,
        seed=None,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _positive_int(num_experts, "num_experts")
        _positive_int(top_k, "top_k")
        if top_k > num_experts:
            raise ValueError(
                "Received an invalid value for `top_k`, expected at most "
                f"`num_experts`={num_experts}. Received: top_k={top_k}"
            )
        if normalize_top_k not in (None, True, False):
            raise ValueError(
                "Received an invalid value for `normalize_top_k`, expected "
                f"None, True or False. Received: normalize_top_k={normalize_top_k!r}"
            )
        if router_noise not in ROUTER_NOISE_TYPES:
            raise ValueError(
                "Received an invalid value for `router_noise`, expected one of "
                f"{ROUTER_NOISE_TYPES}. Received: router_noise={router_noise!r}"
            )
        for name, value, allowed in (
            ("router_activation", router_activation, ROUTER_ACTIVATIONS),
            ("selection", selection, SELECTIONS),
            ("capacity_priority", capacity_priority, CAPACITY_PRIORITIES),
        ):
            if value not in allowed:
                raise ValueError(
                    f"Received an invalid value for `{name}`, expected one of "
                    f"{allowed}. Received: {name}={value!r}"
                )
        if router_type not in ROUTER_TYPES:
            raise ValueError(
                "Received an invalid value for `router_type`, expected one of "
                f"{ROUTER_TYPES}. Received: router_type={router_type!r}"
            )
        if (
            not isinstance(router_temperature, (int, float))
            or isinstance(router_temperature, bool)
            or router_temperature <= 0
        ):
            raise ValueError(
                "Received an invalid value for `router_temperature`, expected "
                f"a positive number. Received: router_temperature={router_temperature!r}"
            )
        if seed is not None:
            # NumPy integers (a seed drawn from a Generator, a config read
            # back from JSON as int64) are seeds too; anything else is not.
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
                raise ValueError(
                    "Received an invalid value for `seed`, expected None or an "
                    f"integer. Received: seed={seed!r}"
                )
            seed = int(seed)
        for name, value in (
            ("noise_std", noise_std),
            ("switch_loss_weight", switch_loss_weight),
            ("importance_loss_weight", importance_loss_weight),
            ("diversity_loss_weight", diversity_loss_weight),
            ("overflow_loss_weight", overflow_loss_weight),
            ("z_loss_weight", z_loss_weight),
            ("bias_update_rate", bias_update_rate),
        ):
            _non_negative_float(value, name)
        self.num_experts = num_experts
        self.top_k = top_k
        self.normalize_top_k = normalize_top_k
        self.router_noise = router_noise
        self.noise_std = noise_std
        self.switch_loss_weight = switch_loss_weight
        self.importance_loss_weight = importance_loss_weight
        self.diversity_loss_weight = diversity_loss_weight
        self.overflow_loss_weight = overflow_loss_weight
        self.z_loss_weight = z_loss_weight
        self.bias_update_rate = bias_update_rate
        self.router_type = router_type
        self.router_activation = router_activation
        self.selection = selection
        self.capacity_priority = capacity_priority
        self.router_temperature = router_temperature
        self.router_initializer = initializers.get(router_initializer)
        self.router_regularizer = regularizers.get(router_regularizer)
        self.seed = seed
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        # Only layers that draw noise own a generator: unseeded random ops
        # fail under JAX tracing, and a seeded generator is jit-safe.
        if router_noise is not None:
            self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def normalizes_top_k(self):
        """The resolved `normalize_top_k` (see the class docstring); sigmoid
        scores are always normalised over the k, as in DeepSeek-V3."""
        if self.router_activation == "sigmoid":
            return True
        if self.normalize_top_k is None:
            return self.top_k > 1
        return self.normalize_top_k

    # Weights ---------------------------------------------------------------

    def build_router(self, feature_dim):
        """Creates the router weights and the routing-state variables.

        Router weights are float32 and not autocast: the routing decision is
        made in float32 under every dtype policy.
        """
        self.router_kernel = self.add_weight(
            name="router_kernel",
            shape=(feature_dim, self.num_experts),
            initializer=self.router_initializer,
            regularizer=self.router_regularizer,
            dtype="float32",
            autocast=False,
        )
        if self.router_noise == "learned":
            self.noise_kernel = self.add_weight(
                name="noise_kernel",
                shape=(feature_dim, self.num_experts),
                initializer="zeros",
                dtype="float32",
                autocast=False,
            )
        # Non-trainable float32 state, updated inside `call` in training.
        # Under tf.distribute every replica updates it from its own batch;
        # "mean" aggregation keeps one value: for the counters (Keras's
        # `assign_add` is `assign(old + delta)`, so "sum" would add R copies
        # of `old`) `old + mean(delta)`, exact shares with counts per replica;
        # for the bias, the mean of the replicas' stepped biases.
        if self.bias_update_rate > 0:
            self.selection_bias = self._add_state("selection_bias", (self.num_experts,))
        # Counts since the last `reset_routing_stats()`; the statistics are
        # derived from them on the host (`routing_stats()`).
        self.expert_counts = self._add_state("expert_counts", (self.num_experts,))
        self.dropped_slots = self._add_state("dropped_slots", ())

    def _add_state(self, name, shape):
        return self.add_weight(
            name=name,
            shape=shape,
            initializer="zeros",
            trainable=False,
            aggregation="mean",
            dtype="float32",
            autocast=False,
        )

    def add_expert_weights(self, prefix, count, kernel_shape, name="kernel"):
        """Adds the stacked `(count, *kernel_shape)` kernels of `count` experts
        and, with `use_bias`, their `(count, kernel_shape[-1])` biases.

        Returns:
            A dict `{name: kernel, name-with-bias: bias}`.
        """
        weights = {
            name: self.add_weight(
                name=f"{prefix}_{name}",
                shape=(count, *kernel_shape),
                initializer=expert_initializer(self.kernel_initializer, count),
                regularizer=self.kernel_regularizer,
                constraint=self.kernel_constraint,
            )
        }
        if self.use_bias:
            bias_name = name.replace("kernel", "bias")
            weights[bias_name] = self.add_weight(
                name=f"{prefix}_{bias_name}",
                shape=(count, kernel_shape[-1]),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        return weights

    # Routing ---------------------------------------------------------------

    def router_logits(self, features):
        """Clean `(T, n)` float32 logits of `(T, d)` router features."""
        features = ops.cast(features, "float32")
        if self.router_type == "cosine":
            return routing.cosine_router_logits(
                features, self.router_kernel, self.router_temperature
            )
        return ops.matmul(features, self.router_kernel)

    def route(self, features, training=False, capacity=None, token_mask=None):
        """Routes `(T, d)` tokens; in training adds losses and updates state.

        Args:
            features: `(T, d)` router features.
            training: whether this is a training step.
            capacity: expert capacity in token slots, or `None` (dropless).
            token_mask: optional `(T,)` 0/1; masked tokens (padding) are
                routed but kept out of the capacity, the balancing losses
                and the statistics, and their choices are not kept.

        Returns:
            A `Routing`.
        """
        features = ops.cast(features, "float32")
        logits = self.router_logits(features)
        noisy_logits = logits
        if training and self.router_noise is not None:
            noise = keras.random.normal(
                ops.shape(logits), seed=self.seed_generator, dtype="float32"
            )
            if self.router_noise == "learned":
                noise = noise * ops.softplus(
                    ops.matmul(features, self.noise_kernel)
                )
            noisy_logits = logits + self.noise_std * noise
        if self.router_activation == "sigmoid":
            scores = routing.sigmoid_router_scores(noisy_logits)
            probabilities = routing.normalized_scores(scores)
        else:
            scores = probabilities = routing.router_probabilities(noisy_logits)
        bias = self.selection_bias if self.bias_update_rate > 0 else None
        weights, indices = routing.top_k_routing(
            scores, self.top_k, bias, self.normalizes_top_k
        )
        if token_mask is not None:
            token_mask = ops.cast(token_mask, "float32")
        valid = ops.ones_like(weights)
        if token_mask is not None:
            valid = valid * token_mask[:, None]
        if capacity is None:
            positions, keep = None, valid
        else:
            priority = None
            if self.capacity_priority == "score":
                top = ops.take_along_axis(scores, indices[:, :1], axis=-1)
                priority = top[:, 0]
            positions, keep = routing.assign_capacity(
                indices, self.num_experts, capacity, token_mask, priority
            )
        result = Routing(logits, probabilities, indices, weights, positions, keep)
        if training:
            # One (T, n) selection mask serves the losses and the counters.
            mask = routing.expert_mask(indices, self.num_experts)
            if token_mask is not None:
                mask = mask * token_mask[:, None]
            self._add_balancing_losses(result, mask, token_mask)
            self._update_routing_state(result, mask, valid)
        return result

    def route_expert_choice(self, features, capacity, training=False, token_mask=None, limit=None):
        """Expert-choice routing of `(T, d)` tokens: every expert takes its
        top `capacity` tokens (`routing.expert_choice_routing`), of which
        only the first `limit` (when given: the capacity of the real,
        unmasked tokens) get a weight, so padding changes no real token.

        The load is balanced by construction, so no balancing loss is added
        (the router z-loss is, when set); the counters record the real
        tokens each expert took.

        Returns:
            `(weights, token_indices)`, each `(n, capacity)`.
        """
        logits = self.router_logits(features)
        if self.router_activation == "sigmoid":
            scores = routing.sigmoid_router_scores(logits)
        else:
            scores = routing.router_probabilities(logits)
        weights, token_indices = routing.expert_choice_routing(
            scores, capacity, token_mask
        )
        slot_keep = None
        if limit is not None:
            slot_keep = ops.cast(
                ops.arange(capacity)[None, :] < ops.cast(limit, "int32"), "float32"
            )
            weights = weights * slot_keep
        if training:
            if self.z_loss_weight > 0:
                self.add_loss(
                    self.z_loss_weight * losses.router_z_loss(logits, token_mask)
                )
            taken = ops.ones_like(weights)
            if token_mask is not None:
                taken = ops.take(ops.cast(token_mask, "float32"), token_indices)
            if slot_keep is not None:
                taken = taken * slot_keep
            self.expert_counts.assign_add(ops.sum(taken, axis=1))
        return weights, token_indices

    def _add_balancing_losses(self, result, mask, token_mask=None):
        probabilities = result.probabilities
        if self.switch_loss_weight > 0:
            self.add_loss(
                self.switch_loss_weight
                * losses.switch_load_balancing_loss(
                    probabilities, mask, self.top_k, token_mask
                )
            )
        if self.importance_loss_weight > 0:
            self.add_loss(
                self.importance_loss_weight
                * losses.importance_loss(probabilities, token_mask)
            )
        if self.diversity_loss_weight > 0:
            self.add_loss(
                self.diversity_loss_weight
                * losses.diversity_loss(probabilities, token_mask)
            )
        if self.overflow_loss_weight > 0:
            self.add_loss(
                self.overflow_loss_weight
                * losses.overflow_loss(
                    probabilities,
                    mask,
                    self.top_k,
                    self.overflow_capacity_factor,
                    token_mask,
                )
            )
        if self.z_loss_weight > 0:
            self.add_loss(
                self.z_loss_weight * losses.router_z_loss(result.logits, token_mask)
            )

    @property
    def overflow_capacity_factor(self):
        """Capacity the overflow loss measures against (1.0 when dropless)."""
        return 1.0

    def _update_routing_state(self, result, mask, valid):
        counts = ops.sum(mask, axis=0)
        self.expert_counts.assign_add(counts)
        self.dropped_slots.assign_add(ops.sum(valid - result.keep))
        # A frozen layer keeps its routing: like BatchNormalization's moving
        # statistics, the loss-free bias is state that changes the outputs,
        # so `trainable=False` stops its updates (the counters still count).
        if self.bias_update_rate > 0 and self.trainable:
            self.selection_bias.assign(
                losses.loss_free_bias_update(
                    self.selection_bias, counts, self.bias_update_rate
                )
            )

    def count_params_per_token(self):
        """Parameters one token uses: router, its k routed experts, all shared.

        A token is an example for `MoEDense` on 2D inputs and for
        sample-routed `MoEConv2D`, a position or pixel otherwise. Subclasses
        keep their expert weights in the dicts `experts` and `shared_experts`.
        """
        if not self.built:
            raise ValueError("`count_params_per_token` needs a built layer.")
        per_expert = sum(
            int(ops.size(w)) // self.num_experts for w in self.experts.values()
        )
        shared = 0
        if self.shared_experts is not None:
            shared = sum(int(ops.size(w)) for w in self.shared_experts.values())
        return int(ops.size(self.router_kernel)) + self.top_k * per_expert + shared

    # Statistics ------------------------------------------------------------

    def reset_routing_stats(self):
        """Zeroes the counts that `routing_stats()` summarises (nothing to
        do before the layer is built: it has counted nothing yet)."""
        if not self.built:
            return
        self.expert_counts.assign(ops.zeros(self.expert_counts.shape))
        self.dropped_slots.assign(ops.zeros(self.dropped_slots.shape))

    def routing_stats(self):
        """Routing statistics of the training batches since the last reset.

        Returns:
            A dict with `load` (list, fraction of token-slots per expert),
            `entropy` (nats, of the load; `log(n)` is perfect balance),
            `max_load_ratio` (max load over the ideal `1/n`), `dead_experts`
            (experts that received no token), `dropped_fraction` (slots
            dropped for capacity) and `tokens` (slots counted).
        """
        if not self.built:
            # Not built yet (a subclassed model before its first batch).
            return summarize_counts([0.0] * self.num_experts)
        counts = keras.ops.convert_to_numpy(self.expert_counts)
        dropped = float(keras.ops.convert_to_numpy(self.dropped_slots))
        return summarize_counts(counts, dropped)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "top_k": self.top_k,
                "normalize_top_k": self.normalize_top_k,
                "router_noise": self.router_noise,
                "noise_std": self.noise_std,
                "switch_loss_weight": self.switch_loss_weight,
                "importance_loss_weight": self.importance_loss_weight,
                "diversity_loss_weight": self.diversity_loss_weight,
                "overflow_loss_weight": self.overflow_loss_weight,
                "z_loss_weight": self.z_loss_weight,
                "bias_update_rate": self.bias_update_rate,
                "router_type": self.router_type,
                "router_activation": self.router_activation,
                "selection": self.selection,
                "capacity_priority": self.capacity_priority,
                "router_temperature": self.router_temperature,
                "router_initializer": initializers.serialize(
                    self.router_initializer
                ),
                "router_regularizer": regularizers.serialize(
                    self.router_regularizer
                ),
                "seed": self.seed,
                "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(
                    self.kernel_regularizer
                ),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": constraints.serialize(self.kernel_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint),
            }
        )
        return config
