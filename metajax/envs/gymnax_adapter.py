"""gymnax's meta-RL environments (PointRobot, MetaMaze) as metajax tasks.

gymnax ships PointRobot (Dorfman et al. 2021's semi-circle point robot) and MetaMaze
(Miconi et al. 2019) for *in-episode* meta-learning (RL^2): ``reset`` draws the goal
and hides it in the state, and one episode is a whole "lifetime" in which the agent
is teleported to a random position each time it reaches the goal and keeps
collecting reward until the time limit. ``step`` also auto-resets. MAML-RL wants
something else: a task that is fixed across the episodes of an inner step, and
episodes that stay finished. :class:`GymnaxMetaEnv` maps one onto the other:

* **The task is the goal.** ``params`` is a :class:`GymnaxTaskParams` holding the
  goal (a pytree leaf, so tasks vmap); ``reset(key, params)`` runs gymnax's own
  ``reset_env`` (which also draws the start: PointRobot, uniform radius and angle in
  the upper half-disc; MetaMaze, the maze centre) and then puts ``params.goal`` in
  the state. Neither environment observes the goal, so the observation is
  gymnax's. :meth:`GymnaxMetaEnv.sample_params` is gymnax's own goal distribution
  (the goal ``reset_env`` would have drawn with that key: PointRobot, uniform angle on
  the unit semi-circle; MetaMaze, a uniformly drawn open cell).
* **No auto-reset.** ``step`` is gymnax's ``step_env`` (the transition, reward and
  teleport unchanged) and ``done = terminated | truncated`` as gymnax's ``step``
  computes them (``truncated``: ``time >= max_steps_in_episode``), so
  :func:`metajax.rl.rollout` masks everything after it.
* **Episodes** (``episode="goal"``, the default): the episode also ends at the first
  step that reaches the goal, the 2D-navigation convention of the MAML paper. With
  ``episode="lifetime"`` it is gymnax's: reaching the goal teleports the agent and
  the episode goes on to the time limit (return = reward summed over all goals
  reached). ``"goal"`` is needed with PointRobot's dense reward (``-distance``):
  in a lifetime a teleport away from the goal costs reward, so the best policy
  hovers just outside the goal radius.
* MetaMaze observes only a 3x3 view of the walls, the last action, reward and time,
  which a memoryless (MLP) policy cannot localise from; ``observe_position=True``
  appends the agent's ``(row, col)`` scaled to ``[0, 1]``. PointRobot already
  observes its position.

The gymnax environment parameters (reward type, goal radius, time limit, ...) are
static configuration of the adapter, not part of the task.

Reference: Lange, "gymnax: A JAX-based Reinforcement Learning Environment Library",
2022; Dorfman, Shenfeld, Tamar, "Offline Meta Reinforcement Learning -- Identifiability
Challenges and Effective Data Collection Strategies", NeurIPS 2021; Miconi, Rawal,
Clune, Stanley, "Backpropamine", ICLR 2019.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

Episode = Literal["goal", "lifetime"]


@dataclasses.dataclass(frozen=True)
class GymnaxTaskParams:
    """The task of a :class:`GymnaxMetaEnv`: the goal (``[2]``; PointRobot float,
    MetaMaze int32 ``(row, col)``)."""

    goal: Any


jax.tree_util.register_dataclass(GymnaxTaskParams, data_fields=["goal"], meta_fields=[])


def point_robot_reached(env, env_params, state, action, next_state) -> jax.Array:
    """PointRobot counts each goal it reaches (its position *before* the move is
    within ``goal_radius``) in ``goals_reached``."""
    del env, env_params, action
    return jnp.asarray(next_state.goals_reached > state.goals_reached)


def meta_maze_reached(env, env_params, state, action, next_state) -> jax.Array:
    """MetaMaze's move (blocked by walls) lands on the goal; recomputed, because the
    next state already holds the teleported position."""
    del env_params, next_state
    moved = state.pos + env.directions[action]
    position = jnp.where(env.env_map[moved[0], moved[1]], moved, state.pos)
    return jnp.all(position == state.goal)


REACHED = {"PointRobot-misc": point_robot_reached, "MetaMaze-misc": meta_maze_reached}


class GymnaxMetaEnv:
    """A gymnax meta-RL environment in metajax's env API (see the module docstring).

    Args:
      env: a gymnax environment with ``reset_env``/``step_env``, a ``goal`` in its
        state and a goal-free observation (PointRobot, MetaMaze).
      env_params: its gymnax ``EnvParams`` (default: ``env.default_params``).
      episode: ``"goal"`` (end at the first goal reached) or ``"lifetime"`` (gymnax's).
      observe_position: append the scaled position to the observation (MetaMaze).
      reached: ``(env, env_params, state, action, next_state) -> bool``; default by
        ``env.name`` from :data:`REACHED`.

    Attributes:
      observation_size: observation width.
      action_size: continuous action width (``None`` for discrete actions).
      num_actions: number of discrete actions (``None`` for continuous ones).
    """

    def __init__(
        self,
        env: Any,
        env_params: Any = None,
        *,
        episode: Episode = "goal",
        observe_position: bool = False,
        reached: Callable | None = None,
    ):
        if episode not in ("goal", "lifetime"):
            raise ValueError(f"episode must be 'goal' or 'lifetime', got {episode!r}.")
        reached = REACHED.get(env.name) if reached is None else reached
        if reached is None and episode == "goal":
            raise ValueError(f"no goal test for {env.name}: pass reached=.")
        self.env = env
        self.env_params = env.default_params if env_params is None else env_params
        self.episode = episode
        self.observe_position = observe_position
        self.reached = reached
        discrete = hasattr(self.action_space, "n")  # gymnax spaces.Discrete
        self.num_actions = int(env.num_actions) if discrete else None
        self.action_size = None if discrete else int(self.action_space.shape[0])
        obs, _ = jax.eval_shape(lambda: self.reset(jax.random.key(0), self.default_params()))
        self.observation_size = int(obs.shape[-1])

    @property
    def name(self) -> str:
        return f"{self.env.name}/{self.episode}"

    @property
    def action_space(self):
        return self.env.action_space(self.env_params)

    def default_params(self) -> GymnaxTaskParams:
        """The goal gymnax's ``reset_env`` draws with ``key(0)``."""
        return self.sample_params(jax.random.key(0))

    def sample_params(self, key: jax.Array) -> GymnaxTaskParams:
        """gymnax's own task distribution: the goal its ``reset_env(key)`` draws."""
        _, state = self.env.reset_env(key, self.env_params)
        return GymnaxTaskParams(goal=state.goal)

    def _observe(self, obs: jax.Array, state: Any) -> jax.Array:
        obs = jnp.asarray(obs, jnp.float32)
        if not self.observe_position:
            return obs
        scale = jnp.asarray(self.env.env_map.shape, jnp.float32) - 1.0
        return jnp.concatenate([obs, state.pos.astype(jnp.float32) / scale])

    def reset(self, key: jax.Array, params: GymnaxTaskParams) -> tuple[jax.Array, Any]:
        """gymnax's ``reset_env`` (start position), with the task's goal."""
        _, state = self.env.reset_env(key, self.env_params)
        goal = jnp.asarray(params.goal, state.goal.dtype)
        state = state.replace(goal=goal)
        # gymnax's reset leaves Python scalars in the state (time 0.0, counters 0):
        # give them the dtypes its step produces, so the state is a fixed-type carry.
        stepped = jax.eval_shape(
            lambda s: self.env.step_env(key, s, self._zero_action(), self.env_params)[1], state
        )
        state = jax.tree.map(lambda x, y: jnp.asarray(x, y.dtype), state, stepped)
        return self._observe(self.env.get_obs(state, self.env_params), state), state

    def _zero_action(self):
        if self.num_actions is not None:
            return jnp.zeros((), jnp.int32)
        return jnp.zeros((self.action_size,), jnp.float32)

    def step(
        self, key: jax.Array, state: Any, action: jax.Array, params: GymnaxTaskParams
    ) -> tuple[jax.Array, Any, jax.Array, jax.Array, dict]:
        """gymnax's ``step_env`` without auto-reset; ``done`` per ``episode``."""
        del params  # the goal is in the state since reset
        obs, next_state, reward, terminated, _ = self.env.step_env(
            key, state, action, self.env_params
        )
        truncated = self.env.is_truncated(next_state, self.env_params)
        done = jnp.logical_or(terminated, truncated)
        info = {"terminated": terminated, "truncated": truncated}
        if self.reached is not None:
            reached = self.reached(self.env, self.env_params, state, action, next_state)
            info["reached"] = reached
            if self.episode == "goal":
                done = jnp.logical_or(done, reached)
        obs = self._observe(obs, next_state)
        return obs, next_state, jnp.asarray(reward, jnp.float32), jnp.asarray(done), info


def make_gymnax_env(
    name: str,
    *,
    episode: Episode = "goal",
    observe_position: bool | None = None,
    **env_params: Any,
) -> GymnaxMetaEnv:
    """``gymnax.make(name)`` wrapped in a :class:`GymnaxMetaEnv`.

    Args:
      name: ``"PointRobot-misc"`` or ``"MetaMaze-misc"``.
      episode: ``"goal"`` or ``"lifetime"`` (module docstring).
      observe_position: default: True for MetaMaze, False otherwise.
      **env_params: overrides of gymnax's ``EnvParams`` (e.g. ``dense_reward=True``).

    Example:
      >>> env = make_gymnax_env("PointRobot-misc", dense_reward=True)
      >>> params = env.sample_params(jax.random.key(0))
      >>> obs, state = env.reset(jax.random.key(1), params)
    """
    import gymnax  # optional dependency: pip install "metajax[rl]"

    env, default = gymnax.make(name)
    if observe_position is None:
        observe_position = name == "MetaMaze-misc"
    return GymnaxMetaEnv(
        env, default.replace(**env_params), episode=episode, observe_position=observe_position
    )


@dataclasses.dataclass(frozen=True)
class GymnaxBanditParams:
    """The task of a :class:`GymnaxBandit`: the bandit's hidden parameter, as gymnax's
    ``reset_env`` draws it (Bernoulli: ``reward_probs [2]``; Gaussian: ``mu``, the
    second arm's mean)."""

    value: Any


jax.tree_util.register_dataclass(GymnaxBanditParams, data_fields=["value"], meta_fields=[])

#: The state field that holds each gymnax bandit's task.
BANDIT_TASK_FIELDS = {"BernoulliBandit-misc": "reward_probs", "GaussianBandit-misc": "mu"}


class GymnaxBandit:
    """gymnax's two-armed bandits, one pull per episode, the arms' parameters the task.

    gymnax's ``BernoulliBandit-misc`` (Wang et al. 2017: arm probabilities ``(p, 1-p)``
    with ``p`` drawn from ``{reward_prob, 1 - reward_prob}``, 0.1 by default) and
    ``GaussianBandit-misc`` (Lange & Sprekeler 2022: arm 0 pays 0, arm 1 pays
    ``N(mu, sigma_l^2)`` with ``mu ~ N(mean_mu, sigma_p^2)``, -1 and 1 by default)
    draw the task inside ``reset`` for an RL^2 lifetime of 100 pulls. Here the task
    is :class:`GymnaxBanditParams`, drawn by :meth:`sample_params` from the same
    distribution (the value ``reset_env(key)`` would draw), and an episode is one
    pull (``done`` after every ``step``), as :class:`metajax.envs.BernoulliBandit`:
    "20 trajectories" of an inner step are 20 pulls. Rewards are gymnax's
    ``step_env``'s; the observation is gymnax's at the start of a lifetime (last
    reward 0, last action 0, time 0), a constant.

    Args:
      env: ``BernoulliBandit-misc`` or ``GaussianBandit-misc`` (gymnax environments).
      env_params: its gymnax ``EnvParams`` (default: ``env.default_params``).
    """

    def __init__(self, env: Any, env_params: Any = None):
        if env.name not in BANDIT_TASK_FIELDS:
            raise ValueError(f"GymnaxBandit wraps {sorted(BANDIT_TASK_FIELDS)}; got {env.name!r}.")
        self.env = env
        self.env_params = env.default_params if env_params is None else env_params
        self.field = BANDIT_TASK_FIELDS[env.name]
        self.num_actions = int(env.num_actions)
        self.action_size = None
        obs, _ = jax.eval_shape(lambda: self.reset(jax.random.key(0), self.default_params()))
        self.observation_size = int(obs.shape[-1])

    @property
    def name(self) -> str:
        return f"{self.env.name}/pull"

    def default_params(self) -> GymnaxBanditParams:
        return self.sample_params(jax.random.key(0))

    def sample_params(self, key: jax.Array) -> GymnaxBanditParams:
        """gymnax's own task distribution: the value its ``reset_env(key)`` draws."""
        _, state = self.env.reset_env(key, self.env_params)
        return GymnaxBanditParams(jnp.asarray(getattr(state, self.field), jnp.float32))

    def arm_means(self, params: GymnaxBanditParams) -> jax.Array:
        """``[2]`` expected reward of each arm."""
        if self.field == "reward_probs":
            return params.value
        return jnp.stack([jnp.zeros_like(params.value), params.value], axis=-1)

    def reset(self, key: jax.Array, params: GymnaxBanditParams) -> tuple[jax.Array, Any]:
        _, state = self.env.reset_env(key, self.env_params)
        state = state.replace(**{self.field: params.value})
        if self.field == "reward_probs":  # informational in gymnax; keep it consistent
            state = state.replace(exp_reward_best=jnp.max(params.value))
        stepped = jax.eval_shape(
            lambda s: self.env.step_env(key, s, jnp.zeros((), jnp.int32), self.env_params)[1],
            state,
        )  # fixed dtypes for the scan carry (gymnax's reset leaves Python scalars)
        state = jax.tree.map(lambda x, y: jnp.asarray(x, y.dtype), state, stepped)
        obs = jnp.asarray(self.env.get_obs(state, self.env_params), jnp.float32)
        return obs, state

    def step(self, key, state, action, params: GymnaxBanditParams):
        del params  # in the state since reset
        obs, next_state, reward, _, info = self.env.step_env(key, state, action, self.env_params)
        obs = jnp.asarray(obs, jnp.float32)
        return obs, next_state, jnp.asarray(reward, jnp.float32), jnp.array(True), info


def make_gymnax_bandit(name: str, **env_params: Any) -> GymnaxBandit:
    """``gymnax.make(name)`` (a bandit) wrapped in a :class:`GymnaxBandit`."""
    import gymnax  # optional dependency: pip install "metajax[rl]"

    env, default = gymnax.make(name)
    return GymnaxBandit(env, default.replace(**env_params))


__all__ = [
    "BANDIT_TASK_FIELDS",
    "GymnaxBandit",
    "GymnaxBanditParams",
    "GymnaxMetaEnv",
    "GymnaxTaskParams",
    "make_gymnax_bandit",
    "make_gymnax_env",
    "meta_maze_reached",
    "point_robot_reached",
]
