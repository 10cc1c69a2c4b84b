"""A K-armed Bernoulli bandit whose arm probabilities are the task (gymnax API).

One episode is one pull: ``step`` returns reward ``Bernoulli(probs[action])`` and
``done = True``; the observation is a constant ``[1.0]``. "20 trajectories" of a
policy-gradient inner step are then 20 pulls. gymnax's own ``BernoulliBandit-misc``
draws its arm probabilities inside ``reset`` (an RL^2-style lifetime of 100 pulls),
so its task is not an environment parameter; this one follows the same API with
the probabilities in the parameters, as MAML-style adaptation needs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BanditParams:
    """``probs``: ``[arms]`` success probability of each arm."""

    probs: Any


jax.tree_util.register_dataclass(BanditParams, data_fields=["probs"], meta_fields=[])


@dataclasses.dataclass(frozen=True)
class BanditState:
    time: Any


jax.tree_util.register_dataclass(BanditState, data_fields=["time"], meta_fields=[])


def sample_bandit_params(key: jax.Array, arms: int = 5) -> BanditParams:
    """Arm probabilities i.i.d. uniform in ``[0, 1]``."""
    return BanditParams(probs=jax.random.uniform(key, (arms,)))


class BernoulliBandit:
    """One pull per episode (see the module docstring)."""

    observation_size = 1

    def reset(self, key, params: BanditParams):
        del key, params
        return jnp.ones((1,), jnp.float32), BanditState(jnp.zeros((), jnp.int32))

    def arm_means(self, params: BanditParams) -> jax.Array:
        """``[..., arms]`` expected reward of each arm."""
        return params.probs

    def step(self, key, state: BanditState, action, params: BanditParams):
        reward = jax.random.bernoulli(key, params.probs[action]).astype(jnp.float32)
        obs = jnp.ones((1,), jnp.float32)
        return obs, BanditState(state.time + 1), reward, jnp.array(True), {}
