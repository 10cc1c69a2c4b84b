"""The MAML code's test protocol (experiments/nav2d/rllab_protocol): its statistics, and
its update against metajax's inner step.

The sampler itself is :func:`metajax.rl.sample_step_budget` (tests/test_rl.py)."""

import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import rl
from metajax.envs import Nav2D, sample_nav2d_params

sys.path.insert(
    0, os.path.join(os.path.dirname(__file__), "..", "experiments", "nav2d", "rllab_protocol")
)
from eval_rllab_protocol import make_protocol  # noqa: E402
from test_rl import FixedLength  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.mark.parametrize(
    "length, episodes, reached",
    # 40 lockstep environments, budget 4000 completed steps: 10-step episodes give 400,
    # 30-step ones 160 (the budget is reached at lockstep step 120), 100-step ones 40,
    # all of them at the time limit
    [(10, 400, 1.0), (30, 160, 1.0), (100, 40, 0.0)],
)
def test_protocol_statistics(length, episodes, reached):
    policy = rl.gaussian_mlp_policy(2, 2, (4,), action_scale=0.1)
    params = policy.init(jax.random.key(0))
    sample, _ = make_protocol(
        FixedLength(length), policy, num_envs=40, batch_size=4000, discount=0.99
    )
    traj, stats = sample(params, None, jax.random.key(1))
    assert float(stats["num_paths"]) == episodes
    np.testing.assert_allclose(stats["rllab_return"], -(length - 1) - 5.0)
    np.testing.assert_allclose(stats["first_episode_return"], -(length - 1) - 5.0)
    np.testing.assert_allclose(stats["reached"], reached)
    assert float(traj.masks.sum()) == episodes * length  # unfinished episodes dropped


def test_protocol_update_is_metajax_inner_step():
    # With the baseline fitted on the batch ("current"), the protocol's update is the
    # step of rl.maml_rl with the step-budget sampler.
    env = Nav2D()
    policy = rl.gaussian_mlp_policy(2, 2, (8,), action_scale=0.1)
    params = policy.init(jax.random.key(0))
    task = rl.rl_task_sampler(sample_nav2d_params)(jax.random.key(3))
    sample, update = make_protocol(env, policy, num_envs=4, batch_size=200, discount=0.99)
    learner = rl.maml_rl(
        env, policy, num_trajectories=2, horizon=100, sampler="steps", envs_per_task=4,
        meta_gradient="maml",
    )  # fmt: skip
    keys = jax.random.split(task.key, 2)
    traj, _ = sample(params, task.env_params, keys[0])
    ours, _ = update(params, traj, 0.1, jnp.zeros(8), "current")
    adapted, result = learner.adapt(params, task, steps=1)
    chex.assert_trees_all_close(ours, adapted, atol=1e-5)
    chex.assert_trees_all_close(traj, jax.tree.map(lambda x: x[0], result.trajectories))
