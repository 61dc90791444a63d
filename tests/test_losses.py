"""Each balancing loss against a NumPy computation of its documented formula."""

import math

import numpy as np
import pytest
from conftest import gradients
from keras import ops

from moe_keras import losses
from moe_keras import routing

N = 4
BALANCED_PROBS = np.full((8, N), 1.0 / N, dtype="float32")
BALANCED_MASK = np.tile(np.eye(N, dtype="float32"), (2, 1))  # each expert 2 of 8
COLLAPSED_PROBS = np.tile(np.array([[1.0, 0.0, 0.0, 0.0]], "float32"), (8, 1))
COLLAPSED_MASK = COLLAPSED_PROBS.copy()
RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(16, N)).astype("float32") * 2
PROBS = np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True)


def value(x):
    return float(ops.convert_to_numpy(x))


def top_mask(probs, k):
    order = np.argsort(-probs, axis=-1)[:, :k]
    mask = np.zeros_like(probs)
    np.put_along_axis(mask, order, 1.0, axis=-1)
    return mask


def test_switch_balanced_is_one_and_collapsed_is_n():
    assert value(losses.switch_load_balancing_loss(BALANCED_PROBS, BALANCED_MASK, 1)) == pytest.approx(1.0)
    assert value(losses.switch_load_balancing_loss(COLLAPSED_PROBS, COLLAPSED_MASK, 1)) == pytest.approx(N)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_switch_matches_numpy_and_is_one_when_balanced_for_every_k(k):
    mask = top_mask(PROBS, k)
    expected = N * np.sum(mask.mean(0) / k * PROBS.mean(0))
    assert value(losses.switch_load_balancing_loss(PROBS, mask, k)) == pytest.approx(expected, rel=1e-5)
    # Balanced: every expert gets the same share of the k slots.
    balanced_mask = np.zeros((N, N), "float32")
    for t in range(N):
        balanced_mask[t, [(t + j) % N for j in range(k)]] = 1
    probs = np.full((N, N), 1.0 / N, "float32")
    assert value(losses.switch_load_balancing_loss(probs, balanced_mask, k)) == pytest.approx(1.0)


def test_importance_loss_is_population_cv_squared():
    importance = PROBS.sum(0)
    expected = importance.var() / (importance.mean() ** 2 + 1e-10)
    assert value(losses.importance_loss(PROBS)) == pytest.approx(expected, rel=1e-5)
    assert value(losses.importance_loss(BALANCED_PROBS)) == pytest.approx(0.0, abs=1e-7)
    # One expert takes everything: CV^2 = n - 1 with the population variance.
    assert value(losses.importance_loss(COLLAPSED_PROBS)) == pytest.approx(N - 1, rel=1e-5)


def test_diversity_loss_zero_when_balanced_one_when_collapsed():
    mean = PROBS.mean(0)
    expected = 1 + np.sum(mean * np.log(mean + 1e-10)) / math.log(N)
    assert value(losses.diversity_loss(PROBS)) == pytest.approx(expected, rel=1e-5)
    assert value(losses.diversity_loss(BALANCED_PROBS)) == pytest.approx(0.0, abs=1e-6)
    assert value(losses.diversity_loss(COLLAPSED_PROBS)) == pytest.approx(1.0, abs=1e-6)


def test_overflow_loss_only_counts_load_above_capacity():
    assert value(losses.overflow_loss(BALANCED_PROBS, BALANCED_MASK, 1, 1.0)) == 0.0
    # Collapsed: expert 0 gets 8 slots, capacity 8*1/4 = 2 -> overflow 6/8.
    assert value(losses.overflow_loss(COLLAPSED_PROBS, COLLAPSED_MASK, 1, 1.0)) == pytest.approx(N * 6 / 8 * 1.0)
    mask = top_mask(PROBS, 2)
    capacity = 1.25 * 16 * 2 / N
    expected = N * np.sum(np.maximum(mask.sum(0) - capacity, 0) / 32 * PROBS.mean(0))
    assert value(losses.overflow_loss(PROBS, mask, 2, 1.25)) == pytest.approx(expected, rel=1e-5)


def test_router_z_loss():
    expected = np.mean(np.log(np.exp(LOGITS).sum(-1)) ** 2)
    assert value(losses.router_z_loss(LOGITS)) == pytest.approx(expected, rel=1e-5)


def test_loss_free_bias_update_raises_underused_experts():
    bias = np.zeros(N, "float32")
    counts = np.array([10.0, 2.0, 2.0, 2.0], "float32")  # mean 4
    new = ops.convert_to_numpy(losses.loss_free_bias_update(bias, counts, 0.1))
    np.testing.assert_allclose(new, [-0.1, 0.1, 0.1, 0.1])


def softmax_backward(probs, upstream):
    """dL/dlogits from dL/dprobs through a row-wise softmax."""
    return probs * (upstream - (probs * upstream).sum(-1, keepdims=True))


def hand_gradients():
    """dL/dp_ti of each loss at PROBS, derived by hand from its formula."""
    tokens = len(PROBS)
    mean = PROBS.mean(0)
    switch_mask = top_mask(PROBS, 1)
    fraction = switch_mask.mean(0)  # f_i, k = 1
    importance = PROBS.sum(0)
    m = importance.mean()
    variance = importance.var()
    denominator = m**2 + 1e-10
    d_importance = 2 * (importance - m) / N / denominator - variance * 2 * m / N / denominator**2
    d_entropy = -np.log(mean + 1e-10) - mean / (mean + 1e-10)  # dH/dP_i
    capacity = 1.0 * tokens * 1 / N  # 4 slots; top-1 counts are [2, 7, 3, 4]
    overflow = np.maximum(switch_mask.sum(0) - capacity, 0) / tokens
    per_token = lambda per_expert: np.tile(per_expert, (tokens, 1))  # noqa: E731
    return {
        # L = n sum_i f_i P_i, P_i = mean_t p_ti: dL/dp_ti = n f_i / T.
        "switch": (lambda p: losses.switch_load_balancing_loss(p, switch_mask, 1), per_token(N * fraction / tokens)),
        # L = Var(I)/(mean(I)^2 + eps), I_i = sum_t p_ti: dL/dp_ti = dL/dI_i.
        "importance": (losses.importance_loss, per_token(d_importance)),
        # L = 1 - H(P)/log n: dL/dp_ti = -dH/dP_i / (T log n).
        "diversity": (losses.diversity_loss, per_token(-d_entropy / (tokens * math.log(N)))),
        # L = n sum_i o_i P_i: dL/dp_ti = n o_i / T.
        "overflow": (lambda p: losses.overflow_loss(p, switch_mask, 1, 1.0), per_token(N * overflow / tokens)),
    }


@pytest.mark.parametrize("name", ["switch", "importance", "diversity", "overflow"])
def test_loss_gradients_match_hand_derivation(name):
    """Each loss's gradient w.r.t. the probabilities, and through the
    softmax w.r.t. the router logits, on the active backend."""
    fn, expected = hand_gradients()[name]
    assert np.abs(expected).max() > 1e-3  # the case is not trivially zero
    (by_probs,) = gradients(fn, PROBS)
    np.testing.assert_allclose(by_probs, expected, rtol=1e-4, atol=1e-6)
    (by_logits,) = gradients(lambda x: fn(routing.router_probabilities(x)), LOGITS)
    np.testing.assert_allclose(by_logits, softmax_backward(PROBS, expected), rtol=1e-3, atol=1e-6)


def test_router_z_loss_gradient():
    # d/dx_tj mean_t lse(x_t)^2 = 2 lse(x_t) softmax(x_t)_j / T.
    lse = np.log(np.exp(LOGITS).sum(-1, keepdims=True))
    (grad,) = gradients(losses.router_z_loss, LOGITS)
    np.testing.assert_allclose(grad, 2 * lse * PROBS / len(LOGITS), rtol=1e-4, atol=1e-6)


def test_switch_gradient_with_respect_to_the_routed_fraction():
    # L = n sum_i (mean_t m_ti / k) P_i is bilinear: dL/dm_ti = n P_i / (T k),
    # which pins the other factor of the formula (the layers pass a constant mask).
    mask_grad = gradients(lambda p, m: losses.switch_load_balancing_loss(p, m, 2), PROBS, top_mask(PROBS, 2))[1]
    np.testing.assert_allclose(mask_grad, np.tile(N * PROBS.mean(0) / (len(PROBS) * 2), (len(PROBS), 1)), rtol=1e-4)
