"""Row gathers whose gradients are gathers too.

Moving tokens to experts and back is a permutation (with some rows left
empty), so the gradient of each move is the move back: a gather through the
inverse map. Autodiff would instead scatter-add the gradient of a gather,
which XLA runs as a serial loop on CPU and with atomics on GPU.
"""

from keras import ops


def take_rows(values, index):
    """`values[index]`, with zero rows where `index` is `len(values)`."""
    num_rows = ops.shape(values)[0]
    present = ops.cast(index < num_rows, values.dtype)
    rows = ops.take(values, ops.minimum(index, num_rows - 1), axis=0)
    return rows * ops.expand_dims(present, -1)


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

    @ops.custom_gradient
    def gather(values):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            readers = take_rows(upstream, ops.reshape(inverse_index, (-1,)))
            readers = ops.reshape(
                readers, (-1, inverse_index.shape[-1], upstream.shape[-1])
            )
            return ops.sum(readers, axis=1)

        return take_rows(values, index), grad

    return gather(values)


