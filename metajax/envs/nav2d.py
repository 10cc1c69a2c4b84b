"""The MAML paper's 2D navigation task, in the gymnax environment API.

A point agent starts at the origin and must move to a goal it does not observe.
Each step it takes a velocity ``clip(action, -max_speed, max_speed)`` (per
coordinate), moves by it, and receives ``-||position - goal||`` (the distance
*after* the move). The episode ends when both coordinates are within ``tolerance``
of the goal, or after ``max_steps_in_episode`` steps. The observation is the
position. The task is the goal: a task distribution is a function
``key -> Nav2DParams`` (:func:`sample_nav2d_params`, goals uniform in
``[-0.5, 0.5]^2``).

This follows ``PointEnvRandGoal`` of the authors' code (cbfinn/maml_rl), which the
paper ran through rllab's ``normalize`` wrapper: the policy acts in ``[-1, 1]`` and
the wrapper scales by 0.1, i.e. velocities clipped to ``[-0.1, 0.1]``. Here the
environment takes velocities; the ``nav2d`` recipe scales the policy's output by
``max_speed`` (a constant factor, which changes neither the optimum nor any
likelihood-ratio gradient).

API (gymnax's ``reset_env``/``step_env`` contract, without auto-reset, which a
masked rollout does not want): ``reset(key, params) -> (obs, state)`` and
``step(key, state, action, params) -> (obs, state, reward, done, info)``.

Reference: Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation
of Deep Networks", ICML 2017, sec. 5.3.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


@dataclasses.dataclass(frozen=True)
class Nav2DParams:
    """Environment parameters: the task.

    Attributes:
      goal: ``[2]`` goal position.
      max_speed: per-coordinate velocity limit (0.1).
      tolerance: the episode ends when ``|position - goal| < tolerance`` in both
        coordinates (0.01).
      max_steps_in_episode: time limit (100).
    """

    goal: Any
    max_speed: float = 0.1
    tolerance: float = 0.01
    max_steps_in_episode: int = 100


jax.tree_util.register_dataclass(
    Nav2DParams,
    data_fields=["goal"],
    meta_fields=["max_speed", "tolerance", "max_steps_in_episode"],
)


@dataclasses.dataclass(frozen=True)
class Nav2DState:
    """Position ``[2]`` and time step (int32)."""

    position: Any
    time: Any


jax.tree_util.register_dataclass(Nav2DState, data_fields=["position", "time"], meta_fields=[])


def sample_nav2d_params(key: jax.Array, low: float = -0.5, high: float = 0.5) -> Nav2DParams:
    """The paper's task distribution: a goal uniform in ``[low, high]^2``."""
    return Nav2DParams(goal=jax.random.uniform(key, (2,), minval=low, maxval=high))


class Nav2D:
    """2D point navigation to an unobserved goal (see the module docstring)."""

    observation_size = 2
    action_size = 2

    @property
    def name(self) -> str:
        return "Nav2D-MAML"

    def default_params(self) -> Nav2DParams:
        return Nav2DParams(goal=jnp.zeros((2,), jnp.float32))

    def reset(self, key: jax.Array, params: Nav2DParams) -> tuple[jax.Array, Nav2DState]:
        del key  # deterministic start at the origin
        state = Nav2DState(jnp.zeros((2,), jnp.float32), jnp.zeros((), jnp.int32))
        return state.position, state

    def step(
        self, key: jax.Array, state: Nav2DState, action: ArrayLike, params: Nav2DParams
    ) -> tuple[jax.Array, Nav2DState, jax.Array, jax.Array, dict]:
        del key
        velocity = jnp.clip(jnp.asarray(action, jnp.float32), -params.max_speed, params.max_speed)
        position = state.position + velocity
        offset = position - params.goal
        reward = -jnp.sqrt(jnp.sum(jnp.square(offset)))
        time = state.time + 1
        reached = jnp.all(jnp.abs(offset) < params.tolerance)
        done = reached | (time >= params.max_steps_in_episode)
        return position, Nav2DState(position, time), reward, done, {"reached": reached}
