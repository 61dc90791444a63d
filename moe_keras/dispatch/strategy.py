"""The one place that chooses how tokens reach their experts.

Three strategies compute the same mixture (`choose_dispatch`):

* `"dense"`: every expert on every token (`dense.py`). Its
  cost is `n / k` times the active compute, which only pays when that
  ratio is small and the per-token gathers would cost more
  (`DENSE_MAX_EXPERTS_PER_CHOICE`, per backend).
* `"dropless"`: sparse and dropless (`dropless.py`, `grouped.py`): every
  token gets all k experts, the compute follows `T * k`.
* `"capacity"`: sparse with capacity-sized buffers (`capacity.py`); choices
  past an expert's capacity are dropped. Only when the user sets a
  capacity factor.

and two dropless engines (`dropless_engine`): the bucketed-capacity ladder,
portable and fastest on JAX's and PyTorch's CPU while the router is
balanced, and sorted rows, whose cost stays `T * k` under any imbalance
(`ROWS_MIN_IMBALANCE` hands imbalanced calls to it) and which is the whole
engine on TensorFlow (each expert on its own rows) and where a backend
grouped-GEMM kernel exists.
"""

import math

import keras

from moe_keras.dispatch import dropless
from moe_keras.dispatch import expert_loop
from moe_keras.dispatch import grouped

DENSE_MAX_EXPERTS_PER_CHOICE = {"tensorflow": 1.25, "jax": 1.5, "torch": 2.0}
"""`dispatch="auto"` runs every expert on every token while `n / k` is at
most this bound for the backend (`dense_max_experts_per_choice`): there the
dense dispatch (two plain matmuls for MLP experts) does little more than
the active work and has none of the sparse path's sorting and gathering.
Measured as a whole `MoEDense` train step, dense against dropless, at
4,096 tokens and at 128 (a classifier head routes one token per image) on
2 CPU cores (`benchmarks/results/dispatch_cpu_*.json`,
`dispatch_small_cpu_*.json`, the median of per-pass ratios): on TensorFlow
the dropless step took 1.01 (4,096 tokens) and 1.23 (128) of the dense one
at `n / k = 1.25`, and from 1.33 on 0.13-0.87 and 0.59-0.99; on JAX
1.09-1.46 and 1.12-1.44 up to 1.5, 0.97 and 1.04 at 1.67, 0.73-0.81 and
0.98-1.11 at 2, and 0.20-0.52 and 0.41-0.68 from 3 on; on PyTorch (eager)
dense won up to 1.67 at both sizes (dropless 1.56-2.85 of it), split at 2
(k=2: 1.09 and 1.22; k=1: 0.84 and 1.07) and lost from 3 on (0.15-0.49
and 0.42-0.85)."""

DEFAULT_DENSE_MAX_EXPERTS_PER_CHOICE = 2.0
"""The bound for backends not in `DENSE_MAX_EXPERTS_PER_CHOICE` (unmeasured
there)."""


def dense_max_experts_per_choice():
    """The largest `n / k` at which `dispatch="auto"` stays dense on this
    backend (`DENSE_MAX_EXPERTS_PER_CHOICE`)."""
    return DENSE_MAX_EXPERTS_PER_CHOICE.get(keras.backend.backend(), DEFAULT_DENSE_MAX_EXPERTS_PER_CHOICE)


CONDCONV_MIN_EXPERTS = 4
"""`MoEConv2D(routing="sample", dispatch="auto")` mixes kernels per image
(CondConv) from this many experts on: a CondConv step costs two to three
plain convolutions whatever `n`, the dense path about `n`
(`benchmarks/results/`, the conv rows)."""

CAPACITY_MAX_BUFFER_SHARE = 0.5
"""`dispatch="auto"` with a capacity factor takes the capacity path when its
buffers hold at most this share of what the dense path computes
(`capacity_factor * k / n`), and the dense path (with the same drops)
otherwise."""

ROWS_MIN_IMBALANCE = 2.0
"""The buffer engines hand a call to the sorted rows (`grouped.py`) when the
busiest expert holds more than this multiple of the mean load `T * k / n`:
buffers cost `n * busiest` rows, sorted rows `T * k` plus at most
`n * (block - 1)` of padding whatever the imbalance. Measured on TensorFlow
with the block kernel (TensorFlow now runs each expert on its own rows
instead, see `dropless_engine`), 2-core CPU, a `MoEDense(256,
expert_hidden=384)` train step at 1,024 and 4,096 tokens
(`benchmarks/results/imbalance_cpu_tf.json`, medians): with a spread
router (busiest 1.0-1.5x the mean) the buffers took 0.47-0.60 of the rows'
time; with two of 8 experts taking every token (4x the mean) the rows
took 1/1.33 and 1/1.86 of the buffers' time, and with one or two of 64
experts taking every token (32-64x) 1/3.6 to 1/12.6. On JAX
(`imbalance_cpu_jax.json`) the spread routers' buffers took 0.59-1.04 of the
rows' time and the collapsed routers' rows 1/2.8 to 1/22.5 of the
buffers'."""

TORCH_GROUPED_DEVICES = ("cuda",)
"""PyTorch devices on which the dropless engine is the sorted rows through
`torch._grouped_mm` (where a probe call runs it,
`grouped.torch_grouped_mm_available`), as JAX's is `ragged_dot` on
accelerators. Not the CPU: there (torch 2.13, 2 cores) the sorted rows
through it and the buffers took about the same time for a spread router, a
train step or a predict call of `MoEDense(256, expert_hidden=384)` at 1,024
and 4,096 tokens (rows over buffers 0.95-1.15 by the medians), and for a
collapsed router `ROWS_MIN_IMBALANCE` already hands the call to the rows
(`benchmarks/results/imbalance_cpu_torch.json`)."""

DISPATCH_MODES = ("auto", "dense", "sparse")


def choose_dispatch(dispatch, num_experts, top_k, capacity_factor):
    """Resolves a layer's `dispatch` argument for one call.

    Args:
        dispatch: `"auto"`, `"dense"` or `"sparse"`.
        num_experts: routed experts `n`.
        top_k: experts per token `k`.
        capacity_factor: the factor in force for this call (training or
            inference), `None` for dropless.

    Returns:
        `"dense"`, `"dropless"` or `"capacity"`.
    """
    if dispatch not in DISPATCH_MODES:
        raise ValueError(
            f"Received an invalid value for `dispatch`, expected one of "
            f"{DISPATCH_MODES}. Received: dispatch={dispatch!r}"
        )
    if dispatch == "dense":
        return "dense"
    sparse = "dropless" if capacity_factor is None else "capacity"
    if dispatch == "sparse":
        return sparse
    if capacity_factor is None:
        if num_experts / top_k <= dense_max_experts_per_choice():
            return "dense"
        return "dropless"
    if capacity_factor * top_k / num_experts <= CAPACITY_MAX_BUFFER_SHARE:
        return "capacity"
    return "dense"


def dropless_engine(num_tokens):
    """The dropless engine for `num_tokens` tokens on this backend.

    Returns:
        `None` where no engine runs a call of that many tokens (a symbolic
        count on JAX's or PyTorch's CPU, see `dropless_runs`), otherwise:

        * `"grouped"`, the sorted rows: on TensorFlow, where each expert
          runs on exactly its own rows (`expert_loop.map_groups`; graphs
          run those dynamic shapes natively). Against the buffers padded
          to the busiest expert that it replaced, a `MoEDense(256,
          expert_hidden=384)` train step of 4,096 tokens went from 2.06 to
          1.49 times the equal-active Dense FFN's at n=64, k=2, a predict
          from 1.62 to 1.35, and both got faster at every n (8, 64, 256)
          and k (1, 2) measured (`benchmarks/results/peers_cpu_tf.json`
          against `peers_cpu_tf_buffers.json`). On JAX with a GPU or TPU,
          through `jax.lax.ragged_dot`, a real grouped GEMM there; on
          PyTorch on `TORCH_GROUPED_DEVICES` where `torch._grouped_mm`
          runs, through that kernel.
        * `"buckets"` elsewhere (JAX's and PyTorch's CPU), where the token
          count is static: the bucketed-capacity ladder. On CPU,
          `ragged_dot` runs many times the plain matmul of the same FLOPs
          (XLA expands it over every group) and the block kernels (a
          batched matmul over one copied kernel per block; on JAX a loop
          over the blocks) run slower than the buckets' batched einsum over
          the experts' own weights while the router is balanced
          (`benchmarks/results/kernels_cpu_*.json`, the grouped rows).
    """
    if keras.backend.backend() == "jax":
        import jax

        if jax.default_backend() in grouped.ACCELERATORS:
            return "grouped"
    if keras.backend.backend() == "torch":
        if grouped.torch_device_type() in TORCH_GROUPED_DEVICES and grouped.torch_grouped_mm_available():
            return "grouped"
    if expert_loop.loops_over_groups():
        return "grouped"
    if not isinstance(num_tokens, int):
        return None
    return "buckets"


def dropless_runs(num_tokens):
    """Whether a dropless call of `num_tokens` tokens can run on this
    backend (`dropless_engine` is not `None`).

    The bucket ladder needs the token count when the call is traced. JAX
    traces `fit` and `predict` with static shapes, but Keras infers the
    output shape of a layer that holds an MoE layer (and defines no
    `compute_output_shape`) by tracing its `call` with a symbolic batch
    size, as does an export with a polymorphic batch; the layers then
    compute the same mixture densely.
    """
    return dropless_engine(num_tokens) is not None


def static_buffers_run(num_tokens):
    """Whether buffers sized from `num_tokens` (a capacity, expert choice)
    can be built: their size must be static on JAX, which exports a
    polymorphic batch as a symbolic count (`jax.export`); TensorFlow's
    graphs size them at run time."""
    return isinstance(num_tokens, int) or keras.backend.backend() != "jax"


def supports_xla(might_run_dropless):
    """Whether a layer can run under XLA (`Layer.supports_jit`).

    TensorFlow traces `fit` and `predict` over batches of unknown size, and
    its XLA bridge aborts (a failed CHECK in `literal.cc`, not an error)
    on the dynamic sizes of the dropless plan once another MoE layer shares
    the graph. TensorFlow's own graph runs dynamic shapes natively, so
    layers that may run dropless opt out of XLA there; `jit_compile="auto"`
    then leaves XLA off for the model (on CPU Keras leaves it off anyway:
    the peer records show `jit_compile: false` for the plain Dense FFN).
    """
    return not (might_run_dropless and keras.backend.backend() == "tensorflow")


def dropless_mixture(tokens, expert_indices, expert_weights, num_experts, run_buffers, run_rows, token_mask=None,
                     rematerialize=True):
    """Every token through all k of its experts, on the engine for this backend.

    Args:
        tokens: `(T, d)`.
        expert_indices: `(T, k)` int32 selected experts.
        expert_weights: `(T, k)` mixing weights.
        num_experts: routed experts `n`.
        run_buffers: the experts on bucket buffers, see
            `dropless.bucketed_mixture`.
        run_rows: the experts on sorted rows, see `grouped.sorted_mixture`.
        token_mask: optional `(T,)` 0/1; masked tokens get zeros and take
            no expert slot.
        rematerialize: see `dropless.bucketed_mixture`; the layers pass
            `False` at inference (`training=False`).

    Returns:
        `(T, u)`.
    """
    choices = dropless.sort_by_expert(expert_indices, num_experts, token_mask)
    num_tokens = tokens.shape[0]
    top_k = expert_indices.shape[-1]
    engine = dropless_engine(num_tokens)
    if engine is None:
        raise ValueError(
            "Dropless dispatch on the "
            f"{keras.backend.backend()} backend needs a static number of tokens per "
            f"call; got {num_tokens!r}. Use `dispatch=\"dense\"`, or set a "
            "`capacity_factor` for capacity-bounded buffers."
        )

    def rows(tokens, expert_weights):
        return grouped.sorted_mixture(
            tokens, expert_indices, expert_weights, choices, run_rows, num_experts
        )

    def buffers(capacities, overflow=None):
        return dropless.bucketed_mixture(
            tokens,
            expert_indices,
            expert_weights,
            choices,
            run_buffers,
            num_experts,
            capacities,
            overflow,
            rematerialize,
        )

    if engine == "grouped":
        return rows(tokens, expert_weights)
    ladder = dropless.bucket_capacities(num_tokens, num_experts, top_k)
    top = math.ceil(ROWS_MIN_IMBALANCE * num_tokens * top_k / num_experts)
    if top >= num_tokens:
        # Every rung up to all T tokens is within the bound: no overflow.
        return buffers(ladder)
    ladder = [c for c in ladder if c <= top]
    if not ladder:
        return rows(tokens, expert_weights)
    return buffers(ladder, overflow=rows)
