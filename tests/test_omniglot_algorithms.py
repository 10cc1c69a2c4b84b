"""The Omniglot recipe's learners for maml++, imaml, protonet, learned-sgd and
truncated meta-gradients, on synthetic images.

One meta-step and one evaluation call of each, through the recipe's own
``initial_state``/``build_learner`` (conv4 with 4 channels; no data set needed).
The CLI runs on the real data are smoke-tested by hand (see the README).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.recipes import omniglot


# conv4's second-order (maml++) and Hessian-vector-product (imaml) programs take about a
# minute of CPU to compile: slow (run with -m slow); protonet runs by default.
@pytest.mark.parametrize(
    "algorithm, options",
    [
        pytest.param("maml++", {}, marks=pytest.mark.slow),
        pytest.param("imaml", {}, marks=pytest.mark.slow),
        pytest.param("imaml", {"imaml_curvature": "gauss-newton"}, marks=pytest.mark.slow),
        pytest.param("imaml", {"imaml_cg_negative_curvature": "stop"}, marks=pytest.mark.slow),
        # (The protonet recipe trains and evaluates in test_omniglot_recipe too.)
        pytest.param("protonet", {}, marks=pytest.mark.slow),
    ],
)
def test_recipe_learner_trains_and_evaluates(algorithm, options):
    cfg = omniglot.OmniglotTrain(
        algorithm=algorithm,
        **options,
        channels=4,
        meta_batch=2,
        inner_steps=2,
        eval_inner_steps=1,
        steps=10,
    ).resolved()
    images = jax.random.randint(jax.random.key(0), (8, 20, 28, 28), 0, 256).astype(jnp.uint8)
    learner = omniglot.build_learner(cfg)
    state, outer = omniglot.initial_state(cfg)
    step = omniglot.make_step(cfg, learner, outer)
    new_state, metrics = jax.jit(step)(state, images)
    assert int(new_state.step) == 1
    for name, value in metrics.items():
        assert np.all(np.isfinite(value)), name
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), state.meta_params, new_state.meta_params
    )
    assert any(jax.tree.leaves(changed))
    run = omniglot.make_episode_eval(
        learner, ways=cfg.ways, shots=cfg.shots, queries=cfg.queries, inner_steps=1
    )
    acc = run(new_state.meta_params, jax.random.split(jax.random.key(1), 2), images)
    assert acc.shape == (2, 2) and np.all((acc >= 0) & (acc <= 1))


def test_maml_plus_plus_has_per_step_batch_norm_weights_and_old_runs_resume_without():
    from metajax.models import conv4

    cfg = omniglot.OmniglotTrain(algorithm="maml++", channels=4, inner_steps=2).resolved()
    assert cfg.per_step_bn
    meta = omniglot.initial_state(cfg)[0].meta_params["params"]
    assert meta["bn0"]["scale"].shape == (3, 4) and meta["conv0"]["w"].shape == (3, 3, 1, 4)
    mask = conv4.batch_norm_mask(conv4.init(jax.random.key(0), ways=5, channels=4))
    assert mask["bn3"] == {"scale": True, "bias": True} and not mask["head"]["w"]
    assert not omniglot.OmniglotTrain(algorithm="maml").resolved().per_step_bn
    with pytest.raises(ValueError, match="per-step-bn is for maml"):
        omniglot.build_learner(omniglot.OmniglotTrain(algorithm="anil", per_step_bn=True))


def test_reptile_outer_step_is_the_papers_interpolation_by_default():
    cfg = omniglot.OmniglotTrain(algorithm="reptile", channels=4, steps=100).resolved()
    assert (cfg.outer_optimizer, cfg.outer_lr, cfg.inner_steps) == ("sgd", 1.0, 5)
    state, outer = omniglot.initial_state(cfg)
    theta = {"w": jnp.array([1.0, 2.0])}
    phi = {"w": jnp.array([3.0, -2.0])}
    # The gradient of Reptile's surrogate is theta - phi; at step 0, eps = 1.
    updates, _ = outer.update(jax.tree.map(jnp.subtract, theta, phi), outer.init(theta), theta)
    np.testing.assert_allclose(theta["w"] + updates["w"], phi["w"])
    assert omniglot.OmniglotTrain(algorithm="maml").resolved().outer_optimizer == "adam"


def test_learned_sgd_and_truncated_meta_gradients_are_recipe_options():
    import metajax as mj

    cfg = omniglot.OmniglotTrain(algorithm="learned-sgd", channels=2, inner_momentum=0.3)
    cfg = cfg.resolved()
    assert (cfg.inner_lr, cfg.inner_steps, cfg.eval_inner_steps) == (0.1, 5, 5)
    meta = omniglot.initial_state(cfg)[0].meta_params
    hyper = jax.tree.map(float, meta["inner_hyperparams"])
    assert hyper == pytest.approx({"learning_rate": 0.1, "momentum": 0.3})

    # --backprop-steps reaches maml's backprop_steps: the recipe's truncated learner has
    # the library's truncated meta-gradient, which differs from the full one.
    base = dict(algorithm="maml", channels=2, inner_steps=2, inner_lr=0.1, conv="im2col")
    truncated = omniglot.build_learner(omniglot.OmniglotTrain(**base, backprop_steps=1))
    full = omniglot.build_learner(omniglot.OmniglotTrain(**base))
    loss_fn = omniglot.classifier_loss("im2col")
    library = mj.maml(loss_fn, 0.1, 2, backprop_steps=1)
    params = omniglot.initial_state(omniglot.OmniglotTrain(**base))[0].meta_params
    images = jax.random.uniform(jax.random.key(0), (5, 2, 28, 28, 1))
    labels = jnp.arange(5)
    batch = mj.Batch(images[:, 0], labels, jnp.ones(5))
    task = mj.Task(support=batch, query=mj.Batch(images[:, 1], labels, jnp.ones(5)))

    @jax.jit
    def grads(params):
        return [
            jax.grad(lambda p, learner=learner: learner.loss(p, task)[0])(params)
            for learner in (truncated, library, full)
        ]

    g_truncated, g_library, g_full = grads(params)
    chex.assert_trees_all_close(g_truncated, g_library, rtol=1e-5, atol=1e-7)
    gap = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), g_truncated, g_full)
    assert max(jax.tree.leaves(gap)) > 1e-4

    with pytest.raises(ValueError, match="backprop-steps is for"):
        omniglot.build_learner(omniglot.OmniglotTrain(algorithm="imaml", backprop_steps=1))
    with pytest.raises(ValueError, match="inner-momentum is for --algorithm learned-sgd"):
        omniglot.build_learner(omniglot.OmniglotTrain(algorithm="maml", inner_momentum=0.9))
    with pytest.raises(ValueError, match="between 0 and --inner-steps"):
        omniglot.build_learner(omniglot.OmniglotTrain(**{**base, "backprop_steps": 3}))
