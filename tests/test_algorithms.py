"""The shared suite every gradient-based algorithm passes (see STYLE.md, "Tests")."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import metajax as mj

from conftest import init_tanh, linear_apply, regression_task, tanh_apply, task_batch

INNER_LR = 0.1
IMAML_LAM = 5.0
NUM_CLASSES = 3  # protonet's classification tasks


def _protonet(loss_fn, apply=tanh_apply, **kw):
    # The model's outputs are the embedding; the regression loss is not used.
    del loss_fn, kw
    return mj.protonet(lambda p, batch: apply(p, batch.inputs), num_classes=NUM_CLASSES)


# name -> factory(loss_fn, **kwargs) for the shared suite. "maml++" runs every MAML++
# option at once: annealed multi-step loss, per-step learned inner learning rates and
# derivative-order annealing (first order at outer step 0 only, so a train step from
# a fresh state takes the first-order branch and `loss` without a step the second).
ALGORITHMS = {
    "maml": lambda loss_fn, **kw: mj.maml(loss_fn, INNER_LR, kw.pop("inner_steps", 1), **kw),
    "fomaml": lambda loss_fn, **kw: mj.fomaml(loss_fn, INNER_LR, kw.pop("inner_steps", 1), **kw),
    "anil": lambda loss_fn, **kw: mj.anil(loss_fn, INNER_LR, kw.pop("inner_steps", 1), **kw),
    "meta_sgd": lambda loss_fn, **kw: mj.meta_sgd(
        loss_fn, INNER_LR, kw.pop("inner_steps", 1), **kw
    ),
    "reptile": lambda loss_fn, **kw: mj.reptile(loss_fn, INNER_LR, kw.pop("inner_steps", 1), **kw),
    "maml++": lambda loss_fn, **kw: mj.maml_plus_plus(
        loss_fn,
        INNER_LR,
        kw.pop("inner_steps", 1),
        multi_step_epochs=2,
        steps_per_epoch=1,
        first_order_steps=1,
        **kw,
    ),
    "learned_sgd": lambda loss_fn, **kw: mj.learned_sgd(
        loss_fn, INNER_LR, kw.pop("inner_steps", 1), momentum=0.5, **kw
    ),
    "imaml": lambda loss_fn, **kw: mj.imaml(
        loss_fn, INNER_LR, kw.pop("inner_steps", 1), lam=IMAML_LAM, cg_steps=30, **kw
    ),
    "protonet": _protonet,
}
algorithm_names = pytest.mark.parametrize("name", sorted(ALGORITHMS))
# Algorithms whose inner loop is differentiated through (they take remat=).
UNROLLED = sorted(set(ALGORITHMS) - {"imaml", "protonet"})


def make(name, apply=tanh_apply, **kwargs):
    loss_fn = mj.make_loss(apply, mj.squared_error)
    if name == "protonet":
        return _protonet(loss_fn, apply=apply, **kwargs)
    return ALGORITHMS[name](loss_fn, **kwargs)


def meta_params_for(learner, seed=0, dtype=jnp.float32):
    return learner.init(init_tanh(jax.random.key(seed), dtype=dtype))


def classification_task(key, shots=2, queries=2, d_in=3, dtype=jnp.float32) -> mj.Task:
    """NUM_CLASSES Gaussian clusters; integer labels."""
    k_means, k_support, k_query = jax.random.split(key, 3)
    means = 2.0 * jax.random.normal(k_means, (NUM_CLASSES, d_in), dtype)

    def batch(k, per_class):
        labels = jnp.repeat(jnp.arange(NUM_CLASSES), per_class)
        x = means[labels] + jax.random.normal(k, (labels.size, d_in), dtype)
        return mj.Batch(x, labels, jnp.ones(labels.size, dtype))

    return mj.Task(batch(k_support, shots), batch(k_query, queries))


def task_for(name, key, dtype=jnp.float32) -> mj.Task:
    """The suite's task for ``name``: regression, or classification for protonet."""
    if name == "protonet":
        return classification_task(key, dtype=dtype)
    return regression_task(key, dtype=dtype)


def tasks_for(name, key, n_tasks) -> mj.Task:
    if name == "protonet":
        return jax.vmap(classification_task)(jax.random.split(key, n_tasks))
    return task_batch(key, n_tasks=n_tasks)


def meta_grad(learner, meta_params, task):
    return jax.grad(lambda m: learner.loss(m, task)[0])(meta_params)


def jit_meta_grad(learner):
    return jax.jit(functools.partial(meta_grad, learner))


# --- closed-form oracle -------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)  # eager, the Hessian's ops compile apart
def _linear_oracle(name, params, task, lr):
    """The one-step meta-gradient of a linear model, from its Hessian.

    theta' = theta - lr * P grad L_s(theta) with P the adapting coordinates
    (identity for MAML, the head for ANIL, diag(alpha) for Meta-SGD), so
    dL_q(theta')/dtheta = (I - lr H_s P)^T-style product below; first order keeps
    only grad L_q(theta'); Reptile's direction is theta - theta'. iMAML's is
    (I + H_s(phi)/lam)^-1 grad L_q(phi) at phi from one gradient step on the
    proximal problem (at phi = theta its gradient is grad L_s(theta)).
    """
    flat, unravel = ravel_pytree(params)
    ls = lambda f: mj.make_loss(linear_apply, mj.squared_error)(unravel(f), task.support)[0]
    lq = lambda f: mj.make_loss(linear_apply, mj.squared_error)(unravel(f), task.query)[0]
    g_s = jax.grad(ls)(flat)
    h_s = jax.hessian(ls)(flat)
    if name == "anil":
        p = ravel_pytree(
            {
                "body": jax.tree.map(jnp.zeros_like, params["body"]),
                "head": jax.tree.map(jnp.ones_like, params["head"]),
            }
        )[0]
    else:
        p = jnp.ones_like(flat)
    adapted = flat - lr * p * g_s
    g_q = jax.grad(lq)(adapted)
    # (maml++ with one inner step: multi-step weights [1], per-step rate = lr; learned_sgd:
    # the first momentum-SGD update is -lr * g.)
    if name in ("maml", "meta_sgd", "anil", "maml++", "learned_sgd"):
        return (jnp.eye(flat.size) - lr * h_s * p[None, :]) @ g_q
    if name == "fomaml":
        return g_q
    if name == "reptile":
        return flat - adapted
    if name == "imaml":
        h_phi = jax.hessian(ls)(adapted)  # constant for a linear model
        return jnp.linalg.solve(jnp.eye(flat.size) + h_phi / IMAML_LAM, g_q)
    raise ValueError(name)


def _protonet_reference_loss(params, task):
    """Prototypical-network query loss with explicit loops over classes (an oracle)."""
    embed = lambda x: linear_apply(params, x)  # [N, 1]
    s, q = task.support, task.query
    protos = [
        jnp.mean(embed(s.inputs)[np.asarray(s.targets) == k], axis=0) for k in range(NUM_CLASSES)
    ]
    total = 0.0
    for x, y in zip(q.inputs, np.asarray(q.targets)):
        f = embed(x[None])[0]
        logits = jnp.stack([-jnp.sum((f - c) ** 2) for c in protos])
        total = total - jax.nn.log_softmax(logits)[y]
    return total / q.inputs.shape[0]


@algorithm_names
def test_closed_form_oracle_linear_regression(name):
    with jax.enable_x64(True):
        key = jax.random.key(1)
        params = {
            "body": {"w": jax.random.normal(key, (3, 1), jnp.float64)},
            "head": {"b": jnp.array([0.3])},
        }
        task = task_for(name, jax.random.key(2), dtype=jnp.float64)
        learner = make(name, apply=linear_apply)
        meta = learner.init(params)
        got = jit_meta_grad(learner)(meta, task)
        if name == "protonet":
            # A linear embedding: the bias shifts every embedding and prototype alike,
            # so its gradient is exactly 0; the weight's is the reference loss's.
            expected = jax.grad(_protonet_reference_loss)(params, task)  # concrete labels
            np.testing.assert_allclose(got["head"]["b"], 0.0, atol=1e-12)
            np.testing.assert_allclose(got["body"]["w"], expected["body"]["w"], rtol=1e-9)
            loss, _ = learner.loss(meta, task)
            np.testing.assert_allclose(loss, _protonet_reference_loss(params, task), rtol=1e-12)
            return
        expected = _linear_oracle(name, params, task, INNER_LR)
        got_params = got["params"] if isinstance(got, dict) and "params" in got else got
        np.testing.assert_allclose(ravel_pytree(got_params)[0], expected, rtol=1e-9, atol=1e-12)
        flat, unravel = ravel_pytree(params)
        ls = lambda f: mj.make_loss(linear_apply, mj.squared_error)(unravel(f), task.support)[0]
        lq = lambda f: mj.make_loss(linear_apply, mj.squared_error)(unravel(f), task.query)[0]
        g_s = jax.jit(jax.grad(ls))(flat)
        g_q = jax.jit(jax.grad(lq))(flat - INNER_LR * g_s)
        if name == "meta_sgd":
            # d L_q / d alpha_i = -grad_s_i * g_q_i  (elementwise, one step)
            np.testing.assert_allclose(ravel_pytree(got["inner_lr"])[0], -g_s * g_q, rtol=1e-9)
        if name == "maml++":
            # One rate per leaf: d L_q / d alpha_leaf = -sum_leaf grad_s * g_q.
            per_entry = unravel(-g_s * g_q)
            for path in (("body", "w"), ("head", "b")):
                np.testing.assert_allclose(
                    got["inner_lr"][path[0]][path[1]],
                    [jnp.sum(per_entry[path[0]][path[1]])],
                    rtol=1e-9,
                )
        if name == "learned_sgd":
            hyper = got["inner_hyperparams"]
            np.testing.assert_allclose(hyper["learning_rate"], -jnp.dot(g_s, g_q), rtol=1e-9)
            np.testing.assert_allclose(hyper["momentum"], 0.0, atol=1e-12)  # one step


# FOMAML, Reptile (and truncation) deliberately report a direction that is not the
# derivative of their loss value, so finite differences apply to exact methods only;
# the closed-form oracle above covers the first-order ones. iMAML's implicit gradient
# is the derivative of its loss only once the inner problem is solved: 60 steps here
# (the proximal term makes it strongly convex, contraction <= 0.5 per step).
@pytest.mark.parametrize(
    "name", ["maml", "anil", "meta_sgd", "maml++", "learned_sgd", "imaml", "protonet"]
)
def test_check_grads_float64(name):
    with jax.enable_x64(True):
        learner = make(name, inner_steps=60 if name == "imaml" else 2)
        meta = meta_params_for(learner, dtype=jnp.float64)
        task = task_for(name, jax.random.key(3), dtype=jnp.float64)
        jax.test_util.check_grads(
            jax.jit(lambda m: learner.loss(m, task)[0]),
            (meta,),
            order=1,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
            # Central differences with step 1e-6: truncation error ~1e-12 x the third
            # derivative, which for a learned learning rate (losses polynomial in it)
            # is large enough to fail at the default 1e-4.
            eps=1e-6,
        )


@algorithm_names
def test_meta_grad_matches_meta_params_structure_and_dtype(name):
    learner = make(name)
    meta = meta_params_for(learner)
    grads = jit_meta_grad(learner)(meta, task_for(name, jax.random.key(4)))
    chex.assert_trees_all_equal_structs(grads, meta)
    chex.assert_trees_all_equal_dtypes(grads, meta)
    chex.assert_trees_all_equal_shapes(grads, meta)
    chex.assert_tree_all_finite(grads)


@algorithm_names
def test_jit_equals_no_jit_and_no_recompile(name):
    learner = make(name)
    meta = meta_params_for(learner)
    traces = {"n": 0}

    def loss(m, task):
        traces["n"] += 1
        return jax.value_and_grad(lambda m: learner.loss(m, task)[0])(m)

    jitted = jax.jit(loss)
    t1, t2 = task_for(name, jax.random.key(5)), task_for(name, jax.random.key(6))
    eager = loss(meta, t1)
    traces["n"] = 0
    chex.assert_trees_all_close(jitted(meta, t1), eager, rtol=1e-5, atol=1e-6)
    jitted(meta, t2)
    assert traces["n"] == 1, "a second call with same-shaped inputs must not retrace"


@algorithm_names
def test_vmap_over_tasks_equals_python_loop(name):
    learner = make(name)
    meta = meta_params_for(learner)
    tasks = tasks_for(name, jax.random.key(7), n_tasks=4)
    vmapped = jax.jit(jax.vmap(lambda t: meta_grad(learner, meta, t)))(tasks)
    grad_fn = jit_meta_grad(learner)
    for i in range(4):
        task = jax.tree.map(lambda x, i=i: x[i], tasks)
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], vmapped), grad_fn(meta, task), rtol=1e-5, atol=1e-6
        )


def _with_garbage_example(batch: mj.Batch) -> mj.Batch:
    """Appends an example with weight 0 and wild values (NaN targets, or NaN inputs
    with a valid label for classification)."""
    if jnp.issubdtype(batch.targets.dtype, jnp.integer):
        x = jnp.concatenate([batch.inputs, jnp.full((1, batch.inputs.shape[1]), jnp.nan)])
        y = jnp.concatenate([batch.targets, jnp.zeros((1,), batch.targets.dtype)])
        w = jnp.concatenate([batch.weights, jnp.zeros((1,))])
        return mj.Batch(x, y, w)
    x = jnp.concatenate([batch.inputs, jnp.full((1, batch.inputs.shape[1]), 1e3)])
    y = jnp.concatenate([batch.targets, jnp.full((1, 1), jnp.nan)])
    w = jnp.concatenate([batch.weights, jnp.zeros((1,))])
    return mj.Batch(x, y, w)


@algorithm_names
def test_masked_out_examples_change_nothing(name):
    learner = make(name)
    meta = meta_params_for(learner)
    task = task_for(name, jax.random.key(8))
    padded = mj.Task(_with_garbage_example(task.support), _with_garbage_example(task.query))
    loss_fn, grad_fn = jax.jit(learner.loss), jit_meta_grad(learner)
    chex.assert_trees_all_close(loss_fn(meta, padded), loss_fn(meta, task), rtol=1e-6)
    chex.assert_trees_all_close(grad_fn(meta, padded), grad_fn(meta, task), rtol=1e-5, atol=1e-7)


@algorithm_names
def test_all_zero_weight_task_is_finite(name):
    learner = make(name)
    meta = meta_params_for(learner)
    task = task_for(name, jax.random.key(9))
    zero = jax.tree.map(lambda b: b, task)
    zero = mj.Task(
        task.support.replace(weights=jnp.zeros_like(task.support.weights)),
        task.query.replace(weights=jnp.zeros_like(task.query.weights)),
    )
    loss, _ = jax.jit(learner.loss)(meta, zero)
    grads = jit_meta_grad(learner)(meta, zero)
    assert np.isfinite(loss)
    chex.assert_tree_all_finite(grads)


@algorithm_names
def test_same_key_gives_bitwise_identical_train_steps(name):
    learner = make(name)
    sampler = lambda key: task_for(name, key)
    step = jax.jit(
        mj.make_train_step(learner, optax.adam(1e-2), sample_tasks=sampler, meta_batch=4)
    )
    state = mj.init_train_state(
        learner, init_tanh(jax.random.key(0)), optax.adam(1e-2), jax.random.key(42)
    )
    out1 = step(state)
    out2 = step(state)
    chex.assert_trees_all_equal(
        jax.tree.map(np.asarray, out1[0].meta_params), jax.tree.map(np.asarray, out2[0].meta_params)
    )
    chex.assert_trees_all_equal(out1[1], out2[1])


@pytest.mark.parametrize("option,seed", [("remat", 10), ("unroll", 11)])
@pytest.mark.parametrize("name", UNROLLED)
def test_remat_and_unroll_leave_the_meta_gradient_unchanged(name, option, seed):
    # remat=True recomputes each inner step in the backward pass; unroll=True runs the
    # inner steps as straight-line code instead of a scan. The same function.
    task = regression_task(jax.random.key(seed))
    plain = make(name, inner_steps=3)
    variant = make(name, inner_steps=3, **{option: True})
    meta = meta_params_for(plain)
    chex.assert_trees_all_close(
        jax.jit(functools.partial(meta_grad, variant))(meta, task),
        jax.jit(functools.partial(meta_grad, plain))(meta, task),
        rtol=1e-5,
        atol=1e-7,
    )


def test_unroll_must_be_a_positive_int_or_bool():
    learner = mj.maml(mj.make_loss(tanh_apply, mj.squared_error), INNER_LR, 2, unroll=0)
    with pytest.raises(ValueError, match="unroll must be a positive int"):
        learner.loss(init_tanh(jax.random.key(0)), regression_task(jax.random.key(1)))


def test_adam_inner_loop_second_order_is_finite_even_at_zero_gradients():
    # relu(-u)**2 at u > 0 has an exactly-zero gradient that still depends on u (a dead
    # ReLU): Adam's second moment is 0 there and d sqrt(v)/dv is infinite.
    def loss_fn(params, batch):
        base = mj.make_loss(tanh_apply, mj.squared_error)(params["net"], batch)[0]
        return base + jnp.sum(jax.nn.relu(-params["u"]) ** 2)

    params = {"net": init_tanh(jax.random.key(0)), "u": jnp.ones((3,))}
    task = regression_task(jax.random.key(1))
    for inner_optimizer in (optax.adam(1e-2), mj.inner.adam(1e-2)):
        learner = mj.maml(loss_fn, inner_steps=3, inner_optimizer=inner_optimizer)
        grads = jax.jit(functools.partial(meta_grad, learner))(params, task)
        chex.assert_tree_all_finite(grads)
        assert float(jnp.abs(ravel_pytree(grads["net"])[0]).max()) > 0


def test_first_order_and_second_order_differ_and_fo_ignores_hessian():
    task = regression_task(jax.random.key(11))
    so, fo = make("maml"), make("fomaml")
    meta = meta_params_for(so)
    diff = (
        ravel_pytree(jit_meta_grad(so)(meta, task))[0]
        - ravel_pytree(jit_meta_grad(fo)(meta, task))[0]
    )
    assert float(jnp.abs(diff).max()) > 1e-4


def test_anil_leaves_body_unadapted():
    learner = make("anil", inner_steps=2)
    meta = meta_params_for(learner)
    adapted, result = jax.jit(learner.adapt)(meta, regression_task(jax.random.key(12)).support)
    chex.assert_trees_all_equal(adapted["body"], meta["body"])
    assert not np.allclose(adapted["head"]["v"], meta["head"]["v"])
    assert result.support_losses.shape == (2,)


def test_truncated_backprop_matches_first_order_at_zero_and_maml_at_full():
    task = regression_task(jax.random.key(13))
    full = make("maml", inner_steps=3)
    trunc_all = make("maml", inner_steps=3, backprop_steps=3)
    meta = meta_params_for(full)
    chex.assert_trees_all_close(
        jit_meta_grad(trunc_all)(meta, task), jit_meta_grad(full)(meta, task), rtol=1e-6
    )
    # 0 differentiated steps: every step counts as the identity in the backward pass,
    # which is first-order MAML's gradient grad L_q(theta').
    trunc_none = make("maml", inner_steps=3, backprop_steps=0)
    chex.assert_trees_all_close(
        jit_meta_grad(trunc_none)(meta, task),
        jit_meta_grad(make("fomaml", inner_steps=3))(meta, task),
        rtol=1e-6,
        atol=1e-7,
    )


def test_inner_steps_zero_is_plain_loss():
    learner = make("maml", inner_steps=0)
    meta = meta_params_for(learner)
    task = regression_task(jax.random.key(14))
    loss, _ = learner.loss(meta, task)
    expected, _ = mj.make_loss(tanh_apply, mj.squared_error)(meta, task.query)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
    learner = make("maml")
    meta = meta_params_for(learner)
    task = regression_task(jax.random.key(15))
    with pytest.raises(TypeError, match="Task"):
        learner.loss(meta, (task.support, task.query))
    bad = mj.Task(task.support.replace(weights=jnp.ones(2)), task.query)
    with pytest.raises(ValueError, match="support.weights"):
        learner.loss(meta, bad)
    with pytest.raises(ValueError, match="adapt mask|matches no parameter"):
        mj.anil(mj.make_loss(tanh_apply, mj.squared_error), head="nope").loss(meta, task)
    with pytest.raises(ValueError, match="inner_steps"):
        mj.maml(lambda p, b: 0.0, inner_steps=-1)
