"""The emulation of the MAML code's test-time sampler (experiments/nav2d/rllab_protocol)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import rl

sys.path.insert(
    0, os.path.join(os.path.dirname(__file__), "..", "experiments", "nav2d", "rllab_protocol")
)
from eval_rllab_protocol import make_protocol  # noqa: E402


class FixedLength:
    """Every episode lasts ``length`` steps; reward -1 per step, and -5 on the last one."""

    def __init__(self, length):
        self.length = length

    def reset(self, key, params):
        return jnp.zeros(2), jnp.zeros((), jnp.int32)

    def step(self, key, state, action, params):
        state = state + 1
        done = state >= self.length
        return jnp.zeros(2), state, jnp.where(done, -5.0, -1.0), done, {}


@pytest.mark.parametrize(
    "length, episodes",
    # 40 lockstep environments, budget 4000 completed steps: a 10-step episode ends in
    # each environment every 10 steps (400 by step 100); 30-step ones reach 4000 only
    # at step 120 (4 per environment, 4800 steps); 100-step ones give one each.
    [(10, 400), (30, 160), (100, 40)],
)
def test_step_budget_counts_completed_episodes(length, episodes):
    policy = rl.gaussian_mlp_policy(2, 2, (4,), action_scale=0.1)
    params = policy.init(jax.random.key(0))
    sample, _ = make_protocol(
        FixedLength(length), policy, num_envs=40, stream_steps=200, batch_size=4000, discount=0.99
    )
    batch = sample(params, None, jax.random.key(1))
    stats = batch["stats"]
    assert float(stats["num_paths"]) == episodes
    assert bool(stats["sampled_enough"])
    np.testing.assert_allclose(stats["rllab_return"], -(length - 1) - 5.0)
    np.testing.assert_allclose(stats["first_episode_return"], -(length - 1) - 5.0)
    assert float(batch["masks"].sum()) == episodes * length  # unfinished episodes dropped
