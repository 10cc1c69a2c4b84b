"""Prototypical networks: a numpy oracle, padding, empty classes, conv4 features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax as mj
from metajax.models import conv4


def _embed(params, batch):
    return jnp.tanh(batch.inputs @ params["w"])


def _episode(key, ways=3, shots=2, queries=3, d_in=4):
    k1, k2, k3 = jax.random.split(key, 3)
    means = 2.0 * jax.random.normal(k1, (ways, d_in))

    def batch(k, per_class):
        labels = jnp.repeat(jnp.arange(ways), per_class)
        return mj.Batch(means[labels] + jax.random.normal(k, (labels.size, d_in)), labels)

    return mj.Task(batch(k2, shots), batch(k3, queries))


def _numpy_protonet_loss(w, task, ways):
    s, q = task.support, task.query
    keep = np.asarray(s.weights) > 0
    fs = np.tanh(np.asarray(s.inputs)[keep] @ w)
    ys = np.asarray(s.targets)[keep]
    protos = np.stack([fs[ys == k].mean(0) for k in range(ways)])
    fq = np.tanh(np.asarray(q.inputs) @ w)
    logits = -((fq[:, None, :] - protos[None]) ** 2).sum(-1)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
    logp -= logits.max(1, keepdims=True)
    wq = np.asarray(q.weights)
    nll = -logp[np.arange(len(fq)), np.asarray(q.targets)]
    return (wq * nll).sum() / wq.sum(), protos


def test_matches_a_numpy_reference_with_padding():
    ways = 3
    task = _episode(jax.random.key(0), ways=ways)
    w = np.asarray(jax.random.normal(jax.random.key(1), (4, 5)))
    # Pad the support with a weight-0 example of class 0 holding NaN inputs, and
    # give the query non-uniform weights.
    support = mj.Batch(
        jnp.concatenate([task.support.inputs, jnp.full((1, 4), jnp.nan)]),
        jnp.concatenate([task.support.targets, jnp.zeros((1,), jnp.int32)]),
        jnp.concatenate([task.support.weights, jnp.zeros((1,))]),
    )
    query = task.query.replace(weights=jnp.linspace(0.5, 2.0, task.query.targets.size))
    padded = mj.Task(support, query)
    learner = mj.protonet(_embed, num_classes=ways)
    loss, aux = jax.jit(learner.loss)({"w": w}, padded)
    expected, protos = _numpy_protonet_loss(w, padded, ways)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    classifier, _ = learner.adapt({"w": w}, padded.support)
    np.testing.assert_allclose(classifier["prototypes"], protos, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(classifier["counts"], [2, 2, 2])
    grads = jax.jit(jax.grad(lambda p: learner.loss(p, padded)[0]))({"w": jnp.asarray(w)})
    assert np.all(np.isfinite(grads["w"])) and float(jnp.abs(grads["w"]).max()) > 0
    assert 0.0 <= float(aux["query_accuracy"]) <= 1.0


def test_a_class_without_support_examples_is_never_predicted():
    task = _episode(jax.random.key(2), ways=3)
    no_class_2 = task.support.replace(weights=jnp.where(task.support.targets == 2, 0.0, 1.0))
    learner = mj.protonet(_embed, num_classes=3)
    params = {"w": jax.random.normal(jax.random.key(3), (4, 5))}
    classifier, _ = jax.jit(learner.adapt)(params, no_class_2)
    np.testing.assert_allclose(classifier["counts"], [2, 2, 0])
    # Class-2 examples, even the support examples themselves, are never put in class 2...
    class_2 = mj.Batch(task.support.inputs[4:], jnp.array([2, 2]))
    _, aux = jax.jit(learner.loss_fn)(classifier, class_2)
    assert float(aux["accuracy"]) == 0.0
    # ...while the present classes are classified as usual, with a finite loss.
    present = mj.Batch(task.support.inputs[:4], task.support.targets[:4])
    loss, aux = jax.jit(learner.loss_fn)(classifier, present)
    assert np.isfinite(float(loss)) and float(aux["accuracy"]) == 1.0


def test_eval_step_reports_chance_before_and_prototypes_after():
    task = jax.tree.map(lambda x: x[None], _episode(jax.random.key(4), ways=3))
    learner = mj.protonet(_embed, num_classes=3)
    params = {"w": jax.random.normal(jax.random.key(5), (4, 5))}
    metrics = jax.jit(mj.make_eval_step(learner, inner_steps=2))(params, task)
    assert metrics["query_loss"].shape == (1, 3)
    np.testing.assert_allclose(metrics["query_loss"][0, 0], np.log(3), rtol=1e-6)
    single, _ = learner.loss(params, jax.tree.map(lambda x: x[0], task))
    np.testing.assert_allclose(metrics["query_loss"][0, 1:], [single, single], rtol=1e-6)


def test_conv4_features_with_padding():
    params = conv4.init(jax.random.key(0), ways=5, channels=4)

    def embed(p, batch):
        return conv4.apply(p, batch.inputs, example_mask=batch.weights > 0, return_features=True)

    learner = mj.protonet(embed, num_classes=5)
    images = jax.random.uniform(jax.random.key(1), (11, 28, 28, 1))
    labels = jnp.concatenate([jnp.arange(5), jnp.arange(5), jnp.zeros((1,), jnp.int32)])
    weights = jnp.concatenate([jnp.ones(10), jnp.zeros(1)])  # one padded image
    task = mj.Task(mj.Batch(images[:5], labels[:5]), mj.Batch(images[5:], labels[5:], weights[5:]))
    unpadded = mj.Task(task.support, mj.Batch(images[5:10], labels[5:10]))

    @jax.jit
    def run(params):
        out = jax.value_and_grad(learner.loss, has_aux=True)(params, task)
        return out, learner.loss(params, unpadded)[0]

    ((loss, aux), grads), loss_unpadded = run(params)
    np.testing.assert_allclose(loss, loss_unpadded, rtol=1e-5)
    assert np.isfinite(float(loss)) and 0.0 <= float(aux["query_accuracy"]) <= 1.0
    assert float(jnp.abs(grads["conv0"]["w"]).max()) > 0
    np.testing.assert_array_equal(grads["head"]["w"], 0.0)  # the head is not used


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_classes"):
        mj.protonet(_embed, num_classes=0)
    learner = mj.protonet(lambda p, b: b.inputs[:, :, None], num_classes=2)
    task = _episode(jax.random.key(6), ways=2)
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        learner.loss({}, task)
