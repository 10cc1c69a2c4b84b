"""TRPO's trust-region step (metajax.trust_region) and MAML-RL's TRPO objectives."""

from __future__ import annotations

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import rl, trust_region
from metajax.recipes import nav2d


def quadratic_problem(dim=4, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    fisher = jnp.asarray(a @ a.T + dim * np.eye(dim), jnp.float32)
    g = jnp.asarray(rng.normal(size=dim), jnp.float32)
    theta0 = {"w": jnp.asarray(rng.normal(size=dim), jnp.float32)}

    def kl(p):
        d = p["w"] - theta0["w"]
        return 0.5 * d @ fisher @ d

    return fisher, g, theta0, kl


def test_conjugate_gradient_solves_spd_system():
    fisher, g, _, _ = quadratic_problem(dim=6)
    x = trust_region.conjugate_gradient(lambda v: fisher @ v, g, iters=6)
    np.testing.assert_allclose(fisher @ x, g, rtol=1e-4, atol=1e-4)


def test_step_is_natural_gradient_on_the_kl_boundary():
    # Linear loss and quadratic KL: the step points along -F^{-1} g, and the full
    # step's KL is max_kl (float32 rounding may put it just outside the region, and
    # then the first shrink, 0.8, is taken).
    fisher, g, theta0, kl = quadratic_problem()
    new, info = trust_region.trust_region_update(
        lambda p: g @ p["w"], kl, theta0, max_kl=0.02, cg_iters=4, cg_damping=0.0
    )
    step = new["w"] - theta0["w"]
    natural = -np.linalg.solve(np.asarray(fisher), np.asarray(g))
    cosine = step @ natural / (jnp.linalg.norm(step) * np.linalg.norm(natural))
    assert float(cosine) > 1 - 1e-5
    assert float(info.accepted) == 1.0 and float(info.backtracks) in (0.0, 1.0)
    shrink = 0.8 ** float(info.backtracks)
    np.testing.assert_allclose(float(kl(new)), 0.02 * shrink**2, rtol=1e-4)
    np.testing.assert_allclose(float(info.kl), float(kl(new)), rtol=1e-5)
    assert float(info.loss_after) < float(info.loss_before)


def test_line_search_backtracks_into_a_tighter_kl():
    # The KL used by the line search is 4x the quadratic model CG sees beyond a small
    # radius, so the full step violates it and the search must shrink it.
    fisher, g, theta0, kl = quadratic_problem()
    max_kl = 0.02

    def tight_kl(p):
        return kl(p) * jnp.where(kl(p) > 0.5 * max_kl, 4.0, 1.0)

    new, info = trust_region.trust_region_update(
        lambda p: g @ p["w"], tight_kl, theta0, max_kl=max_kl, cg_iters=4
    )
    assert float(info.accepted) == 1.0 and float(info.backtracks) >= 1
    assert float(tight_kl(new)) <= max_kl
    # The accepted candidate is the first shrink of the full step that fits: 0.8^k.
    full = float(jnp.sqrt(kl(new) / 0.02)) / 0.8 ** float(info.backtracks)
    np.testing.assert_allclose(full, 1.0, rtol=1e-3)


def test_rejected_step_leaves_parameters_unchanged():
    # A loss that grows along every direction from theta0 cannot be improved.
    _, _, theta0, kl = quadratic_problem()
    loss = lambda p: jnp.sum(jnp.square(p["w"] - theta0["w"])) + 1e-3 * jnp.sum(p["w"])  # noqa: E731
    new, info = trust_region.trust_region_update(loss, kl, theta0, max_kl=10.0, max_backtracks=3)
    np.testing.assert_array_equal(new["w"], theta0["w"])
    assert float(info.accepted) == 0.0 and float(info.step_norm) == 0.0
    assert float(info.backtracks) == 3.0


def test_bad_arguments_are_named():
    _, g, theta0, kl = quadratic_problem()
    with pytest.raises(ValueError, match="max_kl"):
        trust_region.trust_region_update(lambda p: g @ p["w"], kl, theta0, max_kl=0.0)
    with pytest.raises(ValueError, match="backtrack_ratio"):
        trust_region.trust_region_update(lambda p: g @ p["w"], kl, theta0, backtrack_ratio=1.5)


@pytest.mark.parametrize("action", ["gaussian", "categorical"])
def test_policy_kl_is_closed_form(action):
    key = jax.random.key(0)
    obs = jax.random.normal(jax.random.key(1), (5, 3))
    if action == "gaussian":
        policy = rl.gaussian_mlp_policy(3, 2, (8,), action_scale=0.1)
    else:
        policy = rl.categorical_mlp_policy(3, 4, (8,))
    old = policy.init(key)
    new = jax.tree.map(lambda x: x + 0.1, old)
    np.testing.assert_allclose(policy.kl(old, old, obs), 0.0, atol=1e-6)
    # Monte Carlo: E_old[log pi_old - log pi_new] over many sampled actions.
    keys = jax.random.split(jax.random.key(2), 20000)
    o = obs[0]
    actions = jax.vmap(lambda k: policy.sample(old, o, k))(keys)
    many = jnp.broadcast_to(o, (len(keys), 3))
    mc = jnp.mean(policy.log_prob(old, many, actions) - policy.log_prob(new, many, actions))
    np.testing.assert_allclose(float(policy.kl(old, new, o)), float(mc), rtol=0.05, atol=2e-3)


@pytest.fixture(scope="module")
def tiny_nav2d():
    cfg = nav2d.Nav2DTrain(
        meta_batch=3, num_trajectories=4, horizon=12, hidden=(16,), outer_optimizer="trpo"
    )
    _, _, learner = nav2d.build(cfg)
    state, _ = nav2d.initial_state(cfg)
    sampler = rl.rl_task_sampler(nav2d.ENVS["nav2d"].make()[1])
    return cfg, learner, state, sampler


@pytest.mark.parametrize("inner_steps, sampler", [(1, "episodes"), (2, "episodes"), (1, "steps")])
def test_maml_rl_trust_region_objectives_match_the_reinforce_meta_gradient(
    tiny_nav2d, inner_steps, sampler
):
    # With two inner steps the replay runs the second on the stored episodes of the
    # once-adapted policy: still exactly the sampled adaptation at theta. With the
    # step-budget sampler the stored batches are streams of back-to-back episodes.
    cfg, learner, state, sampler_fn = tiny_nav2d
    if (inner_steps, sampler) != (cfg.inner_steps, cfg.sampler):
        changed = dataclasses.replace(
            cfg, inner_steps=inner_steps, sampler=sampler, envs_per_task=2
        )
        _, _, learner = nav2d.build(changed)
    tasks = jax.vmap(sampler_fn)(jax.random.split(jax.random.key(1), 3))
    theta = state.meta_params
    objectives = learner.trust_region

    @jax.jit  # one program (eager, every primitive of the rollouts is compiled apart)
    def check(p):
        reference = jax.grad(lambda p: jnp.mean(jax.vmap(lambda t: learner.loss(p, t)[0])(tasks)))
        data, _ = jax.vmap(objectives.collect, in_axes=(None, 0))(p, tasks)

        def mean(fn):
            return lambda p: jnp.mean(jax.vmap(fn, in_axes=(None, 0))(p, data))

        kl_grad = optax.tree.norm(jax.grad(mean(objectives.kl))(p))
        return jax.grad(mean(objectives.loss))(p), reference(p), mean(objectives.kl)(p), kl_grad

    grad, reference, kl, kl_grad = check(theta)
    chex.assert_trees_all_close(grad, reference, rtol=1e-4, atol=1e-6)
    # The KL is 0 with zero gradient at the sampling parameters.
    assert abs(float(kl)) < 1e-6
    assert float(kl_grad) < 1e-5


def test_trpo_train_step_stays_in_the_trust_region_and_resumes_exactly(tiny_nav2d):
    cfg, learner, state, sampler = tiny_nav2d
    step = jax.jit(rl.make_trust_region_step(learner, sample_tasks=sampler, meta_batch=3))
    s1, m1 = step(state)
    assert float(m1["accepted"]) == 1.0
    assert 0.0 < float(m1["kl"]) <= cfg.max_kl
    assert float(m1["surrogate_after"]) < float(m1["meta_loss"])
    # Deterministic: the same state gives the same step.
    s1b, _ = step(state)
    chex.assert_trees_all_equal(s1.meta_params, s1b.meta_params)
    assert int(s1.step) == 1


def test_nav2d_recipe_trains_with_trpo_and_resumes(tmp_path):
    tiny = dict(
        steps=2,
        meta_batch=2,
        num_trajectories=3,
        horizon=5,
        hidden=(4,),
        progress=False,
        outer_optimizer="trpo",
        checkpoint_every=1,
        log_every=1,
        keep_best="return_post",
    )
    workdir = str(tmp_path / "trpo")
    final = nav2d.train(nav2d.Nav2DTrain(workdir=workdir, **tiny))
    cfg, restored = nav2d.load_run(workdir)
    assert cfg.outer_optimizer == "trpo" and int(restored.step) == 2
    chex.assert_trees_all_equal(restored.meta_params, final.meta_params)
    rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["kl"] <= cfg.max_kl for r in rows)
    # the iterate with the best training return is kept as a run directory of its own
    best_cfg, best = nav2d.load_run(f"{workdir}/best")
    assert best_cfg == cfg
    assert int(best.step) == max(rows, key=lambda r: r["return_post"])["step"]
    nav2d.plot_training((f"{workdir}/best",), str(tmp_path / "training.png"))  # its run's curve
    assert (tmp_path / "training.png").stat().st_size > 5_000
