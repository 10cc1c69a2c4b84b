"""Batch-norm running statistics: kept by the train step, never by gradients."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax as mj
from metajax.models import conv4
from metajax.recipes.omniglot import classifier_loss
from metajax.tasks import Batch, Task

SIZE, WAYS = 8, 3


def _params(key=0):
    return conv4.init(
        jax.random.key(key), ways=WAYS, channels=4, blocks=2, image_size=SIZE, running_stats=True
    )


def _batch(key, n):
    images = jax.random.uniform(key, (n, SIZE, SIZE, 1))
    return Batch(images, jnp.arange(n) % WAYS, jnp.ones(n))


def _tasks(n_tasks=3):
    keys = jax.random.split(jax.random.key(1), n_tasks)
    return jax.vmap(
        lambda k: Task(_batch(jax.random.fold_in(k, 0), 3), _batch(jax.random.fold_in(k, 1), 6))
    )(keys)


def _stats(params, batch):
    return conv4.batch_statistics(
        params, batch.inputs, conv="im2col", example_mask=batch.weights > 0
    )


def _learner(per_step: bool, steps=2):
    return mj.maml(
        classifier_loss("im2col"),
        inner_lr=0.1,
        inner_steps=steps,
        per_step_params=conv4.batch_norm_mask if per_step else False,
    )


def test_running_statistics_classify_each_example_on_its_own():
    params = _params()
    images = _batch(jax.random.key(3), 6).inputs
    stats = jax.jit(conv4.batch_statistics)(params, images)
    for name, layer in stats.items():
        params[name] = {**params[name], **layer}
    # Jitted (eager, every small op compiles apart).
    apply = jax.jit(conv4.apply, static_argnames="running")
    # With the batch's own statistics stored, running mode equals transductive mode...
    np.testing.assert_allclose(
        apply(params, images, running=True), apply(params, images), atol=1e-5
    )
    # ...and an example's logits no longer depend on the rest of the batch.
    np.testing.assert_allclose(
        apply(params, images[:2], running=True), apply(params, images, running=True)[:2], atol=1e-5
    )
    # Running statistics are state: no gradient reaches them.
    grads = jax.jit(jax.grad(lambda p: jnp.sum(conv4.apply(p, images, running=True) ** 2)))(params)
    for name in stats:
        assert not jnp.any(grads[name]["mean"]) and not jnp.any(grads[name]["var"])
        assert jnp.any(grads[name]["scale"])
    with pytest.raises(ValueError, match="running_stats=True"):
        conv4.apply(
            conv4.init(jax.random.key(0), ways=WAYS, channels=4),
            jnp.zeros((1, 28, 28, 1)),
            running=True,
        )


@pytest.mark.parametrize("per_step", [False, True], ids=["shared", "per-step"])
def test_train_step_keeps_the_moving_average_of_every_forward_pass(per_step):
    """Row k is the support batch after k inner steps, row K the query after K; the
    EMA uses the task weights; the learned model is the untracked one.

    (Up to float rounding: the tracked and untracked steps are different compiled
    programs. The outer optimizer is SGD because Adam turns rounding-level gradients,
    such as those of the conv biases that batch norm cancels, into full-size steps.)"""
    steps, momentum = 2, 0.3
    learner = _learner(per_step, steps)
    tracker = mj.running_stats.track(learner, _stats, conv4.update_running_stats, momentum=momentum)
    outer = optax.sgd(1e-1)
    state = mj.init_train_state(learner, _params(), outer, jax.random.key(2))
    tasks = _tasks()
    weights = jnp.array([1.0, 0.0, 3.0])
    tracked, _ = jax.jit(mj.make_train_step(learner, outer, running_stats=tracker))(
        state, tasks, task_weights=weights
    )
    plain, _ = jax.jit(mj.make_train_step(learner, outer))(state, tasks, task_weights=weights)

    @jax.jit
    @jax.vmap
    def rows(task):
        support = [
            _stats(learner.adapt(state.meta_params, task.support, steps=k)[0], task.support)
            for k in range(steps)
        ]
        query = _stats(learner.adapt(state.meta_params, task.support)[0], task.query)
        return jax.tree.map(lambda *r: jnp.stack(r), *support, query)

    mean = jax.tree.map(lambda x: jnp.tensordot(weights / 4.0, x, axes=1), rows(tasks))
    for name in ("bn0", "bn1"):
        for key in ("mean", "var"):
            batch = mean[name][key] if per_step else jnp.mean(mean[name][key], axis=0)
            old = state.meta_params[name][key]
            np.testing.assert_allclose(
                tracked.meta_params[name][key], (1 - momentum) * old + momentum * batch, atol=1e-5
            )
            assert tracked.meta_params[name][key].shape == ((steps + 1, 4) if per_step else (4,))
            # Without tracking (zero gradient, zero update) they do not move.
            np.testing.assert_array_equal(plain.meta_params[name][key], old)
    stats_mask = conv4.running_stats_mask(tracked.meta_params)
    moved = False
    for is_stat, a, b, old in zip(
        *map(
            jax.tree.leaves, (stats_mask, tracked.meta_params, plain.meta_params, state.meta_params)
        )
    ):
        if not is_stat:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
            moved |= not np.allclose(b, old, rtol=0, atol=1e-4)
    assert moved  # the comparison above is between trained parameters


def test_evaluation_with_running_statistics_uses_row_k_after_k_steps():
    steps = 2
    learner = _learner(True, steps)
    meta = learner.init(_params())
    # Distinct rows, so that the wrong row changes the numbers.
    for name in ("bn0", "bn1"):
        meta[name] = {
            **meta[name],
            "mean": meta[name]["mean"] + 0.1 * jnp.arange(steps + 1.0)[:, None],
            "var": meta[name]["var"] * (1.0 + jnp.arange(steps + 1.0))[:, None],
        }
    running = mj.maml(
        classifier_loss("im2col", running=True),
        inner_lr=0.1,
        inner_steps=steps,
        per_step_params=conv4.batch_norm_mask,
    )
    task = jax.tree.map(lambda x: x[0], _tasks(1))
    metrics = jax.jit(mj.make_eval_step(running, inner_steps=steps))(
        meta, jax.tree.map(lambda x: x[None], task)
    )
    mask = mj.inner.adapt_mask(meta, conv4.batch_norm_mask)
    for k in range(steps + 1):
        adapted = running.adapt(meta, task.support, steps=k)[0]
        view = mj.inner.select_step(meta, mask, k)
        # The running statistics never adapt: after k steps the model holds row k.
        for name in ("bn0", "bn1"):
            np.testing.assert_array_equal(adapted[name]["mean"], view[name]["mean"])
        logits = conv4.apply(adapted, task.query.inputs, conv="im2col", running=True)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, task.query.targets))
        np.testing.assert_allclose(metrics["query_loss"][0, k], loss, rtol=1e-5)
    chex.assert_shape(metrics["query_loss"], (1, steps + 1))


def test_bad_running_statistics_raise_clear_errors():
    learner = _learner(False)
    with pytest.raises(ValueError, match="momentum"):
        mj.running_stats.track(learner, _stats, conv4.update_running_stats, momentum=0.0)
    plain = conv4.init(jax.random.key(0), ways=WAYS, channels=4, blocks=2, image_size=SIZE)
    with pytest.raises(ValueError, match="running_stats=True"):
        conv4.update_running_stats(plain, {}, 0.1)
