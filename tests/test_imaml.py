"""iMAML: implicit meta-gradients against closed forms and unrolling; memory vs steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import metajax as mj

from conftest import regression_task


def _linear(params, x):
    return x @ params["w"] + params["b"]


LOSS = mj.make_loss(_linear, mj.squared_error)


def _quadratic_setup():
    task = regression_task(jax.random.key(0), n_support=8, n_query=6, dtype=jnp.float64)
    params = {"w": jnp.array([[0.3], [-0.2], [0.5]]), "b": jnp.array([0.1])}
    return params, task


@jax.jit  # eager, every small op of the Hessian compiles apart (seconds)
def _closed_form(params, task, lam):
    """phi* and the exact meta-gradient lam (H + lam I)^-1 grad L_q(phi*) of a quadratic."""
    theta, unravel = ravel_pytree(params)
    ls = lambda f: LOSS(unravel(f), task.support)[0]
    lq = lambda f: LOSS(unravel(f), task.query)[0]
    h = jax.hessian(ls)(theta)
    b = jax.grad(ls)(jnp.zeros_like(theta))  # grad L_s(phi) = H phi + b
    eye = jnp.eye(theta.size)
    phi = jnp.linalg.solve(h + lam * eye, lam * theta - b)
    return phi, lam * jnp.linalg.solve(h + lam * eye, jax.grad(lq)(phi))


def test_implicit_gradient_equals_closed_form_and_unrolled_when_inner_problem_is_solved():
    with jax.enable_x64(True):
        params, task = _quadratic_setup()
        lam, steps = 2.0, 150  # lr 0.1, strongly convex: contraction <= 0.8 per step
        learner = mj.imaml(LOSS, inner_lr=0.1, inner_steps=steps, lam=lam, cg_steps=10)
        phi_star, expected = _closed_form(params, task, lam)

        adapted, _ = jax.jit(learner.adapt)(params, task.support)
        np.testing.assert_allclose(ravel_pytree(adapted)[0], phi_star, rtol=1e-10)

        implicit = jax.jit(jax.grad(lambda p: learner.loss(p, task)[0]))(params)
        np.testing.assert_allclose(ravel_pytree(implicit)[0], expected, rtol=1e-9, atol=1e-12)

        # Differentiating the same inner loop by unrolling all 150 steps (MAML on the
        # proximal objective) converges to the same gradient.
        def unrolled_loss(p):
            phi, _ = learner.adapt(p, task.support)
            return LOSS(phi, task.query)[0]

        unrolled = jax.jit(jax.grad(unrolled_loss))(params)
        np.testing.assert_allclose(ravel_pytree(unrolled)[0], expected, rtol=1e-9, atol=1e-12)


def test_damped_system_is_the_released_codes():
    """cg_damping / lam_damping solve ((1 + d) I + H / (lam + ld)) v = g exactly."""
    with jax.enable_x64(True):
        params, task = _quadratic_setup()
        lam, d, ld = 2.0, 1.0, 10.0
        learner = mj.imaml(
            LOSS, inner_lr=0.1, inner_steps=150, lam=lam, cg_steps=10, cg_damping=d, lam_damping=ld
        )
        phi_star, _ = _closed_form(params, task, lam)
        theta, unravel = ravel_pytree(params)

        @jax.jit
        def solve(phi):
            h = jax.hessian(lambda f: LOSS(unravel(f), task.support)[0])(phi)
            g = jax.grad(lambda f: LOSS(unravel(f), task.query)[0])(phi)
            return jnp.linalg.solve((1 + d) * jnp.eye(theta.size) + h / (lam + ld), g)

        expected = solve(phi_star)
        damped = jax.jit(jax.grad(lambda p: learner.loss(p, task)[0]))(params)
        np.testing.assert_allclose(ravel_pytree(damped)[0], expected, rtol=1e-8, atol=1e-12)


def test_large_lambda_tends_to_first_order_and_zero_cg_steps_is_first_order():
    with jax.enable_x64(True):
        params, task = _quadratic_setup()
        grad = lambda learner: ravel_pytree(
            jax.jit(jax.grad(lambda p: learner.loss(p, task)[0]))(params)
        )[0]
        lq = lambda phi: ravel_pytree(jax.grad(lambda p: LOSS(p, task.query)[0])(phi))[0]
        # cg_steps=0: v = g, the query gradient at the adapted parameters.
        learner = mj.imaml(LOSS, 0.1, 5, lam=2.0, cg_steps=0)
        adapted, _ = learner.adapt(params, task.support)
        np.testing.assert_allclose(grad(learner), lq(adapted), rtol=1e-12)
        # (I + H/lam)^-1 -> I as lam grows.
        stiff = mj.imaml(LOSS, 1e-5, 5, lam=1e4, cg_steps=10)
        adapted, _ = stiff.adapt(params, task.support)
        np.testing.assert_allclose(grad(stiff), lq(adapted), rtol=2e-3)


def _temp_bytes(learner, params, task) -> int:
    grad = jax.jit(jax.grad(lambda m: learner.loss(m, task)[0]))
    return grad.lower(params).compile().memory_analysis().temp_size_in_bytes


def test_memory_does_not_grow_with_inner_steps_while_unrolled_maml_does():
    # A model whose per-step activations dominate the compiled program's scratch memory.
    def apply(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"]

    keys = jax.random.split(jax.random.key(0), 4)
    params = {
        "w1": 0.3 * jax.random.normal(keys[0], (8, 64)),
        "w2": 0.1 * jax.random.normal(keys[1], (64, 1)),
    }
    x, y = jax.random.normal(keys[2], (64, 8)), jax.random.normal(keys[3], (64, 1))
    task = mj.Task(mj.Batch(x, y), mj.Batch(x, y))
    loss_fn = mj.make_loss(apply, mj.squared_error)
    few, many = 2, 16
    imaml = [_temp_bytes(mj.imaml(loss_fn, 0.1, k), params, task) for k in (few, many)]
    maml = [_temp_bytes(mj.maml(loss_fn, 0.1, k), params, task) for k in (few, many)]
    assert imaml[1] <= 1.05 * imaml[0], imaml  # flat (measured: equal)
    assert maml[1] >= 4 * maml[0], maml  # grows ~linearly (measured: ~6.5x for 8x steps)
    assert imaml[1] < maml[1] / 4


def test_eval_step_adapts_on_the_proximal_problem():
    learner = mj.imaml(LOSS, 0.1, 4, lam=1.0)
    params = {"w": jnp.zeros((3, 1)), "b": jnp.zeros((1,))}
    tasks = jax.vmap(regression_task)(jax.random.split(jax.random.key(3), 2))
    metrics = jax.jit(mj.make_eval_step(learner, inner_steps=6))(params, tasks)
    assert metrics["query_loss"].shape == (2, 7)
    assert bool(jnp.all(metrics["query_loss"][:, -1] < metrics["query_loss"][:, 0]))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="lam"):
        mj.imaml(LOSS, lam=0.0)
    with pytest.raises(ValueError, match="cg_steps"):
        mj.imaml(LOSS, cg_steps=-1)
    with pytest.raises(ValueError, match="inner_steps"):
        mj.imaml(LOSS, inner_steps=1.5)


def test_conjugate_gradient_under_vmap_with_leaves_batched_along_different_axes():
    # vmapping conv4 gradients over tasks batches kernel leaves along a later axis;
    # jax.scipy.sparse.linalg.cg fails there (jax 0.10.2), this solver must not.
    from metajax.algorithms.imaml import conjugate_gradient

    scale = {"a": 2.0 * jnp.ones((3,)), "c": jnp.arange(1.0, 5.0).reshape(2, 2)}
    solve = lambda b: conjugate_gradient(
        lambda v: jax.tree.map(lambda s, x: s * x, scale, v), b, steps=10
    )
    b = {"a": jnp.ones((2, 3)), "c": jnp.ones((2, 2, 2))}
    x = jax.jit(jax.vmap(solve, in_axes=({"a": 0, "c": 1},), out_axes={"a": 0, "c": 1}))(b)
    np.testing.assert_allclose(x["a"], 0.5 * b["a"], rtol=1e-6)
    np.testing.assert_allclose(x["c"], b["c"] / scale["c"][:, None, :], rtol=1e-6)


def test_conjugate_gradient_stop_on_negative_curvature_is_truncated_newton_cg():
    from metajax.algorithms.imaml import conjugate_gradient

    def solve(diag, b, rule):
        matvec = lambda v: {"x": diag * v["x"]}
        return conjugate_gradient(matvec, {"x": b}, steps=5, negative_curvature=rule)["x"]

    b = jnp.array([1.0, 1.0])
    # Positive definite: both rules are plain CG and solve the system.
    for rule in ("skip", "stop"):
        np.testing.assert_allclose(solve(jnp.array([2.0, 4.0]), b, rule), [0.5, 0.25], rtol=1e-6)
    # diag(2, -1): the first direction b has curvature 1 > 0, the step is 2 b; the
    # second direction (6, 12) has curvature -72, so "stop" returns 2 b there.
    indefinite = jnp.array([2.0, -1.0])
    np.testing.assert_allclose(solve(indefinite, b, "stop"), [2.0, 2.0], rtol=1e-6)
    # Negative definite: the first direction already fails; "stop" falls back to b,
    # "skip" never takes a step.
    np.testing.assert_allclose(solve(jnp.array([-1.0, -3.0]), b, "stop"), b)
    np.testing.assert_allclose(solve(jnp.array([-1.0, -3.0]), b, "skip"), [0.0, 0.0])
    with pytest.raises(ValueError, match="negative_curvature"):
        solve(indefinite, b, "flip")
    with pytest.raises(ValueError, match="cg_negative_curvature"):
        mj.imaml(LOSS, cg_negative_curvature="flip")


def _tanh_classifier(params, x):
    return jnp.tanh(x @ params["w1"]) @ params["w2"]


def _class_output_loss(logits, batch):
    return mj.weighted_mean(mj.softmax_cross_entropy(logits, batch.targets), batch.weights)


def _classification_setup(dtype=jnp.float64):
    keys = jax.random.split(jax.random.key(7), 5)
    params = {
        "w1": jax.random.normal(keys[0], (4, 6), dtype),
        "w2": jax.random.normal(keys[1], (6, 3), dtype),
    }
    x = jax.random.normal(keys[2], (9, 4), dtype)
    y = jax.random.randint(keys[3], (9,), 0, 3)
    weights = jnp.ones(9, dtype).at[-2:].set(0.0)  # two padded examples
    xq = jax.random.normal(keys[4], (6, 4), dtype)
    task = mj.Task(mj.Batch(x, y, weights), mj.Batch(xq, y[:6]))
    predict = lambda p, b: _tanh_classifier(p, b.inputs)
    return params, task, predict


def test_gauss_newton_curvature_is_j_transpose_h_out_j_and_positive_semidefinite():
    with jax.enable_x64(True):
        params, task, predict = _classification_setup()
        flat, unravel = ravel_pytree(params)
        matvec = mj.gauss_newton_curvature(predict, _class_output_loss)(params, task.support)

        @jax.jit
        def dense():
            logits = predict(params, task.support)
            jac = jax.jacobian(lambda f: predict(unravel(f), task.support).ravel())(flat)
            h_out = jax.hessian(
                lambda o: _class_output_loss(o.reshape(logits.shape), task.support)
            )(logits.ravel())
            g = jac.T @ h_out @ jac
            columns = jax.vmap(lambda e: ravel_pytree(matvec(unravel(e)))[0])(jnp.eye(flat.size))
            hessian = jax.hessian(
                lambda f: _class_output_loss(predict(unravel(f), task.support), task.support)
            )(flat)
            return g, columns.T, hessian

        g, columns, hessian = dense()
        np.testing.assert_allclose(columns, g, rtol=1e-10, atol=1e-12)
        assert np.linalg.eigvalsh(g).min() > -1e-12
        # The tanh model's own second derivatives make the Hessian differ (and here
        # indefinite): the Gauss-Newton matrix is not the Hessian in disguise.
        assert np.abs(hessian - g).max() > 1e-2
        assert np.linalg.eigvalsh(hessian).min() < 0


def test_gauss_newton_imaml_solves_its_system_and_equals_the_hessian_one_for_a_linear_model():
    with jax.enable_x64(True):
        # Nonlinear classifier: the gradient is (I + G/lam)^-1 g at the adapted phi.
        params, task, predict = _classification_setup()
        loss_fn = lambda p, b: _class_output_loss(predict(p, b), b)
        lam = 1.0
        curvature = mj.gauss_newton_curvature(predict, _class_output_loss)
        learner = mj.imaml(loss_fn, 0.2, 20, lam=lam, cg_steps=40, curvature=curvature)
        flat, unravel = ravel_pytree(params)

        @jax.jit
        def expected():
            phi, _ = learner.adapt(params, task.support)
            matvec = curvature(phi, task.support)
            g_mat = jax.vmap(lambda e: ravel_pytree(matvec(unravel(e)))[0])(jnp.eye(flat.size))
            g_q = ravel_pytree(jax.grad(lambda p: loss_fn(p, task.query))(phi))[0]
            return jnp.linalg.solve(jnp.eye(flat.size) + g_mat.T / lam, g_q)

        got = jax.jit(jax.grad(lambda p: learner.loss(p, task)[0]))(params)
        np.testing.assert_allclose(ravel_pytree(got)[0], expected(), rtol=1e-8, atol=1e-12)

        # Linear model, squared error: G = H, so both curvatures give the closed form.
        params, task = _quadratic_setup()
        gn = mj.imaml(
            LOSS,
            inner_lr=0.1,
            inner_steps=150,
            lam=2.0,
            cg_steps=10,
            curvature=mj.gauss_newton_curvature(
                lambda p, b: _linear(p, b.inputs),
                lambda out, b: mj.weighted_mean(mj.squared_error(out, b.targets), b.weights),
            ),
        )
        _, exact = _closed_form(params, task, 2.0)
        got = jax.jit(jax.grad(lambda p: gn.loss(p, task)[0]))(params)
        np.testing.assert_allclose(ravel_pytree(got)[0], exact, rtol=1e-9, atol=1e-12)
