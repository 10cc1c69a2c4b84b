"""Per-example losses, weighted reductions, the masked token loss and masking."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax as mj


def test_per_example_losses_are_unreduced_and_correct():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    ce = mj.softmax_cross_entropy(logits, labels)
    expected = -jax.nn.log_softmax(logits)[jnp.arange(2), labels]
    np.testing.assert_allclose(ce, expected, rtol=1e-6)
    np.testing.assert_allclose(mj.accuracy(logits, labels), [1.0, 0.0])
    pred, target = jnp.array([[1.0, 2.0], [0.0, 0.0]]), jnp.array([[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(mj.squared_error(pred, target), [5.0, 2.0])


def test_weighted_mean_divides_by_total_weight_and_is_scale_invariant():
    values = jnp.array([1.0, 2.0, 3.0, 10.0])
    weights = jnp.array([1.0, 1.0, 2.0, 0.0])
    np.testing.assert_allclose(mj.weighted_mean(values, weights), (1 + 2 + 6) / 4)
    np.testing.assert_allclose(
        mj.weighted_mean(values, 7.5 * weights), mj.weighted_mean(values, weights), rtol=1e-6
    )
    np.testing.assert_allclose(mj.weighted_mean(values), values.mean())


def test_weighted_mean_zero_total_weight_is_zero_with_zero_finite_gradient():
    values = jnp.array([1.0, jnp.nan, jnp.inf])
    weights = jnp.zeros(3)
    assert mj.weighted_mean(values, weights) == 0.0
    grad = jax.grad(lambda v: mj.weighted_mean(v, weights))(values)
    np.testing.assert_array_equal(grad, np.zeros(3))
    grad_w = jax.grad(lambda w: mj.weighted_mean(jnp.array([1.0, 2.0, 3.0]), w))(weights)
    chex.assert_tree_all_finite(grad_w)


def test_weighted_mean_masked_nan_does_not_leak_into_gradients():
    values = jnp.array([1.0, 2.0, jnp.nan])
    weights = jnp.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(mj.weighted_mean(values, weights), 1.5)
    np.testing.assert_allclose(jax.grad(mj.weighted_mean)(values, weights), [0.5, 0.5, 0.0])


def test_prefix_weights_broadcast_over_tokens():
    values = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(mj.weighted_mean(values, jnp.array([1.0, 0.0])), 1.0)


def test_masked_token_loss_equals_hand_computation(rng):
    logits = jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 5, size=(2, 4)), jnp.int32)
    weights = jnp.array([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    loss, aux = mj.masked_token_loss(logits, targets, weights)
    log_probs = np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    total, total_w, correct = 0.0, 0.0, 0.0
    for b in range(2):
        for t in range(4):
            w = float(weights[b, t])
            total += w * -log_probs[b, t, int(targets[b, t])]
            correct += w * float(np.argmax(logits[b, t]) == int(targets[b, t]))
            total_w += w
    np.testing.assert_allclose(loss, total / total_w, rtol=1e-5)
    np.testing.assert_allclose(aux["accuracy"], correct / total_w, rtol=1e-6)
    assert float(aux["weight"]) == total_w


def test_mask_tokens_properties():
    key = jax.random.key(0)
    pad, mask_id = 0, 99
    tokens = jnp.concatenate(
        [jax.random.randint(key, (64, 48), 1, 50), jnp.zeros((64, 16), jnp.int32)], axis=1
    )
    inputs, weights = mj.mask_tokens(
        jax.random.key(1), tokens, rate=0.15, mask_id=mask_id, pad_id=pad
    )
    selected = np.asarray(weights) > 0
    # weights mark exactly the corrupted positions (replace_prob=1), never padding
    np.testing.assert_array_equal(selected, np.asarray(inputs) == mask_id)
    assert not selected[:, 48:].any()
    np.testing.assert_array_equal(np.asarray(inputs)[~selected], np.asarray(tokens)[~selected])
    rate = selected[:, :48].mean()
    assert abs(rate - 0.15) < 0.02, rate
    # reproducible from the key
    again, _ = mj.mask_tokens(jax.random.key(1), tokens, rate=0.15, mask_id=mask_id, pad_id=pad)
    np.testing.assert_array_equal(inputs, again)


def test_mask_tokens_bert_style_keeps_and_randomises_some():
    tokens = jax.random.randint(jax.random.key(0), (128, 64), 1, 50)
    inputs, weights = mj.mask_tokens(
        jax.random.key(2),
        tokens,
        rate=0.5,
        mask_id=99,
        vocab_size=50,
        replace_prob=0.8,
        random_prob=0.1,
    )
    sel = np.asarray(weights) > 0
    masked = (np.asarray(inputs) == 99) & sel
    assert 0.75 < masked.sum() / sel.sum() < 0.85


def test_bad_inputs_raise_named_errors():
    logits = jnp.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels out of range \[0, 4\)"):
        mj.softmax_cross_entropy(logits, jnp.array([0, 4, 1]))
    with pytest.raises(ValueError, match="labels must be integer"):
        mj.softmax_cross_entropy(logits, jnp.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"logits .*\(3, 4\).*labels \(2,\)"):
        mj.softmax_cross_entropy(logits, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="weights must be non-negative"):
        mj.weighted_mean(jnp.ones(3), jnp.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match=r"weights of shape \(2,\)"):
        mj.weighted_mean(jnp.ones(3), jnp.ones(2))
    with pytest.raises(ValueError, match=r"targets must be \[B, T\]"):
        mj.masked_token_loss(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"weights must match targets"):
        mj.masked_token_loss(jnp.zeros((2, 3, 5)), jnp.zeros((2, 3), jnp.int32), jnp.ones((2,)))
    with pytest.raises(ValueError, match="predictions"):
        mj.squared_error(jnp.ones((3, 1)), jnp.ones((3,)))


def test_out_of_range_labels_under_jit_give_nan_not_a_wrong_number():
    loss = jax.jit(lambda lg, lb: mj.weighted_mean(mj.softmax_cross_entropy(lg, lb)))(
        jnp.zeros((2, 3)), jnp.array([0, 7])
    )
    assert np.isnan(loss)


def test_make_loss_reports_weighted_metrics():
    loss_fn = mj.make_loss(
        lambda p, x: x * p, mj.softmax_cross_entropy, metrics={"accuracy": mj.accuracy}
    )
    x = jnp.array([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    batch = mj.Batch(x, jnp.array([0, 0, 1]), jnp.array([1.0, 0.0, 0.0]))
    loss, aux = loss_fn(1.0, batch)
    assert aux["accuracy"] == 1.0
    np.testing.assert_allclose(loss, mj.softmax_cross_entropy(x[:1], jnp.array([0]))[0], rtol=1e-6)
