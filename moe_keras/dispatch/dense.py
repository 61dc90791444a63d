"""Dense dispatch: every expert runs on every token.

Its cost grows with `n`, but it has no gather, sort or scatter at all, so
for a few small experts (`n / k` small) it is the fastest path. `MoEDense`
runs MLP experts there as two plain matmuls (`MoEDense._mix_all_experts`);
linear experts are mixed here.
"""

from keras import ops


def dense_combine(expert_outputs, combine=None):
    """Mixes `(n, T, u)` outputs of all experts with a `(T, n)` weight
    matrix, or sums them (shared experts) when `combine` is `None`."""
    if combine is None:
        return ops.sum(expert_outputs, axis=0)
    combine = ops.cast(combine, expert_outputs.dtype)
    return ops.einsum("te,etu->tu", combine, expert_outputs)
