"""gymnax's PointRobot and MetaMaze through metajax.envs.gymnax_adapter."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

gymnax = pytest.importorskip("gymnax")

from test_rl import maml_rl_smoke  # noqa: E402

from metajax import rl  # noqa: E402
from metajax.envs.gymnax_adapter import GymnaxTaskParams, make_gymnax_env  # noqa: E402


@pytest.fixture(scope="module")
def point_robot():
    return make_gymnax_env("PointRobot-misc", dense_reward=True)


@pytest.fixture(scope="module")
def meta_maze():
    return make_gymnax_env("MetaMaze-misc")


def constant_policy(action):
    action = jnp.asarray(action)
    return rl.Policy(
        init=lambda key: {},
        sample=lambda params, obs, key: action,
        log_prob=lambda params, obs, a: jnp.zeros(jnp.shape(obs)[:-1]),
        mean=lambda params, obs: action,
    )


def point_state(env, pos, goal, time=0.0):
    _, state = env.reset(jax.random.key(0), GymnaxTaskParams(jnp.asarray(goal, jnp.float32)))
    return state.replace(pos=jnp.asarray(pos, jnp.float32), time=jnp.asarray(time, jnp.float32))


# ------------------------------------------------------------------ PointRobot


def test_point_robot_dense_dynamics_clipping_and_goal_termination(point_robot):
    env = point_robot
    assert (env.observation_size, env.action_size, env.num_actions) == (6, 2, None)
    params = GymnaxTaskParams(jnp.array([0.5, 0.0]))
    state = point_state(env, [0.0, 0.0], params.goal)
    obs, state, reward, done, info = env.step(
        jax.random.key(1), state, jnp.array([0.3, -0.05]), params
    )
    np.testing.assert_allclose(state.pos, [0.1, -0.05], atol=1e-7)  # x clipped to 0.1
    # reward: minus the distance *before* the move; obs = [pos, reward, action, time].
    np.testing.assert_allclose(reward, -0.5, rtol=1e-6)
    np.testing.assert_allclose(obs, [0.1, -0.05, -0.5, 0.3, -0.05, -0.98], rtol=1e-6)
    assert not bool(done) and not bool(info["reached"])
    # Within goal_radius 0.2 (before the move): reached, the episode ends.
    state = point_state(env, [0.35, 0.1], params.goal)
    _, _, reward, done, info = env.step(jax.random.key(1), state, jnp.zeros(2), params)
    np.testing.assert_allclose(reward, -math.hypot(0.15, 0.1), rtol=1e-6)
    assert bool(done) and bool(info["reached"])


def test_point_robot_sparse_lifetime_is_gymnax_semantics():
    env = make_gymnax_env("PointRobot-misc", episode="lifetime")
    params = GymnaxTaskParams(jnp.array([0.5, 0.0]))
    state = point_state(env, [0.4, 0.0], params.goal)
    _, next_state, reward, done, info = env.step(jax.random.key(1), state, jnp.zeros(2), params)
    assert float(reward) == 1.0 and bool(info["reached"]) and not bool(done)
    assert int(next_state.goals_reached) == 1
    assert float(jnp.linalg.norm(next_state.pos - state.pos)) > 0  # teleported
    _, _, reward, _, _ = env.step(jax.random.key(1), point_state(env, [0, 0], [0.5, 0]), 0, params)
    assert float(reward) == 0.0
    # The time limit (gymnax's truncation) ends the episode in both modes.
    last = point_state(env, [0.0, 0.0], params.goal, time=99.0)
    assert bool(env.step(jax.random.key(1), last, jnp.zeros(2), params)[3])


def test_reset_and_step_agree_with_gymnax():
    raw, raw_params = gymnax.make("PointRobot-misc")
    env = make_gymnax_env("PointRobot-misc", episode="lifetime")
    for seed in range(3):
        key = jax.random.key(seed)
        obs, state = env.reset(key, env.sample_params(key))
        raw_obs, raw_state = raw.reset(key, raw_params)
        chex.assert_trees_all_close((obs, state), (raw_obs, raw_state))
        action = jax.random.uniform(jax.random.fold_in(key, 1), (2,), minval=-0.2, maxval=0.2)
        step_key = jax.random.fold_in(key, 2)
        # gymnax's step runs step_env with the first half of its key (then auto-resets).
        raw_obs, raw_state, raw_reward, terminated, truncated, _ = raw.step(
            step_key, raw_state, action, raw_params
        )
        obs, state, reward, done, _ = env.step(
            jax.random.split(step_key)[0], state, action, env.sample_params(key)
        )
        chex.assert_trees_all_close((obs, state, reward), (raw_obs, raw_state, raw_reward))
        assert bool(done) == bool(terminated | truncated)


def test_task_sampler_is_gymnax_goal_distribution_and_reproducible(point_robot, meta_maze):
    env = point_robot  # the goal distribution does not depend on the reward type
    keys = jax.random.split(jax.random.key(0), 200)
    sample = jax.jit(jax.vmap(env.sample_params))
    goals = sample(keys).goal
    chex.assert_trees_all_equal(goals, sample(keys).goal)  # same keys, same tasks
    chex.assert_trees_all_close(goals[3], env.sample_params(keys[3]).goal)  # vmap = one call
    np.testing.assert_allclose(jnp.linalg.norm(goals, axis=-1), 1.0, rtol=1e-5)  # semi-circle
    assert float(goals[:, 1].min()) >= 0.0 and len(np.unique(np.asarray(goals[:, 0]))) == 200
    task_sampler = jax.jit(rl.rl_task_sampler(env.sample_params))
    chex.assert_trees_all_equal(task_sampler(keys[0]), task_sampler(keys[0]))
    maze = meta_maze
    cells = jax.jit(jax.vmap(maze.sample_params))(keys).goal
    assert bool(jnp.all(maze.env.env_map[cells[:, 0], cells[:, 1]]))  # open cells only
    assert len({tuple(c) for c in np.asarray(cells)}) > 30


def test_rollout_masks_after_goal_and_lifetime_runs_to_the_limit():
    policy = constant_policy(jnp.array([0.1, 0.0]))
    params = GymnaxTaskParams(jnp.array([0.55, 0.0]))
    for episode, valid in (("goal", 5), ("lifetime", 8)):
        env = make_gymnax_env(
            "PointRobot-misc", dense_reward=True, center_init=True, episode=episode
        )
        traj = rl.rollout(env, policy, {}, params, jax.random.key(0), horizon=8)
        np.testing.assert_array_equal(traj.masks, [1.0] * valid + [0.0] * (8 - valid))
        if episode == "goal":  # distance 0.15 <= 0.2 before the fifth move
            np.testing.assert_array_equal(traj.dones, [0, 0, 0, 0, 1, 0, 0, 0])
            expected = [-0.55, -0.45, -0.35, -0.25, -0.15, 0, 0, 0]
            np.testing.assert_allclose(traj.rewards, expected, atol=1e-6)


# ------------------------------------------------------------------ MetaMaze


def test_meta_maze_moves_walls_goal_and_position_observation(meta_maze):
    env = meta_maze
    assert (env.num_actions, env.action_size, env.observation_size) == (4, None, 17)
    params = GymnaxTaskParams(jnp.array([4, 5], jnp.int32))
    obs, state = env.reset(jax.random.key(0), params)
    np.testing.assert_array_equal(state.pos, [5, 5])  # gymnax starts at the centre
    np.testing.assert_allclose(obs[-2:], [0.5, 0.5])
    # Up from (5, 5) onto the goal at (4, 5): reward 10, the episode ends.
    _, _, reward, done, info = env.step(jax.random.key(1), state, jnp.int32(0), params)
    assert float(reward) == 10.0 and bool(done) and bool(info["reached"])
    # Right from (4, 5) is a wall: no move, no reward.
    far = GymnaxTaskParams(jnp.array([1, 1], jnp.int32))
    state = state.replace(pos=jnp.array([4, 5], jnp.int32), goal=far.goal)
    obs, state, reward, done, _ = env.step(jax.random.key(1), state, jnp.int32(1), far)
    np.testing.assert_array_equal(state.pos, [4, 5])
    np.testing.assert_allclose(obs[-2:], [0.4, 0.5])
    assert float(reward) == 0.0 and not bool(done)


# ------------------------------------------------------------------ MAML-RL smoke


def test_maml_rl_on_point_robot_smoke_return_improves():
    # A fixed start (gymnax's center_init) keeps this few-step check far above the noise.
    env = make_gymnax_env("PointRobot-misc", dense_reward=True, center_init=True)
    before, after = maml_rl_smoke(env, env.sample_params, meta_steps=10)
    assert before[1] > before[0] + 0.3, before  # one inner step already helps
    assert after[1] > before[1] + 0.5, (before, after)  # meta-training helps it more


@pytest.mark.slow
def test_point_robot_and_meta_maze_recipes_smoke(tmp_path):
    from metajax.recipes import nav2d

    tiny = dict(steps=2, meta_batch=2, num_trajectories=3, horizon=5, hidden=(4,), progress=False)
    for env in ("pointrobot", "metamaze"):
        workdirs = []
        for algorithm in ("maml", "pretrain"):
            workdirs.append(str(tmp_path / env / algorithm))
            nav2d.train(
                nav2d.PointRobotTrain(workdir=workdirs[-1], env=env, algorithm=algorithm, **tiny)
            )
        results = nav2d.evaluate(nav2d.PointRobotEval(workdirs=tuple(workdirs), num_tasks=2))
        assert results["env"] == env and len(results["runs"]) == 3
        run = results["runs"][workdirs[0]]
        per_goal = np.asarray(run["per_goal_returns"])
        assert per_goal.shape == (2, 4)  # goals, 0..3 inner steps
        np.testing.assert_allclose(per_goal.mean(0), [m for m, _ in run["returns"]], rtol=1e-6)
        mean, _ = nav2d.paired_difference(results, workdirs[0], 1, "random init", 0)
        rand = np.asarray(results["runs"]["random init"]["per_goal_returns"])
        np.testing.assert_allclose(mean, (per_goal[:, 1] - rand[:, 0]).mean(), rtol=1e-6)
        with pytest.raises(KeyError, match="no run 'nope'"):
            nav2d.paired_difference(results, "nope", 1, "random init", 0)
        assert (tmp_path / env / "maml" / f"{env}_trajectories.png").exists()


# ------------------------------------------------------------------ bandits


@pytest.mark.parametrize("name", ["BernoulliBandit-misc", "GaussianBandit-misc"])
def test_gymnax_bandit_tasks_and_rewards_are_gymnax(name):
    from metajax.envs.gymnax_adapter import make_gymnax_bandit

    env = make_gymnax_bandit(name)
    raw, raw_params = gymnax.make(name)
    key = jax.random.key(4)
    params = env.sample_params(key)
    _, raw_state = raw.reset_env(key, raw_params)  # the task gymnax's reset draws
    field = "reward_probs" if name.startswith("Bernoulli") else "mu"
    np.testing.assert_allclose(params.value, getattr(raw_state, field), rtol=1e-6)
    obs, state = env.reset(jax.random.key(5), params)
    np.testing.assert_array_equal(obs, [0.0, 1.0, 0.0, -1.0])  # gymnax's start of a lifetime
    for action in (0, 1):
        step_key = jax.random.key(10 + action)
        _, _, reward, done, _ = env.step(step_key, state, jnp.int32(action), params)
        expected = raw.step_env(step_key, raw_state, jnp.int32(action), raw_params)[2]
        np.testing.assert_allclose(reward, expected, rtol=1e-6)
        assert bool(done)  # one pull per episode
    means = env.arm_means(params)
    assert means.shape == (2,)
    if name.startswith("Gaussian"):
        np.testing.assert_allclose(means, [0.0, params.value])
    else:
        np.testing.assert_allclose(jnp.sort(means), [0.1, 0.9], rtol=1e-6)


def test_gaussian_thompson_sampling_posterior_and_choices():
    from metajax.recipes.bandit import gaussian_thompson_sampling

    # A clearly good arm 1 (mu = 2) is found and then played almost always; a clearly
    # bad one (mu = -3) is abandoned: its pulls pay about -3, the others 0.
    keys = jax.random.split(jax.random.key(0), 200)
    good = jax.vmap(lambda k: gaussian_thompson_sampling(k, jnp.float32(2.0), 40))(keys)
    bad = jax.vmap(lambda k: gaussian_thompson_sampling(k, jnp.float32(-3.0), 40))(keys)
    assert float(jnp.mean(good[:, -10:])) > 1.9
    assert float(jnp.mean(bad[:, -10:] != 0)) < 0.01
    # The first pull samples the prior N(-1, 1): arm 1 with probability P(N(-1,1) > 0).
    first = jnp.mean(good[:, 0] != 0)
    assert abs(float(first) - 0.1587) < 0.08
