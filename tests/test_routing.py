"""Routing functions against hand computations in NumPy."""

import numpy as np
import pytest
from keras import ops

from moe_keras import routing


def np_(x):
    return ops.convert_to_numpy(x)


PROBS = np.array(
    [[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.35, 0.05], [0.3, 0.3, 0.4]],
    dtype="float32",
)


def test_router_probabilities_is_float32_softmax():
    logits = np.array([[1.0, 2.0, 3.0]], dtype="float16")
    probs = np_(routing.router_probabilities(logits))
    assert probs.dtype == np.float32
    expected = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    np.testing.assert_allclose(probs[0], expected, rtol=1e-3)


def test_top_k_normalized_weights_sum_to_one():
    weights, indices = routing.top_k_routing(PROBS, 2, normalize=True)
    np.testing.assert_array_equal(np_(indices), [[0, 1], [2, 1], [0, 1], [2, 0]])
    np.testing.assert_allclose(np_(weights)[0], [0.5 / 0.8, 0.3 / 0.8], rtol=1e-5)
    np.testing.assert_allclose(np_(weights).sum(-1), 1.0, rtol=1e-5)


def test_top_k_unnormalized_keeps_softmax_values():
    weights, indices = routing.top_k_routing(PROBS, 1, normalize=False)
    np.testing.assert_array_equal(np_(indices)[:, 0], [0, 2, 0, 2])
    np.testing.assert_allclose(np_(weights)[:, 0], [0.5, 0.7, 0.6, 0.4])


def test_selection_bias_changes_choice_not_weights():
    bias = np.array([0.0, 0.5, 0.0], dtype="float32")
    weights, indices = routing.top_k_routing(PROBS, 1, bias, normalize=False)
    # Expert 1 wins every row once biased, but is mixed with its own prob.
    np.testing.assert_array_equal(np_(indices)[:, 0], [1, 1, 1, 1])
    np.testing.assert_allclose(np_(weights)[:, 0], PROBS[:, 1])


@pytest.mark.parametrize(
    "tokens,experts,k,factor,expected",
    [(8, 4, 1, 1.0, 2), (8, 4, 2, 1.0, 4), (10, 4, 1, 1.25, 4), (8, 4, 1, None, 8),
     (4, 2, 2, 4.0, 4)],
)
def test_expert_capacity(tokens, experts, k, factor, expected):
    assert routing.expert_capacity(tokens, experts, k, factor) == expected


def test_assign_capacity_first_choices_have_priority():
    # 4 tokens, top-2 of 2 experts; every token picks expert 0 then 1, except
    # token 3 which picks 1 then 0.
    indices = np.array([[0, 1], [0, 1], [0, 1], [1, 0]], dtype="int32")
    positions, keep = routing.assign_capacity(indices, 2, capacity=3)
    # Expert 0: first choices of tokens 0,1,2 -> 0,1,2; token 3's second
    # choice comes after all first choices -> position 3, dropped.
    # Expert 1: token 3's first choice -> 0, then second choices 1,2,3.
    np.testing.assert_array_equal(np_(positions), [[0, 1], [1, 2], [2, 3], [0, 3]])
    np.testing.assert_array_equal(np_(keep), [[1, 1], [1, 1], [1, 0], [1, 0]])


def test_combine_weights_zero_for_dropped_slots():
    weights = np.array([[0.7, 0.3], [0.6, 0.4]], dtype="float32")
    indices = np.array([[2, 0], [1, 2]], dtype="int32")
    keep = np.array([[1, 1], [1, 0]], dtype="float32")
    combine = np_(routing.combine_weights(weights, indices, 3, keep))
    np.testing.assert_allclose(combine, [[0.3, 0.0, 0.7], [0.0, 0.6, 0.0]])


def test_expert_token_counts():
    indices = np.array([[0, 1], [0, 2], [0, 1]], dtype="int32")
    np.testing.assert_array_equal(np_(routing.expert_token_counts(indices, 4)), [3, 2, 1, 0])


def test_cosine_router_logits_match_numpy_and_are_bounded():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 5)).astype("float32")
    kernel = rng.normal(size=(5, 3)).astype("float32")
    logits = np_(routing.cosine_router_logits(features, kernel, 0.1))
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    w = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    np.testing.assert_allclose(logits, x @ w / 0.1, rtol=1e-4, atol=1e-4)
    assert np.abs(logits).max() <= 10.0 + 1e-4
    # Scaling features or kernel (what Adam does to a linear router's
    # logits) leaves the cosine logits unchanged.
    scaled = np_(routing.cosine_router_logits(100 * features, 7 * kernel, 0.1))
    np.testing.assert_allclose(scaled, logits, rtol=1e-4, atol=1e-4)
    aligned = np_(routing.cosine_router_logits(kernel.T, kernel, 0.5))
    np.testing.assert_allclose(np.diag(aligned), 2.0, rtol=1e-4)


# Routers the field uses now -------------------------------------------------


def test_sigmoid_scores_select_on_score_plus_bias_and_mix_unbiased_scores():
    logits = np.array([[2.0, 0.0, -1.0, 1.0], [0.0, 0.5, 3.0, -2.0]], "float32")
    bias = np.array([0.0, 0.6, 0.0, 0.0], "float32")
    scores = routing.sigmoid_router_scores(logits)
    sig = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(ops.convert_to_numpy(scores), sig, rtol=1e-6)
    weights, indices = routing.top_k_routing(scores, 2, bias, normalize=True)
    # Token 0: scores .881 .5 .269 .731, + bias on expert 1 -> 1.1: picks 1 then 0.
    # Token 1: .5 .622 .953 .119, + bias -> 1.222 for expert 1: picks 1 then 2.
    np.testing.assert_array_equal(ops.convert_to_numpy(indices), [[1, 0], [1, 2]])
    expected = np.array([[sig[0, 1], sig[0, 0]], [sig[1, 1], sig[1, 2]]])
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ops.convert_to_numpy(weights), expected, rtol=1e-5)


def test_expert_choice_takes_each_experts_top_tokens():
    probs = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]], "float32"
    )
    weights, tokens = routing.expert_choice_routing(probs, capacity=2)
    # Expert 0's top two tokens are 0 (.7) and 2 (.5); expert 1: 1 and 2; expert 2: 3, then 0 (tie .1 -> first).
    np.testing.assert_array_equal(ops.convert_to_numpy(tokens)[:2], [[0, 2], [1, 2]])
    assert ops.convert_to_numpy(tokens)[2, 0] == 3
    np.testing.assert_allclose(ops.convert_to_numpy(weights)[:2], [[0.7, 0.5], [0.8, 0.4]], rtol=1e-6)
    # A masked token is never chosen while real ones are left.
    weights, tokens = routing.expert_choice_routing(probs, 2, token_mask=np.array([0, 1, 1, 1]))
    assert 0 not in ops.convert_to_numpy(tokens)


def test_batch_prioritised_capacity_keeps_the_most_confident_tokens():
    # Four tokens all on expert 0, capacity 2. By position tokens 0 and 1
    # keep their slots; by priority the two most confident (3 and 1).
    indices = np.zeros((4, 1), "int32")
    _, by_position = routing.assign_capacity(indices, 2, 2)
    np.testing.assert_array_equal(ops.convert_to_numpy(by_position)[:, 0], [1, 1, 0, 0])
    priority = np.array([0.3, 0.8, 0.1, 0.9], "float32")
    positions, by_score = routing.assign_capacity(indices, 2, 2, priority=priority)
    np.testing.assert_array_equal(ops.convert_to_numpy(by_score)[:, 0], [0, 1, 0, 1])
    np.testing.assert_array_equal(ops.convert_to_numpy(positions)[:, 0], [2, 1, 3, 0])
    # First choices still come before any second choice.
    two = np.array([[0, 1], [1, 0]], "int32")
    _, keep = routing.assign_capacity(two, 2, 1, priority=np.array([0.1, 0.9], "float32"))
    np.testing.assert_array_equal(ops.convert_to_numpy(keep), [[1, 0], [1, 0]])
