"""Meta-RL: environment, rollouts, baselines, policy-gradient estimators, MAML-RL smoke."""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import rl
from metajax.envs import Nav2D, Nav2DParams, sample_nav2d_params
from metajax.train import init_train_state, jit_train_step, make_train_step


def constant_policy(action):
    """A policy that always takes ``action`` (log-prob 0)."""
    action = jnp.asarray(action, jnp.float32)
    return rl.Policy(
        init=lambda key: {},
        sample=lambda params, obs, key: action,
        log_prob=lambda params, obs, a: jnp.zeros(jnp.shape(a)[:-1]),
        mean=lambda params, obs: action,
    )


# ------------------------------------------------------------------ environment


def test_nav2d_dynamics_reward_and_clipping():
    env = Nav2D()
    params = Nav2DParams(goal=jnp.array([0.3, -0.4]))
    obs, state = env.reset(jax.random.key(0), params)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    obs, state, reward, done, _ = env.step(
        jax.random.key(1), state, jnp.array([0.05, -0.7]), params
    )
    np.testing.assert_allclose(obs, [0.05, -0.1], atol=1e-7)  # y clipped to -0.1
    np.testing.assert_allclose(reward, -math.hypot(0.25, 0.3), rtol=1e-6)
    assert not bool(done) and int(state.time) == 1


def test_nav2d_terminates_at_goal_and_time_limit():
    env = Nav2D()
    params = Nav2DParams(goal=jnp.array([0.1, 0.005]))
    _, state = env.reset(jax.random.key(0), params)
    _, _, reward, done, info = env.step(jax.random.key(1), state, jnp.array([0.1, 0.0]), params)
    assert bool(done) and bool(info["reached"])
    np.testing.assert_allclose(reward, -0.005, rtol=1e-5)
    # Not within 0.01 in y: keeps going until the time limit.
    far = Nav2DParams(goal=jnp.array([0.1, 0.02]), max_steps_in_episode=3)
    _, state = env.reset(jax.random.key(0), far)
    dones = []
    for _ in range(3):
        _, state, _, done, info = env.step(jax.random.key(1), state, jnp.zeros(2), far)
        dones.append(bool(done))
        assert not bool(info["reached"])
    assert dones == [False, False, True]


def test_task_distribution_in_unit_square():
    goals = jax.vmap(sample_nav2d_params)(jax.random.split(jax.random.key(0), 1000)).goal
    assert goals.shape == (1000, 2)
    assert float(goals.min()) >= -0.5 and float(goals.max()) <= 0.5
    assert float(goals.min()) < -0.45 and float(goals.max()) > 0.45


# ------------------------------------------------------------------ rollouts


def test_rollout_masks_zero_after_done():
    env = Nav2D()
    params = Nav2DParams(goal=jnp.array([0.3, 0.0]))
    traj = rl.rollout(env, constant_policy([0.1, 0.0]), {}, params, jax.random.key(0), horizon=6)
    # Reaches x = 0.3 at the third step (index 2).
    np.testing.assert_array_equal(traj.masks, [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(traj.dones, [0, 0, 1, 0, 0, 0])
    np.testing.assert_allclose(traj.rewards, [-0.2, -0.1, 0.0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(traj.observations[:3, 0], [0.0, 0.1, 0.2], atol=1e-6)


def test_discounted_returns_and_masks():
    rewards = jnp.array([1.0, 2.0, 3.0, 100.0])
    masks = jnp.array([1.0, 1.0, 1.0, 0.0])
    returns = rl.discounted_returns(rewards, masks, 0.5)
    np.testing.assert_allclose(returns, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3, 0])


def test_linear_baseline_fits_linear_returns_and_ignores_masked_steps():
    obs = jax.random.normal(jax.random.key(0), (3, 5, 2)) * 0.3
    features = rl.baseline_features(obs)
    assert features.shape == (3, 5, 8)
    true_w = jnp.arange(8, dtype=jnp.float32) / 8
    returns = features @ true_w
    masks = jnp.ones((3, 5)).at[:, 4].set(0.0)
    returns = returns.at[:, 4].set(1e3)  # garbage at masked steps must not matter
    fitted = rl.linear_feature_baseline(obs, returns, masks)
    np.testing.assert_allclose(fitted[:, :4], returns[:, :4], atol=2e-3)


@pytest.mark.parametrize(
    "rows,cols,condition", [(40, 8, 1.0), (2016, 16, 1.0), (300, 12, 1e3), (6, 6, 10.0)]
)
def test_householder_lstsq_matches_float64_lstsq(rows, cols, condition):
    rng = np.random.default_rng(rows + cols)
    u, _ = np.linalg.qr(rng.normal(size=(rows, cols)))
    v, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
    a = (u * np.geomspace(1.0, 1.0 / condition, cols)) @ v.T
    b = rng.normal(size=rows)
    expected = np.linalg.lstsq(a, b, rcond=None)[0]
    got = jax.jit(rl.householder_lstsq)(a.astype(np.float32), b.astype(np.float32))
    np.testing.assert_allclose(got, expected, atol=2e-6 * condition * np.abs(expected).max())


def test_householder_lstsq_keeps_float64_under_x64():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=50)
    expected = np.linalg.lstsq(a, b, rcond=None)[0]
    with jax.enable_x64(True):
        got = jax.jit(rl.householder_lstsq)(a, b)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    # integer inputs are solved in floating point, not truncated
    halves = rl.householder_lstsq(2 * np.eye(3, dtype=np.int32), np.arange(3, dtype=np.int32))
    np.testing.assert_allclose(halves, [0.0, 0.5, 1.0], atol=1e-6)
    assert rl.householder_lstsq(a.astype(np.float32), b.astype(np.float32)).dtype == jnp.float32


def test_householder_lstsq_rejects_wide_systems():
    with pytest.raises(ValueError, match="at least as many rows"):
        rl.householder_lstsq(jnp.ones((3, 4)), jnp.ones(3))


def test_linear_baseline_is_the_ridge_solution_and_calls_no_lapack():
    # rllab solves the ridge normal equations in float64; the float32 fit agrees.
    obs = jax.random.normal(jax.random.key(0), (20, 100, 6)) * 0.3
    returns = jax.random.normal(jax.random.key(1), (20, 100)) + jnp.arange(100) / 10.0
    masks = jnp.ones((20, 100)).at[::3, 60:].set(0.0)
    f = np.asarray(rl.baseline_features(obs), np.float64).reshape(-1, 16)
    m = np.asarray(masks, np.float64).reshape(-1, 1)
    g = np.asarray(returns, np.float64).reshape(-1)
    w = np.linalg.solve((f * m).T @ f + 1e-5 * np.eye(16), (f * m).T @ g)
    fitted = rl.linear_feature_baseline(obs, returns, masks)
    np.testing.assert_allclose(np.asarray(fitted).reshape(-1), f @ w, atol=1e-4)
    # Batched over tasks, a LAPACK custom call (jnp.linalg.lstsq's SVD) can deadlock
    # XLA:CPU's intra-op pool (householder_lstsq's docstring); the program has none.
    batched = jax.jit(jax.vmap(rl.linear_feature_baseline))
    program = batched.lower(*(jnp.stack([x] * 4) for x in (obs, returns, masks))).as_text()
    assert "custom_call" not in program
    # another solver can be given (here LAPACK's, unbatched): the same fit
    lapack = rl.linear_feature_baseline(
        obs, returns, masks, solve=lambda a, b: jnp.linalg.lstsq(a, b)[0]
    )
    np.testing.assert_allclose(lapack, fitted, atol=1e-4)


def test_vectorised_rollouts_equal_a_loop():
    env = Nav2D()
    policy = rl.gaussian_mlp_policy(2, 2, (8,), action_scale=0.1)
    params = policy.init(jax.random.key(0))
    env_params = sample_nav2d_params(jax.random.key(1))
    key = jax.random.key(2)
    batched = rl.sample_trajectories(env, policy, params, env_params, key, 4, 12)
    single_rollout = jax.jit(lambda k: rl.rollout(env, policy, params, env_params, k, 12))
    for i, k in enumerate(jax.random.split(key, 4)):
        single = single_rollout(k)
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], batched), single, atol=1e-6)


# ------------------------------------------------------------------ step-budget sampler


class FixedLength:
    """Every episode lasts ``length`` steps; reward -1 per step, and -5 on the last one."""

    def __init__(self, length):
        self.length = length

    def reset(self, key, params):
        return jnp.zeros(2), jnp.zeros((), jnp.int32)

    def step(self, key, state, action, params):
        state = state + 1
        done = state >= self.length
        return state * jnp.ones(2) / 100, state, jnp.where(done, -5.0, -1.0), done, {}


@pytest.mark.parametrize(
    "length, num_envs, budget, horizon, episodes, steps",
    [
        # the MAML code's test batch: 40 lockstep environments, 4000 completed steps
        (10, 40, 4000, 100, 400, 4000),  # one episode ends everywhere every 10 steps
        (30, 40, 4000, 100, 160, 4800),  # 4000 is first reached at lockstep step 120
        (100, 40, 4000, 100, 40, 4000),
        # its training batch: one environment per task, 20 x 100 steps
        (30, 1, 2000, 100, 67, 2010),
        (1000, 1, 2000, 100, 20, 2000),  # episodes cut at the horizon
    ],
)
def test_step_budget_sampler_keeps_completed_episodes(
    length, num_envs, budget, horizon, episodes, steps
):
    policy = rl.gaussian_mlp_policy(2, 2, (4,), action_scale=0.1)
    params = policy.init(jax.random.key(0))
    traj = rl.sample_step_budget(
        FixedLength(length), policy, params, None, jax.random.key(1),
        num_envs=num_envs, num_steps=budget, horizon=horizon,
    )  # fmt: skip
    episode = min(length, horizon)
    assert float(traj.dones.sum()) == episodes
    assert float(traj.masks.sum()) == steps  # unfinished episodes are dropped
    np.testing.assert_allclose(
        rl.mean_episode_return(traj), -(episode - 1) - (5.0 if episode == length else 1.0)
    )
    # the time step restarts with every episode, and the observations follow it
    t = np.asarray(traj.timesteps)
    assert t.max() == episode - 1
    np.testing.assert_array_equal(
        np.asarray(traj.dones)[np.asarray(traj.masks) > 0] > 0,
        t[np.asarray(traj.masks) > 0] == episode - 1,
    )
    np.testing.assert_allclose(traj.observations[..., 0], t / 100, atol=1e-6)


def _stream_and_rows():
    """Two episodes (3 and 2 steps) and an unfinished one back to back in one row, and
    the same two episodes one per row; ``index`` maps each valid stream step to its
    place in the rows."""
    rewards = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    dones = jnp.array([0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    masks = jnp.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    timesteps = jnp.array([0, 1, 2, 0, 1, 2, 3])
    index = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    row_rewards = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    row_masks = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    row_dones = jnp.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    stream = (rewards[None], masks[None], dones[None], timesteps[None])
    return stream, (row_rewards, row_masks, row_dones), index


def _gather(rows, index):
    return jnp.stack([rows[i, j] for i, j in index])


def test_returns_baseline_features_and_dice_restart_with_each_episode_of_a_stream():
    (rewards, masks, dones, timesteps), (row_rewards, row_masks, _), index = _stream_and_rows()
    returns = rl.discounted_returns(rewards, masks, 0.5, dones)[0, :5]
    rows = rl.discounted_returns(row_rewards, row_masks, 0.5)
    np.testing.assert_allclose(returns, _gather(rows, index))
    np.testing.assert_allclose(returns, [1 + 1 + 0.75, 2 + 1.5, 3, 4 + 2.5, 5])
    obs = jnp.stack([rewards, -rewards], axis=-1)  # any observations
    row_obs = jnp.stack([row_rewards, -row_rewards], axis=-1)
    np.testing.assert_allclose(
        rl.baseline_features(obs, timesteps)[0, :5],
        _gather(rl.baseline_features(row_obs), index),
    )

    # DiCE: the same value, gradient and Hessian as the episodes one per row
    advantages = jnp.array([[0.5, -1.0, 2.0, 1.5, -0.5, 9.0, 9.0]])
    row_advantages = jnp.array([[0.5, -1.0, 2.0], [1.5, -0.5, 0.0]])

    def on_stream(lp, dones=dones):
        return rl.dice_loss(lp[None], advantages, masks, dones)

    def on_rows(lp):
        rows = jnp.zeros((2, 3)).at[tuple(zip(*index))].set(lp[:5])
        return rl.dice_loss(rows, row_advantages, row_masks)

    lp = -jnp.arange(1.0, 8.0) / 4
    chex.assert_trees_all_close(on_stream(lp), on_rows(lp), atol=1e-7)
    chex.assert_trees_all_close(jax.grad(on_stream)(lp), jax.grad(on_rows)(lp), atol=1e-6)
    hessian = jax.hessian(on_stream)(lp)
    np.testing.assert_allclose(hessian, jax.hessian(on_rows)(lp), atol=1e-6)
    # without the restarts the second episode's rewards would be credited to the first's actions
    joined = jax.hessian(lambda x: on_stream(x, dones=None))(lp)
    assert np.abs(np.asarray(joined - hessian)[:3, 3:5]).max() > 0.1


def test_maml_rl_with_the_step_budget_sampler():
    env = Nav2D()
    policy = rl.gaussian_mlp_policy(2, 2, (8,), action_scale=0.1)
    params = policy.init(jax.random.key(0))
    learner = rl.maml_rl(
        env, policy, num_trajectories=3, horizon=10, sampler="steps", envs_per_task=2
    )
    task = rl.rl_task_sampler(sample_nav2d_params)(jax.random.key(3))
    (loss, aux), grads = jax.jit(jax.value_and_grad(learner.loss, has_aux=True))(params, task)
    assert np.isfinite(float(loss)) and np.isfinite(float(aux["return_post"]))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert optax.tree.norm(grads) > 0
    result = learner.adapt(params, task, steps=1)[1]
    # 2 streams of ceil(30 / 2) + 10 steps, before and after the update
    assert result.trajectories.rewards.shape == (2, 2, 25)
    assert float(result.trajectories.masks[0].sum()) >= 30
    with pytest.raises(ValueError, match="sampler must be episodes or steps"):
        rl.maml_rl(env, policy, sampler="rows")


def test_adapt_observes_the_parameters_of_every_batch():
    env = Nav2D()
    policy = rl.gaussian_mlp_policy(2, 2, (8,), action_scale=0.1)
    params = policy.init(jax.random.key(0))
    learner = rl.maml_rl(env, policy, num_trajectories=3, horizon=10, inner_lr=0.5)
    task = rl.rl_task_sampler(sample_nav2d_params)(jax.random.key(3))
    adapt = jax.jit(learner.adapt, static_argnames=("steps", "observe"))
    plain_params, plain = adapt(params, task, steps=2, later_lr_scale=0.5)
    assert plain.observations is None
    adapted, result = adapt(params, task, steps=2, later_lr_scale=0.5, observe=lambda p: p)
    # observing changes nothing, and the record starts at the meta-parameters and ends
    # at the adapted ones
    chex.assert_trees_all_close(adapted, plain_params)
    chex.assert_trees_all_close(result.trajectories, plain.trajectories)
    seen = [jax.tree.map(lambda x, k=k: x[k], result.observations) for k in range(3)]
    chex.assert_trees_all_close(seen[0], params)
    chex.assert_trees_all_close(seen[2], adapted)
    # each recorded step is the inner update on the batch those parameters sampled,
    # the second at half the step size
    for k, lr in ((0, 0.5), (1, 0.25)):
        batch = jax.tree.map(lambda x, k=k: x[k], result.trajectories)
        _, advantages = rl.compute_advantages(batch, 0.99)
        grads = jax.grad(
            lambda p, b=batch, a=advantages: rl.reinforce_loss(
                rl.trajectory_log_probs(policy, p, b), a, b.masks
            )
        )(seen[k])
        expected = jax.tree.map(lambda p, g, lr=lr: p - lr * g, seen[k], grads)
        chex.assert_trees_all_close(seen[k + 1], expected, atol=1e-6)
    assert optax.tree.norm(jax.tree.map(jnp.subtract, seen[1], seen[0])) > 0
    log_stds = adapt(params, task, steps=2, observe=lambda p: p["log_std"])[1].observations
    assert log_stds.shape == (3, 2)


# ------------------------------------------------------------------ estimators


@dataclasses.dataclass(frozen=True)
class _BanditState:
    time: jax.Array


jax.tree_util.register_dataclass(_BanditState, data_fields=["time"], meta_fields=[])


class OneStepGaussianBandit:
    """One action ``a``, reward ``-(a - target)^2``, then the episode ends."""

    def reset(self, key, target):
        return jnp.zeros((1,)), _BanditState(jnp.zeros((), jnp.int32))

    def step(self, key, state, action, target):
        reward = -jnp.square(action[0] - target)
        return jnp.zeros((1,)), _BanditState(state.time + 1), reward, jnp.array(True), {}


def gaussian_policy():
    def log_prob(params, obs, action):
        z = (action[..., 0] - params["mean"]) * jnp.exp(-params["log_std"])
        return -0.5 * z**2 - params["log_std"] - 0.5 * math.log(2 * math.pi)

    return rl.Policy(
        init=lambda key: {"mean": jnp.array(0.5), "log_std": jnp.array(math.log(0.5))},
        sample=lambda p, obs, key: p["mean"] + jnp.exp(p["log_std"]) * jax.random.normal(key, (1,)),
        log_prob=log_prob,
        mean=lambda p, obs: p["mean"][None],
    )


def expected_return(params, target=0.0):
    """Closed form ``E[-(a - c)^2] = -((mu - c)^2 + sigma^2)``."""
    return -(jnp.square(params["mean"] - target) + jnp.exp(2 * params["log_std"]))


def _flat(tree):
    return jnp.stack([tree["mean"], tree["log_std"]])


@pytest.fixture(scope="module")
def bandit_batch():
    env, policy = OneStepGaussianBandit(), gaussian_policy()
    params = policy.init(None)
    traj = rl.sample_trajectories(env, policy, params, 0.0, jax.random.key(0), 40_000, 2)
    return policy, params, traj


def test_reinforce_gradient_matches_finite_differences(bandit_batch):
    policy, params, traj = bandit_batch
    np.testing.assert_array_equal(traj.masks[:, 1], 0.0)  # the second step is masked out
    advantages = traj.rewards - rl.episode_returns(traj).mean()  # constant baseline

    def surrogate(p):
        lp = rl.trajectory_log_probs(policy, p, traj)
        # reinforce_loss averages over valid steps = episodes here; minus: ascent.
        return -rl.reinforce_loss(lp, advantages, traj.masks)

    estimate = _flat(jax.grad(surrogate)(params))
    eps = 1e-3
    finite_diff = []
    for name in ("mean", "log_std"):
        plus = dict(params, **{name: params[name] + eps})
        minus = dict(params, **{name: params[name] - eps})
        finite_diff.append((expected_return(plus) - expected_return(minus)) / (2 * eps))
    np.testing.assert_allclose(estimate, jnp.stack(finite_diff), atol=0.03)  # [-1, -0.5]
    dice = jax.grad(
        lambda p: -rl.dice_loss(rl.trajectory_log_probs(policy, p, traj), advantages, traj.masks)
    )
    chex.assert_trees_all_close(dice(params), jax.grad(surrogate)(params), atol=1e-5)


def test_dice_hessian_estimates_the_hessian_of_the_expected_return(bandit_batch):
    policy, params, traj = bandit_batch
    advantages = traj.rewards - rl.episode_returns(traj).mean()

    def objective(loss_fn):
        def value(flat):
            p = {"mean": flat[0], "log_std": flat[1]}
            return -loss_fn(rl.trajectory_log_probs(policy, p, traj), advantages, traj.masks)

        return value

    flat = _flat(params)
    exact = jax.hessian(lambda f: expected_return({"mean": f[0], "log_std": f[1]}))(flat)
    dice = jax.jit(jax.hessian(objective(rl.dice_loss)))(flat)
    np.testing.assert_allclose(dice, exact, atol=0.12)  # exact: diag(-2, -1)
    # The plain surrogate misses E[score score^T A]: far off on the log-std entry.
    plain = jax.jit(jax.hessian(objective(rl.reinforce_loss)))(flat)
    assert abs(float(plain[1, 1] - exact[1, 1])) > 0.5


def test_masked_steps_change_no_gradient():
    log_probs = jnp.array([[-1.0, -2.0, -3.0]])
    advantages = jnp.array([[1.0, -1.0, 5.0]])
    masks = jnp.array([[1.0, 1.0, 0.0]])
    for loss in (rl.reinforce_loss, rl.dice_loss):
        grad = jax.grad(loss)(log_probs, advantages, masks)
        assert float(grad[0, 2]) == 0.0
        changed = jax.grad(loss)(log_probs.at[0, 2].set(jnp.nan), advantages, masks)
        chex.assert_trees_all_close(changed, grad)


# ------------------------------------------------------------------ MAML-RL smoke


def maml_rl_smoke(env, sample_env_params, meta_steps: int):
    """Meta-trains a small Gaussian policy for a few steps (4 tasks x 8 episodes x 10
    steps, Adam 3e-2); returns the mean return on 16 fixed tasks after 0 and 1 inner
    steps, before and after training (``[2]`` each)."""
    policy = rl.gaussian_mlp_policy(env.observation_size, 2, (16, 16), action_scale=0.1)
    learner = rl.maml_rl(env, policy, num_trajectories=8, horizon=10)
    outer = optax.adam(3e-2)
    state = init_train_state(learner, policy.init(jax.random.key(0)), outer, jax.random.key(1))
    sampler = rl.rl_task_sampler(sample_env_params)
    step = jit_train_step(
        make_train_step(
            learner, outer, sample_tasks=sampler, meta_batch=4, pre_adaptation_metrics=False
        )
    )
    tasks = jax.vmap(sampler)(jax.random.split(jax.random.key(7), 16))
    evaluate = jax.jit(lambda p: jax.vmap(lambda t: learner.adapt(p, t, steps=1)[1].returns)(tasks))
    before = np.asarray(evaluate(state.meta_params)).mean(0)
    for _ in range(meta_steps):
        state, metrics = step(state)
    after = np.asarray(evaluate(state.meta_params)).mean(0)
    assert np.isfinite(float(metrics["meta_loss"]))
    return before, after


def test_maml_rl_smoke_return_improves():
    before, after = maml_rl_smoke(Nav2D(), sample_nav2d_params, meta_steps=15)
    assert after[1] > before[1] + 0.3, (before, after)


# ------------------------------------------------------------------ bandits and recipes


def test_bernoulli_bandit_and_categorical_policy():
    from metajax.envs import BanditParams, BernoulliBandit
    from metajax.recipes.bandit import thompson_sampling

    env = BernoulliBandit()
    params = BanditParams(probs=jnp.array([0.0, 1.0, 0.0]))
    policy = rl.categorical_mlp_policy(1, 3, (4,))
    policy_params = policy.init(jax.random.key(0))
    traj = rl.sample_trajectories(env, policy, policy_params, params, jax.random.key(1), 64, 1)
    np.testing.assert_array_equal(traj.rewards[:, 0], (traj.actions[:, 0] == 1).astype(jnp.float32))
    probs = jnp.exp(
        jax.vmap(lambda a: policy.log_prob(policy_params, jnp.ones((1,)), a))(jnp.arange(3))
    )
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-6)
    rewards = thompson_sampling(jax.random.key(2), params.probs, 60)
    assert float(rewards[-20:].mean()) > 0.9  # finds the only paying arm


@pytest.mark.slow
def test_nav2d_and_bandit_recipes_smoke(tmp_path):
    from metajax.recipes import bandit, nav2d

    tiny = dict(steps=2, meta_batch=2, num_trajectories=3, horizon=5, hidden=(4,), progress=False)
    for algorithm in ("maml", "pretrain"):
        nav2d.train(
            nav2d.Nav2DTrain(workdir=str(tmp_path / algorithm), algorithm=algorithm, **tiny)
        )
    results = nav2d.evaluate(
        nav2d.Nav2DEval(workdirs=(str(tmp_path / "maml"), str(tmp_path / "pretrain")), num_tasks=2)
    )
    assert len(results["runs"]) == 3 and (tmp_path / "maml" / "nav2d_returns.png").exists()
    bandit.train(bandit.BanditTrain(workdir=str(tmp_path / "bandit"), steps=2, progress=False))
    assert "rows" in bandit.evaluate(
        bandit.BanditEval(workdir=str(tmp_path / "bandit"), num_tasks=4)
    )
    pytest.importorskip("gymnax")
    for env in ("gymnax-bernoulli", "gymnax-gaussian"):
        workdir = str(tmp_path / env)
        bandit.train(bandit.BanditTrain(workdir=workdir, env=env, steps=2, progress=False))
        rows = bandit.evaluate(bandit.BanditEval(workdir=workdir, num_tasks=4))["rows"]
        assert len(rows) == 5 and all(len(cells) == 4 for cells in rows.values())


def test_nav2d_eval_can_sample_more_episodes_than_training():
    # The MAML code evaluated with 40 episodes per update (4000 steps), trained with 20.
    from metajax.recipes import nav2d

    cfg = nav2d.Nav2DTrain(num_trajectories=3, horizon=5, hidden=(4,))
    state, _ = nav2d.initial_state(cfg)
    task = nav2d.held_out_tasks(0, 1)
    task = jax.tree.map(lambda x: x[0], task)
    for override, expected in ((None, 3), (7, 7)):
        _, _, learner = nav2d.build(cfg, num_trajectories=override)
        result = learner.adapt(state.meta_params, task, steps=1)[1]
        assert result.trajectories.rewards.shape == (2, expected, 5)
    # the MAML code's test batch: a budget of steps from lockstep environments (here
    # 7 x 5 steps from 4 environments, streams of ceil(35 / 4) + 5 steps)
    _, _, learner = nav2d.build(cfg, num_trajectories=7, sampler="steps", envs_per_task=4)
    result = learner.adapt(state.meta_params, task, steps=1)[1]
    assert result.trajectories.rewards.shape == (2, 4, 14)
    assert (result.trajectories.masks.sum((1, 2)) >= 35).all()


def test_paired_difference_pairs_goals():
    from metajax.recipes import nav2d

    # Goal difficulty dominates each policy's spread; the pairing removes it.
    goals = np.array([-50.0, -10.0, -30.0, -5.0])
    results = {
        "runs": {
            "a": {"per_goal_returns": np.stack([goals, goals + 2.0], 1).tolist()},
            "b": {"per_goal_returns": np.stack([goals + 1.0, goals], 1).tolist()},
            "old": {"returns": [(0.0, 0.0)]},
        }
    }
    mean, half = nav2d.paired_difference(results, "a", 1, "b", 0)
    assert mean == pytest.approx(1.0) and half == pytest.approx(0.0)
    mean, half = nav2d.paired_difference(results, "a", 0, "b", 1)
    assert mean == pytest.approx(0.0) and half == pytest.approx(0.0)
    with pytest.raises(ValueError, match="after 0..1 inner steps, not -1"):
        nav2d.paired_difference(results, "a", -1, "b", 0)
    with pytest.raises(KeyError, match="no per_goal_returns"):
        nav2d.paired_difference(results, "old", 0, "b", 0)
