"""Row gathers whose gradients are gathers too.

Moving tokens to experts and back is a permutation (with some rows left
empty), so the gradient of each move is the move back: a gather through the
inverse map. Autodiff would instead scatter-add the gradient of a gather,
which XLA runs as a serial loop on CPU and with atomics on GPU.
"""

import keras
from keras import ops


def take_rows(values, index):
    """`values[index]`, with zero rows where `index` is `len(values)`."""
    num_rows = ops.shape(values)[0]
    present = ops.cast(index < num_rows, values.dtype)
    rows = ops.take(values, ops.minimum(index, num_rows - 1), axis=0)
    return rows * ops.expand_dims(present, -1)


def take_experts(weights, index):
    """`weights[index]` along the experts' axis, with a dense gradient.

    TensorFlow differentiates a gather into `IndexedSlices`, and Keras's
    optimizers apply those as sparse updates: Adam's moments of the experts
    a step did not index would not decay, so training would depend on the
    engine. A segment sum gives the dense gradient that the dense and buffer
    engines give.
    """
    if keras.backend.backend() != "tensorflow":
        return ops.take(weights, index, axis=0)
    num_experts = weights.shape[0]
    # A variable passed straight in would make TensorFlow's custom gradient
    # ask for its `variables`; its value is what is differentiated.
    weights = ops.copy(weights)

    @ops.custom_gradient
    def take(weights):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return ops.segment_sum(upstream, index, num_segments=num_experts)

        return ops.take(weights, index, axis=0), grad

    return take(weights)


def mix_choices(chosen, expert_weights, valid):
    """Every token's k chosen expert outputs, weighted and summed.

    Args:
        chosen: `(T * k, u)`, row `t * k + j` the output of token `t`'s
            `j`-th expert.
        expert_weights: `(T, k)` mixing weights.
        valid: `(T, k)` 0/1; a 0 leaves that choice out.

    Returns:
        `(T, u)`.
    """
    top_k = expert_weights.shape[-1]
    chosen = ops.reshape(chosen, (-1, top_k, chosen.shape[-1]))
    weights = ops.cast(ops.multiply(expert_weights, valid), chosen.dtype)
    # A broadcast product and a sum over k, not `einsum("tku,tk->tu")`,
    # which TensorFlow runs as T tiny batched (1, k) x (k, u) matmuls.
    return ops.sum(chosen * ops.expand_dims(weights, -1), axis=1)


def gather_rows(values, index, inverse_index):
    """`values[index]` (zero rows where `index == len(values)`), with a
    gather, not a scatter, as its gradient.

    Args:
        values: `(N, d)`.
        index: `(M,)` int, rows of `values`, `N` for a zero row.
        inverse_index: `(N, r)` int, the output rows that read each row of
            `values` (`M` for none): every output row reading row `i` must
            appear in `inverse_index[i]`.

    Returns:
        `(M, d)`.
    """

    if keras.backend.backend() == "jax":
        return _jax_gather_rows(values, index, inverse_index)

    @ops.custom_gradient
    def gather(values):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return _gather_back(upstream, inverse_index)

        return take_rows(values, index), grad

    return gather(values)


def _gather_back(upstream, inverse_index):
    """The gradient of `gather_rows`: every row sums its readers' rows."""
    readers = take_rows(upstream, ops.reshape(inverse_index, (-1,)))
    readers = ops.reshape(readers, (-1, inverse_index.shape[-1], upstream.shape[-1]))
    return ops.sum(readers, axis=1)


def _jax_gather_rows(values, index, inverse_index):
    """`gather_rows` as a `jax.custom_vjp` that takes the index maps as
    arguments: `ops.custom_gradient` (`jax.custom_gradient`) closes over
    them, and a closed-over tracer leaks out of `lax.switch` branches when
    the switch is differentiated (the dropless engine's buckets)."""
    import jax

    @jax.custom_vjp
    def gather(values, index, inverse_index):
        return take_rows(values, index)

    def forward(values, index, inverse_index):
        return take_rows(values, index), (index, inverse_index)

    def backward(saved, upstream):
        index, inverse_index = saved
        return _gather_back(upstream, inverse_index), None, None

    gather.defvjp(forward, backward)
    return gather(values, index, inverse_index)
