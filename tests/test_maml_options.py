"""MAML++ options, learned inner optimizers and truncated meta-gradients on `maml`."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import metajax as mj

from conftest import init_tanh, regression_task, tanh_apply, task_batch

LOSS = mj.make_loss(tanh_apply, mj.squared_error)


def _grad(learner, meta, task, step=None):
    return jax.jit(jax.grad(lambda m, s: learner.loss(m, task, s)[0]))(meta, step)


def _reference_msl_weights(k, num_epochs, epoch):
    """MAML++'s get_per_step_loss_importance_vector, ported line by line (numpy)."""
    weights = np.ones(k) / k
    decay = 1.0 / k / num_epochs
    floor = 0.03 / k
    for i in range(k - 1):
        weights[i] = np.maximum(weights[i] - epoch * decay, floor)
    weights[-1] = np.minimum(weights[-1] + epoch * (k - 1) * decay, 1.0 - (k - 1) * floor)
    return weights


def test_multi_step_loss_weights_follow_maml_plus_plus():
    weights = jax.jit(mj.multi_step_loss_weights(5, num_epochs=10, steps_per_epoch=100))
    for step in (0, 99, 100, 350, 999):
        expected = _reference_msl_weights(5, 10, step // 100)
        np.testing.assert_allclose(weights(step), expected, rtol=1e-6)
        np.testing.assert_allclose(jnp.sum(weights(step)), 1.0, rtol=1e-6)
    # After the annealing epochs only the final step's query loss counts.
    np.testing.assert_array_equal(weights(1000), [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(weights(jnp.iinfo(jnp.int32).max), [0, 0, 0, 0, 1])


def test_multi_step_loss_is_the_weighted_sum_of_per_step_query_losses():
    task = regression_task(jax.random.key(0))
    params = init_tanh(jax.random.key(1))
    weights = jnp.array([0.2, 0.3, 0.5])
    learner = mj.maml(LOSS, 0.1, 3, multi_step_loss=weights)
    per_step = [
        LOSS(mj.maml(LOSS, 0.1, k).adapt(params, task.support)[0], task.query)[0] for k in (1, 2, 3)
    ]
    loss, aux = jax.jit(learner.loss)(params, task)
    np.testing.assert_allclose(loss, jnp.dot(weights, jnp.stack(per_step)), rtol=1e-6)
    np.testing.assert_allclose(aux["query_loss"], per_step[-1], rtol=1e-6)
    # A schedule is a function of the outer step.
    scheduled = mj.maml(LOSS, 0.1, 3, multi_step_loss=lambda s: jnp.where(s < 5, weights, 1 / 3))
    np.testing.assert_allclose(scheduled.loss(params, task, 0)[0], loss, rtol=1e-6)
    np.testing.assert_allclose(
        scheduled.loss(params, task, 5)[0], jnp.mean(jnp.stack(per_step)), rtol=1e-6
    )


def test_per_step_parameters_are_row_k_after_k_inner_steps():
    """MAML++'s per-step weights: the model sees row k of a per-step leaf after k
    steps, in the support losses and in the query loss, and the meta-gradient of
    every row equals the gradient of the same computation written out by hand."""
    task = regression_task(jax.random.key(0))
    params = init_tanh(jax.random.key(1))
    steps, lr = 2, 0.1
    learner = mj.maml(LOSS, lr, steps, per_step_params="c")
    meta = learner.init(params)
    assert meta["body"]["c"].shape == (steps + 1, 4)
    assert meta["body"]["w"].shape == params["body"]["w"].shape
    # Make the rows differ, so that using the wrong row changes the numbers.
    meta["body"]["c"] = meta["body"]["c"] + jnp.arange(steps + 1.0)[:, None] * 0.3

    def by_hand(meta):
        theta = meta
        for k in range(steps):
            view = {**theta, "body": {**theta["body"], "c": theta["body"]["c"][k]}}
            grads = jax.grad(lambda v: LOSS(v, task.support)[0])(view)
            grads_c = jnp.zeros_like(theta["body"]["c"]).at[k].set(grads["body"]["c"])
            grads = {**grads, "body": {**grads["body"], "c": grads_c}}
            theta = jax.tree.map(lambda t, g: t - lr * g, theta, grads)
        view = {**theta, "body": {**theta["body"], "c": theta["body"]["c"][steps]}}
        return LOSS(view, task.query)[0]

    loss, _ = jax.jit(learner.loss)(meta, task)
    np.testing.assert_allclose(loss, jax.jit(by_hand)(meta), rtol=1e-6)
    chex.assert_trees_all_close(
        _grad(learner, meta, task), jax.jit(jax.grad(by_hand))(meta), rtol=1e-5, atol=1e-7
    )
    # The adapted parameters are what the model sees after the last step.
    adapted, _ = jax.jit(learner.adapt)(meta, task.support)
    assert adapted["body"]["c"].shape == (4,)
    # More steps than trained (evaluation) reuse the last row.
    view = mj.inner.select_step(meta, mj.inner.adapt_mask(meta, "c"), 7)
    np.testing.assert_array_equal(view["body"]["c"], meta["body"]["c"][steps])


def test_train_step_with_per_step_parameters_reports_pre_adaptation_metrics_at_row_0():
    # Regression: the pre-adaptation metrics evaluated the carried per-step tree (a
    # [steps + 1] axis the model cannot take), so every per-step train step failed.
    tasks = task_batch(jax.random.key(0), n_tasks=2)
    steps = 2
    learner = mj.maml(LOSS, 0.1, steps, per_step_params="c")
    outer = optax.sgd(0.0)
    state = mj.init_train_state(learner, init_tanh(jax.random.key(1)), outer, jax.random.key(2))
    meta = state.meta_params
    meta["body"]["c"] = meta["body"]["c"] + jnp.arange(steps + 1.0)[:, None] * 0.3
    state = state.replace(meta_params=meta)
    _, metrics = jax.jit(mj.make_train_step(learner, outer))(state, tasks)
    row0 = {**meta, "body": {**meta["body"], "c": meta["body"]["c"][0]}}
    expected = jnp.mean(jax.vmap(lambda t: LOSS(row0, t.query)[0])(tasks))
    np.testing.assert_allclose(metrics["query_loss_pre"], expected, rtol=1e-6)
    assert learner.params(meta)["body"]["c"].shape == (4,)


def test_per_layer_per_step_learning_rates():
    task = regression_task(jax.random.key(2))
    params = init_tanh(jax.random.key(3))
    learner = mj.maml(LOSS, 0.1, 2, learn_inner_lr=True)
    meta = learner.init(params)
    chex.assert_trees_all_equal_shapes(
        meta["inner_lr"], jax.tree.map(lambda _: jnp.ones(2), params)
    )
    rates = jax.tree.map(lambda r: r * jnp.array([1.0, 3.0]), meta["inner_lr"])
    meta = {**meta, "inner_lr": rates}
    adapted, _ = learner.adapt(meta, task.support)
    # The same two updates by hand: step k uses each leaf's k-th rate.
    manual = params
    for k in range(2):
        g = jax.grad(lambda p: LOSS(p, task.support)[0])(manual)
        manual = jax.tree.map(lambda p, r, gi, k=k: p - r[k] * gi, manual, rates, g)
    chex.assert_trees_all_close(adapted, manual, rtol=1e-5, atol=1e-7)
    # Evaluation past the trained number of steps reuses the last rate.
    longer, _ = learner.adapt(meta, task.support, steps=3)
    g = jax.grad(lambda p: LOSS(p, task.support)[0])(manual)
    chex.assert_trees_all_close(
        longer, jax.tree.map(lambda p, r, gi: p - r[1] * gi, manual, rates, g), rtol=1e-5, atol=1e-7
    )


def test_derivative_order_annealing_switches_on_the_outer_step_without_recompiling():
    task = regression_task(jax.random.key(4))
    params = init_tanh(jax.random.key(5))
    annealed = mj.maml(LOSS, 0.1, 2, first_order_steps=10)
    first, second = mj.maml(LOSS, 0.1, 2, first_order=True), mj.maml(LOSS, 0.1, 2)
    traces = {"n": 0}

    def grad(m, step):
        traces["n"] += 1
        return jax.grad(lambda m: annealed.loss(m, task, step)[0])(m)

    grad = jax.jit(grad)
    fo, so = _grad(first, params, task), _grad(second, params, task)
    chex.assert_trees_all_close(grad(params, 0), fo, rtol=1e-6)
    chex.assert_trees_all_close(grad(params, 9), fo, rtol=1e-6)
    chex.assert_trees_all_close(grad(params, 10), so, rtol=1e-6)
    assert traces["n"] == 1
    chex.assert_trees_all_close(_grad(annealed, params, task), so, rtol=1e-6)  # step=None
    diff = ravel_pytree(fo)[0] - ravel_pytree(so)[0]
    assert float(jnp.abs(diff).max()) > 1e-4


def test_train_step_passes_the_outer_step_to_the_schedules():
    learner = mj.maml(LOSS, 0.1, 2, first_order_steps=1)
    first = mj.maml(LOSS, 0.1, 2, first_order=True)
    second = mj.maml(LOSS, 0.1, 2)
    tasks = jax.vmap(regression_task)(jax.random.split(jax.random.key(6), 3))
    outer = optax.sgd(1.0)
    state = mj.init_train_state(learner, init_tanh(jax.random.key(7)), outer, jax.random.key(0))

    def update(learner):
        step = jax.jit(mj.make_train_step(learner, outer))
        return lambda state: step(state, tasks)[0].meta_params

    annealed = update(learner)  # one compiled step for both outer steps
    chex.assert_trees_all_close(annealed(state), update(first)(state), rtol=1e-6)
    later = state.replace(step=jnp.ones((), jnp.int32))
    chex.assert_trees_all_close(annealed(later), update(second)(later), rtol=1e-6)


def test_cosine_outer_lr():
    schedule = mj.cosine_outer_lr(1e-3, 1000, min_learning_rate=1e-5)
    np.testing.assert_allclose(schedule(0), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(schedule(500), 1e-5 + (1e-3 - 1e-5) / 2, rtol=1e-6)
    np.testing.assert_allclose(schedule(1000), 1e-5, rtol=1e-6)
    np.testing.assert_allclose(schedule(5000), 1e-5, rtol=1e-6)


# --- learned inner optimizers ----------------------------------------------------------


def _momentum_learner(steps=3, lr=0.05, momentum=0.5):
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=momentum)
    return mj.maml(
        LOSS, inner_steps=steps, inner_optimizer=tx, learn_hyperparams=("learning_rate", "momentum")
    )


def test_meta_gradient_of_learned_hyperparameters_matches_finite_differences():
    with jax.enable_x64(True):
        learner = _momentum_learner()
        task = regression_task(jax.random.key(8), dtype=jnp.float64)
        meta = learner.init(init_tanh(jax.random.key(9), dtype=jnp.float64))
        assert set(meta["inner_hyperparams"]) == {"learning_rate", "momentum"}
        loss = jax.jit(lambda m: learner.loss(m, task)[0])
        grads = jax.grad(loss)(meta)["inner_hyperparams"]
        eps = 1e-6
        for name in ("learning_rate", "momentum"):

            def shifted(delta, name=name):
                hyper = {**meta["inner_hyperparams"]}
                hyper[name] = hyper[name] + delta
                return loss({**meta, "inner_hyperparams": hyper})

            fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
            np.testing.assert_allclose(grads[name], fd, rtol=1e-6)
            assert abs(float(grads[name])) > 1e-3


def test_learned_inner_learning_rate_is_learned_on_a_toy_problem():
    # 1-D linear regression through the origin, y = a x with a random slope per task,
    # from the fixed init w = 0 (only the inner optimizer is meta-learned). One inner
    # SGD step with lr 0.01 barely moves; the best rate for the support loss
    # mean (w x - y)^2 with E[x^2] = 1 is about 0.5.
    def loss_fn(params, batch):
        return mj.weighted_mean(
            jnp.square(batch.inputs[:, 0] * params["w"] - batch.targets), batch.weights
        )

    def sample(key):
        k_slope, k_x = jax.random.split(key)
        slope = jax.random.normal(k_slope)
        x = jax.random.normal(k_x, (20, 1))
        batch = mj.Batch(x, slope * x[:, 0])
        return mj.Task(batch, batch)

    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.01)
    learner = mj.maml(
        loss_fn, inner_steps=1, inner_optimizer=tx, learn_hyperparams=("learning_rate",)
    )
    freeze_params = optax.multi_transform(
        {"learn": optax.adam(0.05), "freeze": optax.set_to_zero()},
        {"params": "freeze", "inner_hyperparams": {"learning_rate": "learn"}},
    )
    step = mj.make_train_step(learner, freeze_params, sample_tasks=sample, meta_batch=16)
    step = jax.jit(mj.repeat_step(step, 150))
    state = mj.init_train_state(learner, {"w": jnp.zeros(())}, freeze_params, jax.random.key(1))
    state, metrics = step(state)
    lr = float(state.meta_params["inner_hyperparams"]["learning_rate"])
    assert 0.3 < lr < 0.7, lr
    assert float(state.meta_params["params"]["w"]) == 0.0
    assert float(metrics["query_loss"][-10:].mean()) < 0.3 * float(
        metrics["query_loss"][:10].mean()
    )


# --- truncated meta-gradients ----------------------------------------------------------


def test_truncation_only_the_last_k_steps_get_gradients():
    task = regression_task(jax.random.key(10))
    params = init_tanh(jax.random.key(11))
    steps, k = 4, 2
    learner = mj.maml(LOSS, 0.1, steps, learn_inner_lr=True, backprop_steps=k)
    meta = learner.init(params)
    grads = _grad(learner, meta, task)
    for rate_grad in jax.tree.leaves(grads["inner_lr"]):
        np.testing.assert_array_equal(rate_grad[: steps - k], 0.0)  # exactly zero
    assert all(float(jnp.abs(g[steps - k :]).min()) > 0 for g in jax.tree.leaves(grads["inner_lr"]))

    # The initialisation's gradient: the first steps count as the identity map.
    def by_hand(theta):
        head_start, _ = mj.maml(LOSS, 0.1, steps - k).adapt(
            jax.lax.stop_gradient(theta), task.support
        )
        start = jax.tree.map(lambda p, t: p + (t - jax.lax.stop_gradient(t)), head_start, theta)
        adapted, _ = mj.maml(LOSS, 0.1, k).adapt(start, task.support)
        return LOSS(adapted, task.query)[0]

    # Same rates as the learner's initial ones (all 0.1).
    chex.assert_trees_all_close(grads["params"], jax.jit(jax.grad(by_hand))(params), rtol=1e-5)
    assert (
        learner.loss(meta, task)[0]
        == mj.maml(LOSS, 0.1, steps, learn_inner_lr=True).loss(meta, task)[0]
    )  # the forward pass is unchanged, bit for bit


def test_truncation_keeps_frozen_parameters_differentiable():
    # ANIL: the body never adapts, so truncating the head's inner steps must leave the
    # body's gradient through the last steps intact.
    task = regression_task(jax.random.key(12))
    params = init_tanh(jax.random.key(13))
    grads = _grad(mj.anil(LOSS, 0.1, 3, backprop_steps=1), params, task)
    assert float(jnp.abs(ravel_pytree(grads["body"])[0]).max()) > 1e-4


def test_bad_options_raise_clear_errors():
    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    params = init_tanh(jax.random.key(0))
    with pytest.raises(ValueError, match="learn_inner_lr"):
        mj.maml(LOSS, learn_inner_lr=True, inner_optimizer=optax.sgd(0.1))
    with pytest.raises(ValueError, match="inject_hyperparams"):
        mj.maml(LOSS, learn_hyperparams=("learning_rate",))
    with pytest.raises(TypeError, match="inject_hyperparams"):
        mj.maml(LOSS, inner_optimizer=optax.sgd(0.1), learn_hyperparams=("learning_rate",)).init(
            params
        )
    with pytest.raises(ValueError, match="momentum"):
        mj.maml(LOSS, inner_optimizer=sgd, learn_hyperparams=("momentum",)).init(params)
    with pytest.raises(ValueError, match="multi_step_loss"):
        mj.maml(LOSS, 0.1, 3, multi_step_loss=jnp.ones(2))
    with pytest.raises(ValueError, match="first_order_steps"):
        mj.maml(LOSS, first_order_steps=-1)
