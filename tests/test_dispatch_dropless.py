"""Dropless dispatch: the sort, the bucket ladder, the grouped matmul, the
engines' equality with a per-token NumPy mixture (values and gradients,
eager and compiled), and the one place that picks a strategy."""

import keras
import numpy as np
import pytest
from keras import ops

from moe_keras import dispatch
from moe_keras import routing

from conftest import gradients

ROWS_DEFAULT = dispatch.ROWS_MIN_IMBALANCE


def np_(x):
    return ops.convert_to_numpy(x)


def test_sort_ranks_choices_within_experts_and_skips_masked_tokens():
    indices = np.array([[0, 1], [0, 2], [1, 0], [0, 1], [2, 1]], "int32")
    choices = dispatch.sort_by_expert(indices, 3)
    # Expert 0 is chosen by (t0,j0), (t1,j0), (t2,j1), (t3,j0): ranks 0..3.
    np.testing.assert_array_equal(np_(choices.positions), [[0, 0], [1, 0], [1, 2], [3, 2], [1, 3]])
    np.testing.assert_array_equal(np_(choices.group_sizes), [4, 4, 2])
    # Token 1 masked: its two choices take no rank, the others close up.
    masked = dispatch.sort_by_expert(indices, 3, token_mask=np.array([1, 0, 1, 1, 1]))
    np.testing.assert_array_equal(np_(masked.group_sizes), [3, 4, 1])
    np.testing.assert_array_equal(np_(masked.valid)[:, 0], [1, 0, 1, 1, 1])
    positions = np_(masked.positions)
    assert positions[0, 0] == 0 and positions[2, 1] == 1 and positions[3, 0] == 2
    assert positions[4, 0] == 0  # expert 2's only real choice


def test_bucket_ladder():
    # Mean load 4096 * 2 / 64 = 128: rungs at 1.125, 1.25, 1.5, 2, 4 x 128, then T.
    assert dispatch.bucket_capacities(4096, 64, 2) == [144, 160, 192, 256, 512, 4096]
    # Rungs never pass T and never repeat: n=2, k=2 means every expert can take all.
    assert dispatch.bucket_capacities(10, 2, 2) == [10]
    assert dispatch.bucket_capacities(7, 4, 1) == [2, 3, 4, 7]


def reference_mixture(tokens, kernels, weights, indices, mask=None):
    """`sum_j w[t, j] * tokens[t] @ kernels[i[t, j]]`, token by token."""
    out = np.zeros((len(tokens), kernels.shape[-1]), "float64")
    for t in range(len(tokens)):
        if mask is not None and not mask[t]:
            continue
        for j in range(indices.shape[1]):
            out[t] += weights[t, j] * tokens[t] @ kernels[indices[t, j]]
    return out


def problem(seed, num_tokens=24, features=5, units=3, num_experts=6, k=2, skew=None):
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(num_tokens, features)).astype("float32")
    kernels = rng.normal(size=(num_experts, features, units)).astype("float32")
    logits = rng.normal(size=(num_tokens, num_experts)).astype("float32")
    if skew is not None:
        logits[:, skew] += 50.0  # every token's first choice: expert `skew`
    weights, indices = routing.top_k_routing(routing.router_probabilities(logits), k)
    return tokens, kernels, np_(weights), np_(indices)


def bucket_engine(tokens, kernels, weights, indices, mask=None):
    """Linear experts through the bucketed-capacity engine."""
    choices = dispatch.sort_by_expert(indices, kernels.shape[0], mask)
    capacities = dispatch.bucket_capacities(tokens.shape[0], kernels.shape[0], indices.shape[1])
    return dispatch.bucketed_mixture(
        tokens, indices, weights, choices,
        lambda buffers, layout: ops.einsum("etd,edu->etu", buffers, kernels),
        kernels.shape[0], capacities)


def grouped_engine(tokens, kernels, weights, indices, mask=None):
    """Linear experts through sorted rows and the grouped matmul."""
    choices = dispatch.sort_by_expert(indices, kernels.shape[0], mask)
    return dispatch.sorted_mixture(
        tokens, indices, weights, choices,
        lambda rows, plan, layout: dispatch.grouped_matmul(rows, kernels, plan.group_sizes),
        kernels.shape[0])


def strategy_engine(tokens, kernels, weights, indices, mask=None):
    """What the layers call: buffers while balanced, sorted rows past
    `ROWS_MIN_IMBALANCE` times the mean load."""
    return dispatch.dropless_mixture(
        tokens, indices, weights, kernels.shape[0],
        run_buffers=lambda buffers, layout: ops.einsum("etd,edu->etu", buffers, kernels),
        run_rows=lambda rows, plan, layout: dispatch.grouped_matmul(rows, kernels, plan.group_sizes),
        token_mask=mask)


def inference_engine(tokens, kernels, weights, indices, mask=None):
    """What the layers call at inference: the ladder's branches not
    rematerialised (on JAX)."""
    return dispatch.dropless_mixture(
        tokens, indices, weights, kernels.shape[0],
        run_buffers=lambda buffers, layout: ops.einsum("etd,edu->etu", buffers, kernels),
        run_rows=lambda rows, plan, layout: dispatch.grouped_matmul(rows, kernels, plan.group_sizes),
        token_mask=mask, rematerialize=False)


ENGINES = [bucket_engine, grouped_engine, strategy_engine, inference_engine]
CASES = {
    "spread": {},
    # Expert 0 takes every token's first choice; with k=1 the other five
    # get no token at all.
    "one_expert_takes_all": {"skew": 0, "k": 1},
    "one_expert_in_every_token": {"skew": 0, "k": 2},
}


@pytest.mark.parametrize("engine", ENGINES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES)
def test_engines_equal_the_per_token_mixture(engine, case):
    tokens, kernels, weights, indices = problem(1, **CASES[case])
    if case == "one_expert_takes_all":
        assert set(indices[:, 0]) == {0}
    expected = reference_mixture(tokens, kernels, weights, indices)
    np.testing.assert_allclose(np_(engine(tokens, kernels, weights, indices)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("engine", ENGINES, ids=lambda f: f.__name__)
def test_engines_give_masked_tokens_nothing(engine):
    tokens, kernels, weights, indices = problem(2)
    mask = np.ones(len(tokens), "float32")
    mask[[0, 5, 6, 23]] = 0
    expected = reference_mixture(tokens, kernels, weights, indices, mask)
    got = np_(engine(tokens, kernels, weights, indices, mask))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.all(got[[0, 5, 6, 23]] == 0)


def compiled(function, xla=True):
    """`function` compiled by the backend (XLA where it has it, unless
    `xla=False` on TensorFlow)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf

        # Static shapes, as XLA sees them inside a model traced per shape.
        return tf.function(function, jit_compile=xla)
    pytest.skip(f"no compiler for the {backend} backend")


@pytest.mark.parametrize("engine", [bucket_engine, grouped_engine], ids=lambda f: f.__name__)
def test_engines_compiled_equal_eager(engine):
    tokens, kernels, weights, indices = problem(3, skew=2, k=2)
    eager = np_(engine(tokens, kernels, weights, indices))
    # TensorFlow's sorted rows split by group sizes known only at run time,
    # which XLA cannot compile; the layers opt out of XLA there
    # (`strategy.supports_xla`), so they run in a plain graph.
    xla = not (engine is grouped_engine and dispatch.loops_over_groups())
    jitted = np_(compiled(engine, xla)(tokens, kernels, weights, indices))
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(eager, reference_mixture(tokens, kernels, weights, indices), rtol=1e-4, atol=1e-4)


def dense_mixture(tokens, kernels, weights, indices):
    combine = routing.combine_weights(weights, indices, kernels.shape[0])
    return dispatch.dense_combine(ops.einsum("td,edu->etu", tokens, kernels), combine)


def assert_gradients_equal_dense_dispatch(engine, tokens, kernels, weights, indices):
    """Gradients of a smooth loss through `engine` against dense dispatch's;
    returns the engine's."""

    def loss(engine_fn):
        return lambda t, kern, w: ops.sum(ops.sin(engine_fn(t, kern, w, indices)))

    ours = gradients(loss(engine), tokens, kernels, weights)
    reference = gradients(loss(dense_mixture), tokens, kernels, weights)
    for got, expected in zip(ours, reference):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    return ours


@pytest.mark.parametrize("engine", ENGINES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES)
def test_engine_gradients_equal_dense_dispatch_gradients(engine, case):
    tokens, kernels, weights, indices = problem(4, **CASES[case])
    ours = assert_gradients_equal_dense_dispatch(engine, tokens, kernels, weights, indices)
    assert np.abs(ours[1]).sum() > 0


def empty_groups_problem(features=3, units=2):
    """Rows, kernels and group sizes with empty groups and rows past every
    group, and the grouped product they should give."""
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(11, features)).astype("float32")
    kernels = rng.normal(size=(4, features, units)).astype("float32")
    sizes = np.array([3, 0, 6, 0], "int32")  # rows 9 and 10 belong to no group
    expected = np.concatenate([rows[:3] @ kernels[0], rows[3:9] @ kernels[2], np.zeros((2, units))])
    return rows, kernels, sizes, expected


def grouped_gradients_problem(sizes, features=3, units=2):
    """Rows, kernels, an upstream gradient and the gradients of
    `sum(grouped_matmul(rows, kernels, sizes) * upstream)`, written out group
    by group: rows past the groups get no gradient."""
    rng = np.random.default_rng(6)
    rows = rng.normal(size=(11, features)).astype("float32")
    kernels = rng.normal(size=(4, features, units)).astype("float32")
    upstream = rng.normal(size=(11, units)).astype("float32")
    expected_rows = np.zeros_like(rows)
    expected_kernels = np.zeros_like(kernels)
    start = 0
    for expert, size in enumerate(sizes):
        part = slice(start, start + size)
        expected_rows[part] = upstream[part] @ kernels[expert].T
        expected_kernels[expert] = rows[part].T @ upstream[part]
        start += size
    return rows, kernels, upstream, expected_rows, expected_kernels


GROUP_SIZES = {"empty_groups": [3, 0, 6, 0], "one_group_takes_all": [0, 9, 0, 0]}


@pytest.mark.parametrize("product", dispatch.block_products(), ids=lambda f: f.__name__)
def test_block_grouped_matmul_with_empty_groups_and_trailing_rows(product):
    rows, kernels, sizes, expected = empty_groups_problem()
    for block in (1, 2, 4, 16):
        got = np_(dispatch.block_grouped_matmul(rows, kernels, sizes, block, product))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np_(dispatch.grouped_matmul(rows, kernels, sizes)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("product", dispatch.block_products(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("sizes", GROUP_SIZES.values(), ids=GROUP_SIZES.keys())
def test_block_grouped_matmul_gradients(product, sizes):
    sizes = np.array(sizes, "int32")
    rows, kernels, upstream, expected_rows, expected_kernels = grouped_gradients_problem(sizes)

    def loss(rows, kernels):
        return ops.sum(ops.multiply(dispatch.block_grouped_matmul(rows, kernels, sizes, 4, product), upstream))

    got_rows, got_kernels = gradients(loss, rows, kernels)
    np.testing.assert_allclose(got_rows, expected_rows, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_kernels, expected_kernels, rtol=1e-5, atol=1e-5)
    if keras.backend.backend() == "jax":
        import jax

        jitted = jax.jit(jax.grad(loss, argnums=(0, 1)))(rows, kernels)
        np.testing.assert_allclose(np_(jitted[1]), expected_kernels, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sizes", GROUP_SIZES.values(), ids=GROUP_SIZES.keys())
def test_grouped_matmul_gradients(sizes):
    # This backend's own kernel (on TensorFlow each group's rows split off).
    sizes = np.array(sizes, "int32")
    rows, kernels, upstream, expected_rows, expected_kernels = grouped_gradients_problem(sizes)

    def loss(rows, kernels):
        return ops.sum(ops.multiply(dispatch.grouped_matmul(rows, kernels, sizes), upstream))

    got_rows, got_kernels = gradients(loss, rows, kernels)
    np.testing.assert_allclose(got_rows, expected_rows, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_kernels, expected_kernels, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "mode,n,k,factor,expected",
    [
        ("auto", 8, 2, None, "dropless"),
        ("auto", 5, 4, None, "dense"),  # n / k = 1.25: dense on every backend
        ("auto", 64, 1, 1.25, "capacity"),
        ("auto", 4, 2, 1.25, "dense"),  # buffers would be 62% of the dense work
        ("sparse", 4, 2, None, "dropless"),
        ("sparse", 4, 2, 2.0, "capacity"),
        ("dense", 64, 1, None, "dense"),
    ],
)
def test_choose_dispatch(mode, n, k, factor, expected):
    assert dispatch.choose_dispatch(mode, n, k, factor) == expected


# Where "auto" turns dropless without a capacity factor, by backend: from
# n / k above 1.25 on TensorFlow, above 1.5 on JAX, above 2 elsewhere
# (`strategy.DENSE_MAX_EXPERTS_PER_CHOICE`).
AUTO_BY_BACKEND = {
    (4, 3): {"tensorflow": "dropless", "jax": "dense", "torch": "dense"},
    (3, 2): {"tensorflow": "dropless", "jax": "dense", "torch": "dense"},
    (5, 3): {"tensorflow": "dropless", "jax": "dropless", "torch": "dense"},
    (4, 2): {"tensorflow": "dropless", "jax": "dropless", "torch": "dense"},
    (6, 2): {"tensorflow": "dropless", "jax": "dropless", "torch": "dropless"},
}


@pytest.mark.parametrize("n, k", AUTO_BY_BACKEND)
def test_auto_turns_dropless_at_the_backends_bound(n, k):
    expected = AUTO_BY_BACKEND[n, k][keras.backend.backend()]
    assert dispatch.choose_dispatch("auto", n, k, None) == expected


def test_choose_dispatch_rejects_unknown_mode():
    with pytest.raises(ValueError, match="dispatch"):
        dispatch.choose_dispatch("fast", 8, 1, None)


@pytest.mark.parametrize("case, rows", [("spread", False), ("one_expert_takes_all", True),
                                        ("one_expert_in_every_token", True)])
def test_imbalanced_calls_go_to_the_sorted_rows(monkeypatch, case, rows):
    from moe_keras.dispatch import dropless

    taken = []
    switch = ops.switch

    def recording(index, branches, *operands):
        taken.append((int(np_(index)), len(branches)))
        return switch(index, branches, *operands)

    monkeypatch.setattr(dropless.ops, "switch", recording)
    tokens, kernels, weights, indices = problem(6, **CASES[case])
    busiest = np.bincount(indices.ravel(), minlength=6).max()
    mean = indices.size / 6
    # The cases sit clearly on their side of the bound.
    assert (busiest > dispatch.ROWS_MIN_IMBALANCE * mean) == rows
    got = np_(strategy_engine(tokens, kernels, weights, indices))
    np.testing.assert_allclose(got, reference_mixture(tokens, kernels, weights, indices), rtol=1e-4, atol=1e-4)
    if dispatch.loops_over_groups():
        # TensorFlow runs every call on the sorted rows, with no ladder.
        assert taken == []
        return
    ((index, branches),) = taken
    # The sorted rows are the last branch, after the rungs up to 2x the mean.
    assert (index == branches - 1) == rows


@pytest.mark.parametrize("case", CASES)
def test_unknown_batch_size_graph_equals_the_per_token_mixture(case):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("only TensorFlow traces batches of unknown size")
    import tensorflow as tf

    tokens, kernels, weights, indices = problem(7, **CASES[case])
    k = indices.shape[1]
    function = tf.function(
        lambda t, w, i: strategy_engine(t, kernels, w, i),
        input_signature=[tf.TensorSpec((None, tokens.shape[1])), tf.TensorSpec((None, k)),
                         tf.TensorSpec((None, k), tf.int32)])
    got = np_(function(tokens, weights, indices.astype("int32")))
    np.testing.assert_allclose(got, reference_mixture(tokens, kernels, weights, indices), rtol=1e-4, atol=1e-4)


def _adam_trained_weights(monkeypatch, mode, bound=ROWS_DEFAULT):
    from moe_keras import MoEDense
    from moe_keras.dispatch import strategy

    monkeypatch.setattr(strategy, "ROWS_MIN_IMBALANCE", bound)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = rng.normal(size=(48, 1)).astype("float32")
    model = keras.Sequential([
        keras.Input((6,)),
        MoEDense(4, num_experts=8, top_k=2, expert_hidden=5, switch_loss_weight=0.0, seed=1,
                 dispatch=mode),
        keras.layers.Dense(1),
    ])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return model.get_weights()


# 1e-3: every call on sorted rows; 1e9: every call on buffers (TensorFlow
# runs all on sorted rows).
@pytest.mark.parametrize("bound", [1e-3, 1e9], ids=["rows", "buffers"])
def test_dropless_training_equals_dense_training(monkeypatch, bound):
    # Adam with a large rate turns any difference in how the engines'
    # gradients reach the optimizer into a visible one: a gather gradient
    # on TensorFlow (IndexedSlices) is applied as a sparse update, in which
    # the experts a step does not touch keep their moments, while dense
    # dispatch gives every expert a dense gradient.
    sparse = _adam_trained_weights(monkeypatch, "sparse", bound)
    dense = _adam_trained_weights(monkeypatch, "dense")
    for got, expected in zip(sparse, dense):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture
def torch_grouped_mm():
    """`torch._grouped_mm`, where the installed torch runs it on the CPU."""
    if keras.backend.backend() != "torch":
        pytest.skip("torch._grouped_mm is PyTorch's")
    from moe_keras.dispatch import grouped

    if not grouped.torch_grouped_mm_available():
        pytest.skip("this torch has no torch._grouped_mm that runs here")
    return grouped


def test_torch_grouped_mm_with_empty_groups_and_trailing_rows(torch_grouped_mm):
    # Widths of 4 and 8 float32s: the kernel needs 16-byte aligned rows.
    rows, kernels, sizes, expected = empty_groups_problem(features=4, units=8)
    assert torch_grouped_mm.torch_grouped_mm_runs(rows, kernels)
    got = np_(torch_grouped_mm.torch_grouped_matmul(rows, kernels, sizes))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Rows of 3 float32s are not aligned: grouped_matmul takes the blocks.
    rows, kernels, sizes, expected = empty_groups_problem()
    assert not torch_grouped_mm.torch_grouped_mm_runs(rows, kernels)
    np.testing.assert_allclose(np_(dispatch.grouped_matmul(rows, kernels, sizes)), expected, rtol=1e-5, atol=1e-5)


def test_torch_grouped_mm_probe_runs_under_no_grad(torch_grouped_mm, monkeypatch):
    # Keras predicts under torch.no_grad(); a probe that needs a backward
    # pass must still find the kernel there, in every dtype it supports.
    import torch

    monkeypatch.setattr(torch_grouped_mm, "_TORCH_GROUPED_MM_RUNS", {})
    rows, kernels, sizes, expected = empty_groups_problem(features=8, units=8)
    with torch.no_grad():
        assert torch_grouped_mm.torch_grouped_mm_runs(rows, kernels)
        got = np_(torch_grouped_mm.torch_grouped_matmul(rows, kernels, sizes))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sizes", GROUP_SIZES.values(), ids=GROUP_SIZES.keys())
def test_torch_grouped_mm_gradients(torch_grouped_mm, sizes):
    sizes = np.array(sizes, "int32")
    rows, kernels, upstream, expected_rows, expected_kernels = grouped_gradients_problem(sizes, 4, 8)

    def loss(rows, kernels):
        return ops.sum(ops.multiply(torch_grouped_mm.torch_grouped_matmul(rows, kernels, sizes), upstream))

    def plain_sum(rows, kernels):
        # A plain sum hands back a gradient of zero strides, which the
        # kernel's own backward refuses.
        return ops.sum(torch_grouped_mm.torch_grouped_matmul(rows, kernels, sizes))

    got_rows, got_kernels = gradients(loss, rows, kernels)
    np.testing.assert_allclose(got_rows, expected_rows, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_kernels, expected_kernels, rtol=1e-5, atol=1e-5)
    # Its gradient is `upstream` of ones: each row's is its kernel's row sums.
    got_rows, _ = gradients(plain_sum, rows, kernels)
    ones_rows = np.zeros_like(rows)
    start = 0
    for expert, size in enumerate(sizes):
        ones_rows[start:start + size] = kernels[expert].sum(axis=1)
        start += size
    np.testing.assert_allclose(got_rows, ones_rows, rtol=1e-5, atol=1e-5)


def test_ragged_dot_with_empty_groups_and_trailing_rows(accelerator_path):
    rows, kernels, sizes, expected = empty_groups_problem()
    np.testing.assert_allclose(np_(dispatch.grouped_matmul(rows, kernels, sizes)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_accelerator_path_equals_dense_dispatch_in_values_and_gradients(accelerator_path, case):
    import jax

    tokens, kernels, weights, indices = problem(6, **CASES[case])
    mask = np.ones(len(tokens), "float32")
    mask[[2, 9]] = 0
    expected = reference_mixture(tokens, kernels, weights, indices, mask)
    for engine in (strategy_engine, jax.jit(strategy_engine)):
        np.testing.assert_allclose(np_(engine(tokens, kernels, weights, indices, mask)), expected,
                                   rtol=1e-4, atol=1e-4)
    assert_gradients_equal_dense_dispatch(strategy_engine, tokens, kernels, weights, indices)


def test_the_buckets_refuse_a_token_count_unknown_when_traced():
    if dispatch.loops_over_groups():
        pytest.skip("TensorFlow runs the sorted rows, which take any token count")
    if dispatch.dropless_engine(24) != "buckets":
        pytest.skip("this device's engine is the sorted rows")
    # No engine here: the layers compute such a call densely.
    assert dispatch.dropless_engine(ops.convert_to_tensor(24)) is None
    assert not dispatch.dropless_runs(ops.convert_to_tensor(24)) and dispatch.dropless_runs(24)
