"""Sorted-rows dropless dispatch: permute, grouped matmul, unpermute.

The `T * k` token choices are laid out as rows sorted by expert
(`permute`), every expert multiplies its own contiguous run of rows
(`grouped_matmul`), and every token gathers its k rows back and mixes them
(`unpermute`). Both moves are gathers with gather gradients
(`gather.gather_rows`), as in MaxText.

`grouped_matmul` has one signature and four kernels:

* TensorFlow: each group's rows split off (`tf.split`) and multiplied by
  its own kernel (`expert_loop.map_groups`), as dynamic shapes, which
  TensorFlow's graphs run natively.
* JAX on a GPU or TPU: `jax.lax.ragged_dot`, a grouped GEMM whose
  gradient is one too. (On CPU XLA expands it to a dense product over all
  groups.)
* PyTorch where the installed torch runs `torch._grouped_mm` on the
  operands' device and dtype (`torch_grouped_mm_runs`): its grouped GEMM,
  whose gradient is one too.
* Everywhere else: MegaBlocks-style blocks (`block_grouped_matmul`). Each
  expert's rows are padded to a multiple of `block_size`, so the total is
  at most `R + n * (block_size - 1)` rows, a static bound (`block_layout`);
  the blocks then run against their experts' kernels as one batched matmul
  in `keras.ops` (`batched_blocks_matmul`), or on JAX's CPU as a loop over
  the blocks (`scanned_blocks_matmul`).
"""

from typing import NamedTuple

import keras
from keras import ops

from moe_keras.dispatch.expert_loop import loops_over_groups
from moe_keras.dispatch.expert_loop import map_groups
from moe_keras.dispatch.gather import gather_rows
from moe_keras.dispatch.gather import mix_choices
from moe_keras.dispatch.gather import take_experts
from moe_keras.dispatch.gather import take_rows

BLOCK_SIZE = 64
"""Rows per block of the portable grouped matmul."""

ACCELERATORS = ("gpu", "tpu", "cuda", "rocm")
"""JAX platforms whose `ragged_dot` is a real grouped GEMM."""

_TORCH_GROUPED_MM_RUNS = {}
"""`(device type, dtype)` -> whether `torch._grouped_mm` ran a probe there."""


class RowPlan(NamedTuple):
    """Where every token choice sits among the sorted rows.

    Attributes:
        row_of_choice: `(T * k,)` int32 sorted row of each choice, `R` for a
            masked one.
        choice_of_row: `(R,)` int32 choice held by each row, `T * k` for a
            row past the valid ones.
        row_experts: `(R,)` int32 expert of each row (`n - 1` past the valid
            rows, whose inputs are zero).
        group_sizes: `(n,)` int32 rows per expert.
    """

    row_of_choice: object
    choice_of_row: object
    row_experts: object
    group_sizes: object


def row_plan(choices, expert_indices, num_experts):
    """Builds the `RowPlan` from `dropless.sort_by_expert`'s `SortedChoices`."""
    flat_indices = ops.reshape(ops.cast(expert_indices, "int32"), (-1,))
    flat_valid = ops.reshape(choices.valid, (-1,)) > 0
    num_rows = ops.shape(flat_indices)[0]
    offsets = ops.cumsum(choices.group_sizes) - choices.group_sizes
    row = ops.take(offsets, flat_indices) + ops.reshape(choices.positions, (-1,))
    row_of_choice = ops.where(flat_valid, row, num_rows)
    num_valid = ops.sum(choices.group_sizes)
    position = ops.cumsum(ops.ones_like(flat_indices)) - 1
    row_is_valid = position < num_valid
    choice_of_row = ops.where(row_is_valid, choices.order, num_rows)
    row_experts = ops.take(flat_indices, ops.minimum(choices.order, num_rows - 1))
    row_experts = ops.where(row_is_valid, row_experts, num_experts - 1)
    return RowPlan(row_of_choice, choice_of_row, row_experts, choices.group_sizes)


def permute(tokens, plan, top_k):
    """`(T, d)` tokens -> `(T * k, d)` rows sorted by expert (zeros past the
    valid rows)."""
    num_tokens = ops.shape(tokens)[0]
    token_of_row = ops.where(
        plan.choice_of_row < num_tokens * top_k,
        plan.choice_of_row // top_k,
        num_tokens,
    )
    readers = ops.reshape(plan.row_of_choice, (-1, top_k))
    return gather_rows(tokens, token_of_row, readers)


def unpermute(rows, plan, expert_weights, valid):
    """`(T * k, u)` sorted expert outputs -> `(T, u)` mixtures."""
    chosen = gather_rows(rows, plan.row_of_choice, plan.choice_of_row[:, None])
    return mix_choices(chosen, expert_weights, valid)


def block_layout(group_sizes, num_rows, num_experts, block_size=BLOCK_SIZE):
    """Where every row sits once each group is padded to whole blocks.

    Args:
        group_sizes: `(n,)` int32 rows per group, in order.
        num_rows: `R`, the rows' static (or scalar tensor) count.
        num_experts: `n`.
        block_size: rows per block.

    Returns:
        `(num_blocks, source, row_slot, block_experts)`: the static block
        count `(R + n * (block_size - 1)) // block_size + 1`; `source`, the
        row each padded slot reads (`R` for padding); `row_slot`, the slot of
        each row (past the last slot for rows past the groups); and
        `block_experts`, the group of each block.
    """
    num_blocks = (num_rows + num_experts * (block_size - 1)) // block_size + 1
    padded = (group_sizes + block_size - 1) // block_size * block_size
    padded_ends = ops.cumsum(padded)
    padded_offsets = padded_ends - padded
    offsets = ops.cumsum(group_sizes) - group_sizes
    slot = ops.cumsum(ops.ones((num_blocks * block_size,), "int32")) - 1
    expert = ops.minimum(
        ops.cast(ops.searchsorted(padded_ends, slot, side="right"), "int32"),
        num_experts - 1,
    )
    rank = slot - ops.take(padded_offsets, expert)
    source = ops.where(
        rank < ops.take(group_sizes, expert),
        ops.take(offsets, expert) + rank,
        num_rows,
    )
    # Each valid row sits in exactly one padded slot: the slot is its
    # inverse, and a row past the valid ones is read by no slot.
    row = ops.cumsum(ops.ones((num_rows,), "int32")) - 1
    row_expert = ops.minimum(
        ops.cast(ops.searchsorted(ops.cumsum(group_sizes), row, side="right"), "int32"),
        num_experts - 1,
    )
    row_slot = row - ops.take(offsets, row_expert) + ops.take(padded_offsets, row_expert)
    row_slot = ops.where(row < ops.sum(group_sizes), row_slot, num_blocks * block_size)
    return num_blocks, source, row_slot, expert[::block_size]


def batched_blocks_matmul(blocks, kernels, block_experts):
    """`(B, P, d)` blocks times their experts' kernels, `(B, P, u)`: each
    block's kernel copied out, then one batched matmul (portable)."""
    return ops.einsum("bpd,bdu->bpu", blocks, take_experts(kernels, block_experts))


def scanned_blocks_matmul(blocks, kernels, block_experts):
    """The same product on JAX as a loop over the blocks that reads each
    kernel in place.

    The batched form's copies (one `(d, u)` kernel per block) and their
    scatter-add gradient dominate it on XLA's CPU backend: on 2 CPU cores,
    8,192 rows of 256 features times `(n, 256, 384)` kernels in blocks of
    64, the loop takes 0.67 (n=8) and 0.57 (n=64) of its forward-and-backward
    time, medians of three passes (`benchmarks/results/kernels_cpu_jax.json`,
    the grouped rows), and its temporaries hold one block, not one kernel
    per block. The gradient is written out too: JAX would differentiate
    the loop's kernel read into an `(n, d, u)` zero tensor per block, so the
    kernels' gradient instead accumulates each block's `(d, u)` product into
    its expert's slice in place.
    """
    import jax

    def kernel(kernels, expert):
        return jax.lax.dynamic_index_in_dim(kernels, expert, keepdims=False)

    @jax.custom_vjp
    def product(blocks, kernels, block_experts):
        return jax.lax.map(lambda b: b[0] @ kernel(kernels, b[1]), (blocks, block_experts))

    def forward(blocks, kernels, block_experts):
        return product(blocks, kernels, block_experts), (blocks, kernels, block_experts)

    def backward(saved, upstream):
        blocks, kernels, block_experts = saved
        d_blocks = jax.lax.map(lambda b: b[0] @ kernel(kernels, b[1]).T, (upstream, block_experts))

        def accumulate(d_kernels, b):
            block, grad, expert = b
            return d_kernels.at[expert].add(block.T @ grad), None

        d_kernels, _ = jax.lax.scan(
            accumulate, jax.numpy.zeros_like(kernels), (blocks, upstream, block_experts)
        )
        return d_blocks, d_kernels, None

    product.defvjp(forward, backward)
    blocks, kernels, block_experts = (ops.convert_to_tensor(x) for x in (blocks, kernels, block_experts))
    return product(blocks, kernels, block_experts)


def block_products():
    """The block products this backend runs, its default first: the looped
    one on JAX, where it measured faster, and the portable batched one."""
    if keras.backend.backend() == "jax":
        return [scanned_blocks_matmul, batched_blocks_matmul]
    return [batched_blocks_matmul]


def block_grouped_matmul(rows, kernels, group_sizes, block_size=BLOCK_SIZE, blocks_matmul=None):
    """Portable grouped matmul: `out[r] = rows[r] @ kernels[expert of r]`.

    Args:
        rows: `(R, d)` rows sorted by group; rows past `sum(group_sizes)`
            give zeros.
        kernels: `(n, d, u)`.
        group_sizes: `(n,)` int32.
        block_size: rows per block.
        blocks_matmul: `(blocks, kernels, block_experts) -> outputs`, how
            the blocks meet their kernels; by default the backend's first
            of `block_products()`.

    Returns:
        `(R, u)`.
    """
    num_rows, features = rows.shape[0], rows.shape[-1]
    if num_rows is None:
        num_rows = ops.shape(rows)[0]
    num_experts = kernels.shape[0]
    if blocks_matmul is None:
        blocks_matmul = block_products()[0]
    num_blocks, source, row_slot, block_experts = block_layout(
        group_sizes, num_rows, num_experts, block_size
    )
    blocks = gather_rows(rows, source, row_slot[:, None])
    blocks = ops.reshape(blocks, (num_blocks, block_size, features))
    outputs = blocks_matmul(blocks, kernels, block_experts)
    # The unit count stays static when the row count is not.
    outputs = ops.reshape(outputs, (-1, kernels.shape[-1]))
    return gather_rows(outputs, row_slot, source[:, None])


def _probe_torch_grouped_mm(device, dtype):
    """Whether `torch._grouped_mm` runs, forward and backward, on `device`
    in `dtype`: it exists from torch 2.8, and which devices and dtypes it
    supports differs between versions (early ones: bf16 on Hopper GPUs)."""
    import torch

    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        # Callers may be inside `torch.no_grad()` (Keras's predict).
        with torch.enable_grad():
            rows = torch.ones((4, 8), device=device, dtype=dtype, requires_grad=True)
            kernels = torch.ones((2, 8, 8), device=device, dtype=dtype, requires_grad=True)
            offsets = torch.tensor([1, 4], device=device, dtype=torch.int32)
            torch._grouped_mm(rows, kernels, offs=offsets).backward(torch.ones((4, 8), device=device, dtype=dtype))
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return True


def torch_grouped_mm_runs(rows, kernels):
    """Whether `torch_grouped_matmul` can take these operands: not while
    `torch.compile` traces (its shape rules for the kernel accept bf16 alone,
    torch 2.13, where eager CPU runs float32 too), one dtype, rows and
    kernel rows 16-byte aligned (the kernel's requirement), and a device and
    dtype where a probe call ran (cached)."""
    import torch

    if torch.compiler.is_compiling():
        return False
    rows, kernels = ops.convert_to_tensor(rows), ops.convert_to_tensor(kernels)
    if rows.dtype != kernels.dtype:
        return False
    width = rows.element_size()
    if (rows.shape[-1] * width) % 16 or (kernels.shape[-1] * width) % 16:
        return False
    key = (rows.device.type, rows.dtype)
    if key not in _TORCH_GROUPED_MM_RUNS:
        _TORCH_GROUPED_MM_RUNS[key] = _probe_torch_grouped_mm(rows.device, rows.dtype)
    return _TORCH_GROUPED_MM_RUNS[key]


def torch_grouped_matmul(rows, kernels, group_sizes):
    """`grouped_matmul` through `torch._grouped_mm` (see
    `torch_grouped_mm_runs` for when it applies)."""
    import torch

    rows, kernels, group_sizes = (ops.convert_to_tensor(x) for x in (rows, kernels, group_sizes))
    num_rows = rows.shape[0]
    ends = torch.cumsum(group_sizes, 0, dtype=torch.int32)
    # The kernel leaves rows past the last offset unwritten: they go to the
    # last group instead and are zeroed after, which also keeps them out of
    # that group's kernel gradient.
    offsets = torch.cat([ends[:-1], torch.full_like(ends[-1:], num_rows)])
    outputs = torch._grouped_mm(rows.contiguous(), kernels.contiguous(), offs=offsets)
    if outputs.requires_grad:
        # Its backward refuses gradients with zero strides (as a sum's).
        outputs.register_hook(lambda grad: grad.contiguous())
    valid = torch.arange(num_rows, device=rows.device) < ends[-1]
    return outputs * valid[:, None].to(outputs.dtype)


def torch_device_type():
    """The type of the device Keras's PyTorch backend puts tensors on."""
    return ops.convert_to_tensor(0.0).device.type


def torch_grouped_mm_available():
    """Whether `torch._grouped_mm` runs in float32 on the device Keras's
    PyTorch backend puts tensors on (the dropless engine's choice)."""
    import torch

    key = (torch_device_type(), torch.float32)
    if key not in _TORCH_GROUPED_MM_RUNS:
        _TORCH_GROUPED_MM_RUNS[key] = _probe_torch_grouped_mm(*key)
    return _TORCH_GROUPED_MM_RUNS[key]


def grouped_matmul(rows, kernels, group_sizes):
    """`out[r] = rows[r] @ kernels[g(r)]` for rows sorted by group `g`.

    Args:
        rows: `(R, d)`; rows past `sum(group_sizes)` give zeros.
        kernels: `(n, d, u)`.
        group_sizes: `(n,)` int32 rows per group, in order.

    Returns:
        `(R, u)`.
    """
    if keras.backend.backend() == "jax":
        import jax

        # On CPU XLA expands ragged_dot over every group (n times the work).
        if jax.default_backend() in ACCELERATORS:
            # A layer passes its weights as Keras variables, which JAX
            # primitives no longer convert implicitly.
            rows, kernels, group_sizes = (ops.convert_to_tensor(x) for x in (rows, kernels, group_sizes))
            return jax.lax.ragged_dot(rows, kernels, group_sizes)
    if keras.backend.backend() == "torch" and torch_grouped_mm_runs(rows, kernels):
        return torch_grouped_matmul(rows, kernels, group_sizes)
    if loops_over_groups():
        return map_groups(_matmul, rows, group_sizes, {"kernel": kernels})
    return block_grouped_matmul(rows, kernels, group_sizes)


def _matmul(rows, weights):
    return ops.matmul(rows, weights["kernel"])


def sorted_mixture(tokens, expert_indices, expert_weights, choices, run_experts, num_experts):
    """Dropless mixture through sorted rows and grouped matmuls.

    Args:
        tokens: `(T, d)`.
        expert_indices: `(T, k)` int32 selected experts.
        expert_weights: `(T, k)` mixing weights.
        choices: `dropless.SortedChoices` of `expert_indices`.
        run_experts: function `(rows, plan, layout) -> (R, u)`: the experts
            on their `(R, d)` sorted rows (through `grouped_matmul`), given
            the `RowPlan`; `layout` lays any per-choice `(T * k, h)` tensor
            out like the rows.
        num_experts: routed experts `n`.

    Returns:
        `(T, u)`; zeros for masked tokens.
    """
    plan = row_plan(choices, expert_indices, num_experts)
    rows = permute(tokens, plan, expert_indices.shape[-1])

    def layout(values):
        return take_rows(values, plan.choice_of_row)

    outputs = run_experts(rows, plan, layout)
    return unpermute(outputs, plan, expert_weights, choices.valid)


def take_row_bias(bias, plan):
    """`(R, u)` per-row bias `bias[row_experts]`, zero past the valid rows."""
    num_valid = ops.sum(plan.group_sizes)
    rows = take_experts(bias, plan.row_experts)
    position = ops.cumsum(ops.ones_like(plan.row_experts)) - 1
    return rows * ops.cast(position < num_valid, rows.dtype)[:, None]

