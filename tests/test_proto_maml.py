"""Proto-MAML: MAML whose linear head starts at the prototype classifier."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

import metajax as mj
from metajax.losses import accuracy, softmax_cross_entropy, weighted_mean

WAYS, FEATURES = 3, 5


def _init(key):
    k1, k2 = jax.random.split(key)
    return {
        "enc": {"w": jax.random.normal(k1, (4, FEATURES)) * 0.8},
        "head": {"w": jax.random.normal(k2, (FEATURES, WAYS)), "b": jnp.ones((WAYS,))},
    }


def _embed(params, batch):
    return jnp.tanh(batch.inputs @ params["enc"]["w"])


def _loss(params, batch):
    logits = _embed(params, batch) @ params["head"]["w"] + params["head"]["b"]
    loss = weighted_mean(softmax_cross_entropy(logits, batch.targets), batch.weights)
    return loss, {"accuracy": weighted_mean(accuracy(logits, batch.targets), batch.weights)}


def _set_head(params, w, b):
    return {**params, "head": {"w": w, "b": b}}


def _task(key, shots=2, queries=3):
    ks, kq = jax.random.split(key)

    def batch(k, n):
        labels = jnp.tile(jnp.arange(WAYS), n)
        x = jax.random.normal(k, (WAYS * n, 4)) + labels[:, None]
        return mj.Batch(x, labels, jnp.ones((WAYS * n,)))

    return mj.Task(batch(ks, shots), batch(kq, queries))


def test_before_any_inner_step_it_is_the_prototypical_network():
    params, task = _init(jax.random.key(0)), _task(jax.random.key(1))
    learner = mj.proto_maml(_loss, _embed, _set_head, num_classes=WAYS, inner_steps=0)
    proto_loss, proto_aux = mj.protonet(_embed, WAYS).loss(params, task)
    loss, aux = learner.loss(params, task)
    np.testing.assert_allclose(loss, proto_loss, rtol=1e-5)
    np.testing.assert_allclose(aux["query_accuracy"], proto_aux["query_accuracy"])


def test_meta_gradient_flows_through_the_inner_step_and_the_prototypes():
    params, task = _init(jax.random.key(2)), _task(jax.random.key(3))
    lr = 0.3
    learner = mj.proto_maml(_loss, _embed, _set_head, num_classes=WAYS, inner_lr=lr)

    def by_hand(p):
        feats = _embed(p, task.support)
        onehot = jax.nn.one_hot(task.support.targets, WAYS)
        protos = (onehot.T @ feats) / onehot.sum(0)[:, None]
        theta = _set_head(p, 2 * protos.T, -jnp.sum(protos**2, -1))
        grads = jax.grad(lambda t: _loss(t, task.support)[0])(theta)
        theta = jax.tree.map(lambda t, g: t - lr * g, theta, grads)
        return _loss(theta, task.query)[0]

    grads = jax.jit(jax.grad(lambda p: learner.loss(p, task)[0]))(params)
    expected = jax.jit(jax.grad(by_hand))(params)
    chex.assert_trees_all_close(grads["enc"], expected["enc"], rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(grads["enc"]["w"]).max()) > 0
    # The head in the meta-parameters is overwritten for every task: no gradient.
    chex.assert_trees_all_equal(grads["head"], jax.tree.map(jnp.zeros_like, params["head"]))


def test_eval_step_before_adaptation_reports_the_prototype_classifier():
    params = _init(jax.random.key(4))
    tasks = jax.vmap(_task)(jax.random.split(jax.random.key(5), 4))
    learner = mj.proto_maml(_loss, _embed, _set_head, num_classes=WAYS, inner_lr=0.1)
    metrics = jax.jit(mj.make_eval_step(learner, inner_steps=2))(params, tasks)
    proto = jax.jit(mj.make_eval_step(mj.protonet(_embed, WAYS), inner_steps=1))(params, tasks)
    assert metrics["query_accuracy"].shape == (4, 3)
    np.testing.assert_allclose(metrics["query_accuracy"][:, 0], proto["query_accuracy"][:, 1])
