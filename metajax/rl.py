"""Meta-reinforcement learning: rollouts, baselines, policy-gradient losses, MAML-RL.

Everything is a pure function of pytrees, so one jitted program samples
trajectories, fits baselines, adapts the policy and takes the outer step:

* :func:`rollout` plays one episode with ``lax.scan`` over time; vmap it over
  trajectories (:func:`sample_trajectories`) and over tasks at the call site.
  :func:`sample_step_budget` is rllab's sampler instead: lockstep environments that
  restart when an episode ends, until the completed episodes hold a budget of steps
  (rows of back-to-back episodes, with ``Trajectory.timesteps``). An
  environment follows the gymnax API without auto-reset:
  ``reset(key, params) -> (obs, state)``,
  ``step(key, state, action, params) -> (obs, state, reward, done, info)``; its
  ``params`` are the task. Steps after ``done`` are still computed (fixed shapes)
  but get mask 0, so every loss is the core's masked per-sample loss
  (:func:`metajax.losses.weighted_mean` with the episode masks as weights).
* :func:`discounted_returns`, :func:`linear_feature_baseline` (rllab's linear
  feature baseline, ridge least squares per task) and :func:`compute_advantages`.
* :func:`reinforce_loss` (the score-function surrogate) and :func:`dice_loss`
  (the same first derivative, and unbiased higher derivatives).
* :func:`maml_rl` (MAML with policy-gradient inner and outer updates) and
  :func:`pretrain_rl` (one policy trained by policy gradient on every task), both
  pluggable into :func:`metajax.make_train_step` with sampled :class:`RLTask` s, or
  into :func:`make_trust_region_step` for a TRPO outer update.

How the MAML-RL meta-gradient is estimated. The per-task objective is
``J_out(theta')`` with ``theta' = theta + alpha * grad J_in(theta)`` (ProMP's
"formulation II"), and its gradient is
``(I + alpha * hess J_in(theta)) grad J_out(theta')``. ``jax.grad`` differentiates the
outer surrogate through the inner update, so what matters is that the inner
surrogate's *gradient of the gradient* estimates ``hess J_in`` without bias. The
plain REINFORCE surrogate ``mean(log pi * A)`` (the original MAML code) gives only
``E[hess(log pi) A]`` and drops ``E[grad(log pi) grad(log pi)^T A]``, the part that
comes from the pre-update trajectories being sampled from ``pi_theta``. With
``meta_gradient="dice"`` (default) the inner surrogate is loaded DiCE
(Farquhar et al. 2019) with ``lambda = 1``:

.. math::

   L_\\text{in}(\\theta) = -\\frac{\\sum_{i,t} m_{it}\\,(\\square(S_{it}) - \\square(S_{i,t-1}))
   A_{it}}{\\sum_{i,t} m_{it}},\\quad S_{it} = \\sum_{t' \\le t} m_{it'}
   \\log\\pi_\\theta(a_{it'}|s_{it'}),\\quad \\square(x) = e^{x - \\perp(x)},

whose value is 0, whose gradient is the REINFORCE-with-baseline gradient, and whose
Hessian is ``sum_t A_t (hess log pi_t + grad S_t grad S_t^T - grad S_{t-1} grad
S_{t-1}^T)``, unbiased for the Hessian of the expected return (up to the baseline
and the per-step discounting of the advantages). ``meta_gradient="maml"`` uses the
plain surrogate (the paper's estimator) and ``"first_order"`` stops the inner
gradient. The E-MAML term ``E[J_out grad log p(tau_pre)]`` of "formulation I" is not
added.

The outer update is either a first-order optimiser (Adam in the recipe) on the
REINFORCE loss of the post-adaptation trajectories, through
:func:`metajax.make_train_step` (with one gradient step per sampled batch a
PPO-clipped surrogate has exactly this gradient: its ratio is 1 at the sampling
parameters), or the paper's TRPO, :func:`make_trust_region_step`: the episodes are
sampled once, the inner updates are replayed on the stored pre-adaptation episodes
as a deterministic function of the meta-parameters, and
:func:`metajax.trust_region.trust_region_update` takes a natural-gradient step on
the importance-weighted post-adaptation surrogate inside a KL ball around the
adapted policies (the MAML code's construction; radius 0.01).

References:
  Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning", ICML 2017 (sec. 5.3).
  Foerster et al., "DiCE: The Infinitely Differentiable Monte Carlo Estimator", 2018.
  Farquhar et al., "Loaded DiCE: Trading off Bias and Variance in Any-Order Score
  Function Estimators for Reinforcement Learning", NeurIPS 2019.
  Rothfuss et al., "ProMP: Proximal Meta-Policy Search", ICLR 2019.
  Duan et al., "Benchmarking Deep RL for Continuous Control" (rllab), ICML 2016.
  Schulman et al., "Trust Region Policy Optimization", ICML 2015.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from metajax.losses import weighted_mean
from metajax.models.mlp import MLP
from metajax.parallel import shard_tasks

Params = Any
MetaGradient = Literal["dice", "maml", "first_order"]
Sampler = Literal["episodes", "steps"]


# --------------------------------------------------------------------------- policies


class Policy(NamedTuple):
    """A stochastic policy as pure functions.

    Attributes:
      init: ``key -> params``.
      sample: ``(params, obs, key) -> action`` for one observation.
      log_prob: ``(params, obs, action) -> log pi(action | obs)``; broadcasts over
        leading axes of ``obs`` and ``action``.
      mean: ``(params, obs) -> the deterministic (mean) action``.
      kl: ``(old_params, params, obs) -> KL(pi_old(.|obs) || pi(.|obs))`` in closed
        form, broadcasting over leading axes of ``obs`` (for trust-region updates,
        :mod:`metajax.trust_region`); ``None`` if the policy has none.
    """

    init: Callable[[jax.Array], Params]
    sample: Callable[[Params, jax.Array, jax.Array], jax.Array]
    log_prob: Callable[[Params, jax.Array, jax.Array], jax.Array]
    mean: Callable[[Params, jax.Array], jax.Array]
    kl: Callable[[Params, Params, jax.Array], jax.Array] | None = None


def gaussian_mlp_policy(
    observation_size: int,
    action_size: int,
    hidden: Sequence[int] = (100, 100),
    *,
    action_scale: float = 1.0,
    init_log_std: float = 0.0,
) -> Policy:
    """A diagonal Gaussian policy: ReLU MLP mean and a learned, state-independent log-std.

    ``action = action_scale * (mlp(obs) + exp(log_std) * noise)``: with
    ``action_scale = max_speed`` this is rllab's ``normalize`` wrapper (the network
    acts in ``[-1, 1]`` units), as in the MAML paper's code. Log-probabilities are
    of the scaled action; the scale shifts them by a constant only.

    Args:
      observation_size: observation width.
      action_size: action width.
      hidden: hidden widths (paper: 100, 100).
      action_scale: factor from network units to environment units.
      init_log_std: initial log standard deviation (network units).

    Returns:
      A :class:`Policy` with params ``{"mlp": ..., "log_std": [action_size]}``.
    """
    model = MLP(hidden=tuple(hidden), outputs=action_size)

    def init(key):
        mlp = model.init(key, jnp.zeros((1, observation_size), jnp.float32))
        return {"mlp": mlp, "log_std": jnp.full((action_size,), init_log_std, jnp.float32)}

    def mean(params, obs):
        return action_scale * model.apply(params["mlp"], obs)

    def sample(params, obs, key):
        std = action_scale * jnp.exp(params["log_std"])
        return mean(params, obs) + std * jax.random.normal(key, (action_size,), jnp.float32)

    def log_prob(params, obs, action):
        log_std = params["log_std"] + math.log(action_scale)
        z = (action - mean(params, obs)) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * jnp.square(z) - log_std - 0.5 * math.log(2 * math.pi), axis=-1)

    def kl(old_params, params, obs):
        # Diagonal Gaussians; the common action_scale cancels in the log-std ratio
        # and divides out of the squared mean difference.
        old_log_std, log_std = old_params["log_std"], params["log_std"]
        diff = (mean(old_params, obs) - mean(params, obs)) / action_scale
        terms = (
            log_std
            - old_log_std
            + (jnp.exp(2 * old_log_std) + jnp.square(diff)) / (2 * jnp.exp(2 * log_std))
            - 0.5
        )
        return jnp.sum(terms, axis=-1)

    return Policy(init, sample, log_prob, mean, kl)


def categorical_mlp_policy(
    observation_size: int, num_actions: int, hidden: Sequence[int] = (32,)
) -> Policy:
    """A softmax policy over ``num_actions`` discrete actions with ReLU MLP logits.

    Actions are int32 scalars; ``mean`` returns the most likely action.
    """
    model = MLP(hidden=tuple(hidden), outputs=num_actions)

    def init(key):
        return {"mlp": model.init(key, jnp.zeros((1, observation_size), jnp.float32))}

    def logits(params, obs):
        return model.apply(params["mlp"], obs)

    def sample(params, obs, key):
        return jax.random.categorical(key, logits(params, obs)).astype(jnp.int32)

    def log_prob(params, obs, action):
        log_probs = jax.nn.log_softmax(logits(params, obs), axis=-1)
        return jnp.take_along_axis(log_probs, jnp.asarray(action)[..., None], axis=-1)[..., 0]

    def mean(params, obs):
        return jnp.argmax(logits(params, obs), axis=-1).astype(jnp.int32)

    def kl(old_params, params, obs):
        old = jax.nn.log_softmax(logits(old_params, obs), axis=-1)
        new = jax.nn.log_softmax(logits(params, obs), axis=-1)
        return jnp.sum(jnp.exp(old) * (old - new), axis=-1)

    return Policy(init, sample, log_prob, mean, kl)


# --------------------------------------------------------------------------- rollouts


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """One episode (or a batch of them, with leading axes), padded to ``horizon`` steps.

    Attributes:
      observations: ``[T, obs]`` the observation each action was taken in.
      actions: ``[T, act]``.
      rewards: ``[T]``, 0 at masked steps.
      masks: ``[T]`` 1 for steps taken before the episode ended (the step that ends
        it included), 0 after.
      dones: ``[T]`` 1 at the step that ended the episode.
      log_probs: ``[T]`` log-probabilities under the sampling parameters (constants).
      timesteps: ``None`` for one episode per row (the time step is the index along
        ``T``); for the streams of :func:`sample_step_budget`, where a row holds
        back-to-back episodes, ``[T]`` the time step within each step's episode.
    """

    observations: Any
    actions: Any
    rewards: Any
    masks: Any
    dones: Any
    log_probs: Any
    timesteps: Any = None

    def replace(self, **changes) -> Trajectory:
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    Trajectory,
    data_fields=["observations", "actions", "rewards", "masks", "dones", "log_probs", "timesteps"],
    meta_fields=[],
)


def rollout(
    env: Any,
    policy: Policy,
    params: Params,
    env_params: Any,
    key: jax.Array,
    horizon: int,
) -> Trajectory:
    """Plays one episode of at most ``horizon`` steps (``lax.scan`` over time).

    The environment keeps being stepped after ``done`` (fixed shapes); those steps
    get mask 0 and reward 0. Sampling does not differentiate: recompute
    ``policy.log_prob`` from the returned observations and actions for a loss.

    Args:
      env: an environment with ``reset``/``step`` (see the module docstring).
      policy: the :class:`Policy`.
      params: policy parameters.
      env_params: the task.
      key: a PRNG key.
      horizon: number of steps (a static int).

    Returns:
      A :class:`Trajectory` whose leaves have a leading ``[horizon]`` axis.
    """
    params = jax.lax.stop_gradient(params)
    reset_key, steps_key = jax.random.split(key)
    obs, state = env.reset(reset_key, env_params)

    def body(carry, step_key):
        obs, state, ended = carry
        action_key, env_key = jax.random.split(step_key)
        action = policy.sample(params, obs, action_key)
        log_prob = policy.log_prob(params, obs, action)
        next_obs, next_state, reward, done, _ = env.step(env_key, state, action, env_params)
        mask = 1.0 - ended.astype(jnp.float32)
        out = Trajectory(
            observations=obs,
            actions=action,
            rewards=mask * reward,
            masks=mask,
            dones=mask * done.astype(jnp.float32),
            log_probs=log_prob,
        )
        return (next_obs, next_state, ended | done), out

    carry = (obs, state, jnp.zeros((), bool))
    _, trajectory = jax.lax.scan(body, carry, jax.random.split(steps_key, horizon))
    return trajectory


def sample_trajectories(
    env: Any,
    policy: Policy,
    params: Params,
    env_params: Any,
    key: jax.Array,
    num_trajectories: int,
    horizon: int,
) -> Trajectory:
    """``num_trajectories`` independent episodes of one task (vmapped :func:`rollout`)."""
    keys = jax.random.split(key, num_trajectories)
    return jax.vmap(lambda k: rollout(env, policy, params, env_params, k, horizon))(keys)


def sample_step_budget(
    env: Any,
    policy: Policy,
    params: Params,
    env_params: Any,
    key: jax.Array,
    *,
    num_envs: int,
    num_steps: int,
    horizon: int,
) -> Trajectory:
    """rllab's vectorised sampler: a budget of steps, not a number of episodes.

    ``num_envs`` copies of the task's environment step in lockstep; each restarts as
    soon as its episode ends (at the goal, or after ``horizon`` steps). Sampling
    stops at the first lockstep step at which the *completed* episodes hold at least
    ``num_steps`` steps, and unfinished episodes are dropped (mask 0), as in
    ``sandbox/rocky/tf/samplers/vectorized_sampler.py`` of the MAML code. A task
    whose episodes end early therefore contributes more, shorter episodes. The MAML
    code meta-trains with one environment per task and ``20 x 100`` steps, and tests
    with 40 environments and 4000 steps.

    Returns:
      A :class:`Trajectory` whose leaves are ``[num_envs, L, ...]`` streams of
      back-to-back episodes, ``L = ceil(num_steps / num_envs) + horizon`` (enough
      to reach the budget whatever the episode lengths), with ``timesteps`` set and
      ``dones`` marking the last step of every kept episode.
    """
    if num_envs < 1 or num_steps < 1 or horizon < 1:
        raise ValueError(
            f"num_envs, num_steps and horizon must be positive; got {num_envs}, "
            f"{num_steps}, {horizon}."
        )
    params = jax.lax.stop_gradient(params)
    length = -(-num_steps // num_envs) + horizon

    def stream(key):
        reset_key, steps_key = jax.random.split(key)
        obs, state = env.reset(reset_key, env_params)

        def body(carry, step_key):
            obs, state, t = carry
            action_key, env_key, reset_key = jax.random.split(step_key, 3)
            action = policy.sample(params, obs, action_key)
            log_prob = policy.log_prob(params, obs, action)
            next_obs, next_state, reward, done, _ = env.step(env_key, state, action, env_params)
            done = done | (t + 1 >= horizon)
            reset_obs, reset_state = env.reset(reset_key, env_params)
            next_obs = jnp.where(done, reset_obs, next_obs)
            next_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), reset_state, next_state)
            out = (obs, action, reward, done, log_prob, t)
            return (next_obs, next_state, jnp.where(done, 0, t + 1)), out

        carry = (obs, state, jnp.zeros((), jnp.int32))
        return jax.lax.scan(body, carry, jax.random.split(steps_key, length))[1]

    obs, actions, rewards, done, log_probs, timesteps = jax.vmap(stream)(
        jax.random.split(key, num_envs)
    )
    done = done.astype(jnp.float32)
    # completed steps after each lockstep step; the sampler stops at the first step
    # (1-based) where they reach the budget
    completed = jnp.cumsum(jnp.sum(done * (timesteps + 1), axis=0))
    stop = jnp.argmax(completed >= num_steps) + 1

    def end_times(done_row):  # the 1-based lockstep step at which each step's episode ends
        def body(later, xs):
            t, d = xs
            end = jnp.where(d > 0, t + 1, later)
            return end, end

        times = jnp.arange(done_row.shape[0])
        return jax.lax.scan(body, jnp.int32(length + 1), (times, done_row), reverse=True)[1]

    masks = (jax.vmap(end_times)(done) <= stop).astype(jnp.float32)
    return Trajectory(
        observations=obs,
        actions=actions,
        rewards=masks * rewards,
        masks=masks,
        dones=masks * done,
        log_probs=log_probs,
        timesteps=timesteps,
    )


def make_sampler(
    env: Any,
    policy: Policy,
    sampler: Sampler,
    num_trajectories: int,
    horizon: int,
    envs_per_task: int = 1,
) -> Callable[[Params, Any, jax.Array], Trajectory]:
    """``sample(params, env_params, key)`` for one task's batch.

    ``"episodes"``: :func:`sample_trajectories`, ``num_trajectories`` episodes.
    ``"steps"``: :func:`sample_step_budget` with a budget of
    ``num_trajectories * horizon`` steps from ``envs_per_task`` environments.
    """
    if sampler == "episodes":
        return lambda params, env_params, key: sample_trajectories(
            env, policy, params, env_params, key, num_trajectories, horizon
        )
    if sampler == "steps":
        return lambda params, env_params, key: sample_step_budget(
            env,
            policy,
            params,
            env_params,
            key,
            num_envs=envs_per_task,
            num_steps=num_trajectories * horizon,
            horizon=horizon,
        )
    raise ValueError(f"sampler must be episodes or steps; got {sampler!r}.")


def episode_returns(trajectories: Trajectory) -> jax.Array:
    """Undiscounted return (sum of rewards) of each episode: ``[..., T] -> [...]``.

    For one episode per row; see :func:`mean_episode_return` for step-budget streams.
    """
    return jnp.sum(trajectories.rewards, axis=-1)


def mean_episode_return(trajectories: Trajectory) -> jax.Array:
    """Mean undiscounted return of a task's episodes: ``[..., N, T] -> [...]``.

    With one episode per row, the mean of :func:`episode_returns`; for the streams of
    :func:`sample_step_budget`, the mean over their completed episodes (rllab's
    ``AverageReturn``, weighted towards short episodes by their number).
    """
    if trajectories.timesteps is None:
        return episode_returns(trajectories).mean(-1)
    total = jnp.sum(trajectories.rewards * trajectories.masks, axis=(-2, -1))
    return total / jnp.maximum(jnp.sum(trajectories.dones, axis=(-2, -1)), 1.0)


# --------------------------------------------------------------------------- advantages


def discounted_returns(
    rewards: ArrayLike, masks: ArrayLike, discount: float, dones: ArrayLike | None = None
) -> jax.Array:
    """Returns-to-go ``G_t = sum_{t' >= t} discount^(t'-t) r_t'`` within the episode.

    Args:
      rewards: ``[T]`` (or ``[..., T]``).
      masks: same shape; steps with mask 0 contribute nothing.
      discount: the discount factor.
      dones: for rows of back-to-back episodes (:func:`sample_step_budget`), 1 at
        the last step of each episode: the sum restarts there. ``None``: one
        episode per row.

    Returns:
      ``[..., T]`` returns-to-go (0 at masked steps).
    """
    rewards = jnp.asarray(rewards) * jnp.asarray(masks)
    masks = jnp.asarray(masks)
    carry_on = masks if dones is None else masks * (1.0 - jnp.asarray(dones))

    def body(future, xs):
        reward, mask, keep = xs
        value = mask * reward + keep * discount * future
        return value, value

    moved = tuple(jnp.moveaxis(x, -1, 0) for x in (rewards, masks, carry_on))
    _, returns = jax.lax.scan(
        body, jnp.zeros(rewards.shape[:-1], rewards.dtype), moved, reverse=True
    )
    return jnp.moveaxis(returns, 0, -1)


def baseline_features(observations: ArrayLike, timesteps: ArrayLike | None = None) -> jax.Array:
    """rllab's linear-baseline features of one episode ``[T, obs] -> [T, 2 * obs + 4]``.

    ``[o, o^2, t/100, (t/100)^2, (t/100)^3, 1]`` with ``o`` clipped to ``[-10, 10]``;
    ``t`` is the index along ``T``, or ``timesteps`` (``[..., T]``, the step within
    each episode) where given.
    """
    obs = jnp.clip(jnp.asarray(observations, jnp.float32), -10.0, 10.0)
    if timesteps is None:
        time = (jnp.arange(obs.shape[-2], dtype=jnp.float32) / 100.0)[:, None]
    else:
        time = (jnp.asarray(timesteps, jnp.float32) / 100.0)[..., None]
    time = jnp.broadcast_to(time, obs.shape[:-1] + (1,))
    ones = jnp.ones_like(time)
    return jnp.concatenate([obs, obs**2, time, time**2, time**3, ones], axis=-1)


def linear_feature_baseline(
    observations: ArrayLike,
    returns: ArrayLike,
    masks: ArrayLike,
    reg_coeff: float = 1e-5,
    timesteps: ArrayLike | None = None,
    solve: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Fits rllab's linear feature baseline to one task's episodes and predicts it.

    Solves the ridge problem ``min_w sum_{i,t} m_it (f_it . w - G_it)^2 + reg ||w||^2``
    over the valid steps of all the task's episodes (as a least-squares problem on
    the stacked system, which is better conditioned in float32 than the normal
    equations; solved by :func:`householder_lstsq`, in plain XLA operations), and
    returns the fitted values. The fit is data: no gradient flows through it.

    Args:
      observations: ``[N, T, obs]``.
      returns: ``[N, T]`` returns-to-go.
      masks: ``[N, T]``.
      reg_coeff: ridge coefficient (rllab: 1e-5).
      timesteps: ``[N, T]`` step within the episode, for streams of back-to-back
        episodes (:func:`baseline_features`).
      solve: ``(a, b) -> argmin_x ||a x - b||``; default :func:`householder_lstsq`
        (``lambda a, b: jnp.linalg.lstsq(a, b)[0]`` is LAPACK's, which can deadlock
        when vmapped on a small XLA:CPU thread pool; see there).

    Returns:
      ``[N, T]`` baseline values.
    """
    observations, returns, masks = jax.lax.stop_gradient(
        (jnp.asarray(observations), jnp.asarray(returns), jnp.asarray(masks))
    )
    features = baseline_features(observations, timesteps)
    num_features = features.shape[-1]
    flat = features.reshape(-1, num_features)
    root = jnp.sqrt(masks.reshape(-1, 1))
    ridge = math.sqrt(reg_coeff) * jnp.eye(num_features, dtype=flat.dtype)
    system = jnp.concatenate([root * flat, ridge])
    target = jnp.concatenate([root[:, 0] * returns.reshape(-1), jnp.zeros_like(ridge[0])])
    weights = (householder_lstsq if solve is None else solve)(system, target)
    return features @ weights


def householder_lstsq(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """``argmin_x ||a x - b||`` for a tall ``a`` ``[M, N]`` of full column rank.

    Householder QR and back substitution written as ``lax.fori_loop`` over the ``N``
    columns, so the program holds no LAPACK call. On XLA:CPU a vmapped
    ``jnp.linalg.lstsq`` is a batched LAPACK SVD custom call that splits its batch
    over the intra-op thread pool it runs on and waits; two of them running at
    once on a two-thread pool wait for each other forever (seen with jaxlib 0.10.2
    on two cores: the TRPO step on PointRobot hung from a meta-batch of 8 tasks; on
    2D navigation it never did). Householder QR is backward stable like the SVD, and
    solves the given problem without truncating small singular values. It computes in
    the inputs' floating dtype, at least float32 (float64 inputs under x64 stay float64).
    """
    dtype = jnp.promote_types(jnp.result_type(a, b), jnp.float32)
    a = jnp.asarray(a, dtype)
    b = jnp.asarray(b, dtype)
    rows, cols = a.shape
    if rows < cols:
        raise ValueError(
            f"householder_lstsq needs at least as many rows as columns; got {a.shape}."
        )
    index = jnp.arange(rows)

    def reflect(k, ab):
        a, b = ab
        x = jnp.where(index >= k, a[:, k], 0.0)
        norm = jnp.sqrt(jnp.sum(jnp.square(x)))
        alpha = jnp.where(x[k] > 0, -norm, norm)  # the sign that avoids cancellation
        v = x.at[k].add(-alpha)
        vv = jnp.sum(jnp.square(v))
        scale = jnp.where(vv > 0, 2.0 / jnp.where(vv > 0, vv, 1.0), 0.0)
        a = a - scale * jnp.outer(v, v @ a)
        b = b - scale * v * (v @ b)
        return a, b

    a, b = jax.lax.fori_loop(0, cols, reflect, (a, b))
    r, qtb = a[:cols], b[:cols]

    def substitute(j, x):
        i = cols - 1 - j  # x[i + 1:] is solved, x[: i + 1] still 0
        return x.at[i].set((qtb[i] - r[i] @ x) / r[i, i])

    return jax.lax.fori_loop(0, cols, substitute, jnp.zeros((cols,), dtype))


def compute_advantages(
    trajectories: Trajectory, discount: float, *, normalize: bool = True
) -> tuple[jax.Array, jax.Array]:
    """Returns-to-go and advantages of one task's episodes (``[N, T]`` each).

    ``A = G - b`` with ``b`` the per-task :func:`linear_feature_baseline`; with
    ``normalize`` (rllab's ``center_adv``) the advantages are standardised over the
    task's valid steps. Both are constants (no gradient).
    """
    streams = trajectories.timesteps is not None
    returns = discounted_returns(
        trajectories.rewards, trajectories.masks, discount, trajectories.dones if streams else None
    )
    baseline = linear_feature_baseline(
        trajectories.observations, returns, trajectories.masks, timesteps=trajectories.timesteps
    )
    advantages = returns - baseline
    masks = trajectories.masks
    if normalize:
        mean = weighted_mean(advantages, masks)
        std = jnp.sqrt(weighted_mean(jnp.square(advantages - mean), masks))
        advantages = (advantages - mean) / (std + 1e-8)
    advantages = masks_zero(advantages, trajectories.masks)
    return jax.lax.stop_gradient(returns), jax.lax.stop_gradient(advantages)


def masks_zero(values: jax.Array, masks: jax.Array) -> jax.Array:
    """``values`` where ``masks > 0``, else 0 (``where``, so NaNs stay out)."""
    return jnp.where(masks > 0, values, 0.0)


# --------------------------------------------------------------------------- losses


def reinforce_loss(log_probs: ArrayLike, advantages: ArrayLike, masks: ArrayLike) -> jax.Array:
    """The REINFORCE surrogate ``-sum m log pi A / sum m`` (a masked per-sample mean).

    Its gradient is the vanilla policy gradient (with whatever baseline ``A`` has),
    averaged over valid time steps as rllab's VPG does.
    """
    return -weighted_mean(jnp.asarray(log_probs) * advantages, masks)


def magic_box(x: jax.Array) -> jax.Array:
    """DiCE's ``exp(x - stop_gradient(x))``: 1 in value, ``d box(x) = box(x) dx``."""
    return jnp.exp(x - jax.lax.stop_gradient(x))


def dice_loss(
    log_probs: ArrayLike, advantages: ArrayLike, masks: ArrayLike, dones: ArrayLike | None = None
) -> jax.Array:
    """Loaded-DiCE surrogate (lambda = 1): REINFORCE's gradient, unbiased Hessian.

    ``-sum_{i,t} m_it (box(S_it) - box(S_i,t-1)) A_it / sum m`` with ``S`` the
    cumulative masked log-probability of the episode up to ``t`` (0 before the
    episode's first step). Its value is 0. See the module docstring.

    Args:
      log_probs: ``[..., T]`` log-probabilities under the parameters differentiated.
      advantages: ``[..., T]`` constants.
      masks: ``[..., T]``.
      dones: for rows of back-to-back episodes (:func:`sample_step_budget`), 1 at
        the last step of each episode, where ``S`` restarts: a reward depends only
        on its own episode's actions. ``None``: one episode per row.
    """
    log_probs = masks_zero(jnp.asarray(log_probs), masks)
    if dones is None:
        cumulative = jnp.cumsum(log_probs, axis=-1)
        previous = jnp.concatenate(
            [jnp.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], axis=-1
        )
    else:
        # S_t = S_{t-1} (1 - done_{t-1}) + log pi_t: an associative linear recurrence
        keep = jnp.concatenate(
            [jnp.zeros_like(log_probs[..., :1]), 1.0 - jnp.asarray(dones)[..., :-1]], axis=-1
        )

        def combine(a, b):
            return a[0] * b[0], b[0] * a[1] + b[1]

        cumulative = jax.lax.associative_scan(combine, (keep, log_probs), axis=-1)[1]
        previous = keep * jnp.concatenate(
            [jnp.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], axis=-1
        )
    return -weighted_mean((magic_box(cumulative) - magic_box(previous)) * advantages, masks)


def trajectory_log_probs(policy: Policy, params: Params, trajectories: Trajectory) -> jax.Array:
    """Recomputes ``log pi_params(a | s)`` for every step of ``trajectories``."""
    return policy.log_prob(params, trajectories.observations, trajectories.actions)


# --------------------------------------------------------------------------- MAML-RL


@dataclasses.dataclass(frozen=True)
class RLTask:
    """One RL task: environment parameters and the key its episodes are drawn with."""

    env_params: Any
    key: Any


jax.tree_util.register_dataclass(RLTask, data_fields=["env_params", "key"], meta_fields=[])


def rl_task_sampler(sample_env_params: Callable[[jax.Array], Any]) -> Callable:
    """``key -> RLTask`` from a task distribution ``key -> env_params``."""

    def sample(key):
        params_key, episodes_key = jax.random.split(key)
        return RLTask(sample_env_params(params_key), episodes_key)

    return sample


class RLMetaLearner(NamedTuple):
    """MAML-RL (or its pretraining baseline) as pure functions.

    Attributes:
      init: ``params -> meta_params`` (the identity).
      loss: ``(meta_params, task, step=None) -> (loss, aux)`` for one :class:`RLTask`;
        ``aux`` has ``return_pre`` and ``return_post`` (mean undiscounted episode
        return before and after adaptation).
      adapt: ``(meta_params, task, *, steps, later_lr_scale=1.0, observe=None) ->
        (params, AdaptationResult)``; ``later_lr_scale`` scales the inner step size of
        every step after the first; ``observe(params)`` is recorded for the parameters
        of every batch (:attr:`AdaptationResult.observations`).
      params: ``meta_params -> params``.
      loss_fn: unused (``make_train_step(..., pre_adaptation_metrics=False)``).
      inner_steps: inner steps used in training.
      trust_region: the :class:`TrustRegionObjectives` of a TRPO outer update
        (:func:`make_trust_region_step`).
    """

    init: Callable
    loss: Callable
    adapt: Callable
    params: Callable
    loss_fn: Any
    inner_steps: int
    trust_region: TrustRegionObjectives | None = None


class TrustRegionObjectives(NamedTuple):
    """A learner's objectives for a TRPO outer step, on episodes sampled once.

    Attributes:
      collect: ``(meta_params, task) -> (data, aux)``: samples the task's episodes
        with the current meta-parameters (and, for MAML-RL, adapts) and keeps what the
        other two functions need; ``aux`` as :attr:`RLMetaLearner.loss`'s.
      loss: ``(meta_params, data) -> scalar``: the importance-weighted surrogate
        ``-sum m (pi / pi_old) A / sum m`` of the episodes the outer objective is
        measured on, as a function of the meta-parameters. Its gradient at the
        sampling meta-parameters equals that of :attr:`RLMetaLearner.loss`.
      kl: ``(meta_params, data) -> scalar``: the mean KL divergence, over those
        episodes' valid steps, from the policy that sampled them.
    """

    collect: Callable
    loss: Callable
    kl: Callable


class AdaptationResult(NamedTuple):
    """What :func:`maml_rl`'s ``adapt`` observed.

    Attributes:
      returns: ``[steps + 1]`` mean undiscounted return of the episodes sampled after
        0, 1, ..., ``steps`` inner updates.
      trajectories: those episodes, each leaf ``[steps + 1, N, T, ...]``.
      observations: ``observe(params)`` of the parameters that sampled them (after 0,
        1, ..., ``steps`` updates), each leaf stacked along a leading ``[steps + 1]``
        axis; ``None`` without an observer (as :func:`metajax.inner.adapt`'s).
    """

    returns: jax.Array
    trajectories: Trajectory
    observations: Any = None


def maml_rl(
    env: Any,
    policy: Policy,
    *,
    inner_lr: float = 0.1,
    inner_steps: int = 1,
    num_trajectories: int = 20,
    horizon: int = 100,
    discount: float = 0.99,
    meta_gradient: MetaGradient = "dice",
    normalize_advantages: bool = True,
    sampler: Sampler = "episodes",
    envs_per_task: int = 1,
) -> RLMetaLearner:
    """MAML for reinforcement learning with policy-gradient inner and outer updates.

    Per task: sample ``num_trajectories`` episodes with ``theta``, fit the linear
    baseline, take an inner step ``theta' = theta - inner_lr * grad L_in(theta)``
    (REINFORCE with the baseline; ``L_in`` is :func:`dice_loss` for
    ``meta_gradient="dice"``), repeat ``inner_steps`` times, then sample episodes
    with ``theta'`` and return the REINFORCE surrogate on them at ``theta'``: its
    gradient with respect to ``theta`` flows through the inner updates.

    Args:
      env: environment (gymnax API, see the module docstring).
      policy: the :class:`Policy`.
      inner_lr: inner step size (paper: 0.1).
      inner_steps: inner updates in training (paper: 1).
      num_trajectories: episodes per inner step and for the outer loss (paper: 20).
      horizon: episode length cap (paper: 100).
      discount: discount of the returns-to-go (rllab: 0.99).
      meta_gradient: ``"dice"``, ``"maml"`` or ``"first_order"`` (module docstring).
      normalize_advantages: standardise advantages per task (rllab ``center_adv``).
      sampler: ``"episodes"``: ``num_trajectories`` episodes per batch; ``"steps"``:
        a budget of ``num_trajectories * horizon`` steps of completed episodes from
        ``envs_per_task`` lockstep environments (:func:`sample_step_budget`, the
        MAML code's sampler; it meta-trains with one environment per task).
      envs_per_task: lockstep environments per task for ``sampler="steps"``.

    Returns:
      An :class:`RLMetaLearner` for :func:`metajax.make_train_step`.

    Reference: Finn, Abbeel, Levine, ICML 2017, Algorithm 3.
    """
    if meta_gradient not in ("dice", "maml", "first_order"):
        raise ValueError(f"meta_gradient must be dice, maml or first_order; got {meta_gradient!r}.")
    inner_surrogate = dice_loss if meta_gradient == "dice" else reinforce_loss
    sample = make_sampler(env, policy, sampler, num_trajectories, horizon, envs_per_task)

    def inner_step(params, trajectories, surrogate, lr=inner_lr, advantages=None):
        if advantages is None:
            _, advantages = compute_advantages(
                trajectories, discount, normalize=normalize_advantages
            )
        # streams of back-to-back episodes: DiCE's cumulative log-probability restarts
        # with each episode
        streams = surrogate is dice_loss and trajectories.timesteps is not None
        extra = {"dones": trajectories.dones} if streams else {}

        def loss(p):
            log_probs = trajectory_log_probs(policy, p, trajectories)
            return surrogate(log_probs, advantages, trajectories.masks, **extra)

        grads = jax.grad(loss)(params)
        if meta_gradient == "first_order":
            grads = jax.lax.stop_gradient(grads)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads)

    def adapt(
        meta_params,
        task: RLTask,
        *,
        steps: int | None = None,
        surrogate=reinforce_loss,
        later_lr_scale: float = 1.0,
        observe: Callable[[Params], Any] | None = None,
    ):
        # later_lr_scale multiplies the step size of every inner step after the first
        # (the paper halves it at test time: later_lr_scale=0.5). observe, if given, is
        # applied to the parameters that sample each batch (AdaptationResult).
        steps = inner_steps if steps is None else steps
        keys = jax.random.split(task.key, steps + 1)
        lrs = inner_lr * jnp.where(jnp.arange(steps) == 0, 1.0, later_lr_scale)
        look = observe if observe is not None else lambda params: None

        def body(params, xs):
            key, lr = xs
            trajectories = sample(params, task.env_params, key)
            new = inner_step(params, trajectories, surrogate, lr)
            return new, (trajectories, look(params))

        params, seen = jax.lax.scan(body, meta_params, (keys[:-1], lrs))
        final = (sample(params, task.env_params, keys[-1]), look(params))
        trajectories, observations = jax.tree.map(
            lambda a, b: jnp.concatenate([a, b[None]]), seen, final
        )
        return params, AdaptationResult(
            mean_episode_return(trajectories), trajectories, observations
        )

    def loss(meta_params, task: RLTask, step=None):
        del step
        params, result = adapt(meta_params, task, surrogate=inner_surrogate)
        post = jax.tree.map(lambda x: x[-1], result.trajectories)
        _, advantages = compute_advantages(post, discount, normalize=normalize_advantages)
        outer = reinforce_loss(trajectory_log_probs(policy, params, post), advantages, post.masks)
        aux = {"return_pre": result.returns[0], "return_post": result.returns[-1]}
        return outer, aux

    # TRPO outer step (MAML's code): sample and adapt once, then treat the inner
    # updates as a deterministic function of the meta-parameters, replayed on the
    # stored pre-adaptation episodes, so the line search can re-evaluate the
    # post-adaptation surrogate and KL at candidate meta-parameters.
    def collect(meta_params, task: RLTask):
        meta_params = jax.lax.stop_gradient(meta_params)
        params, result = adapt(meta_params, task, surrogate=inner_surrogate)
        pre = jax.tree.map(lambda x: x[:-1], result.trajectories)
        post = jax.tree.map(lambda x: x[-1], result.trajectories)
        advantages = lambda t: compute_advantages(t, discount, normalize=normalize_advantages)[1]  # noqa: E731
        data = {
            "pre": pre,
            "pre_advantages": jax.vmap(advantages)(pre),  # the baselines are fitted once
            "post": post,
            "advantages": advantages(post),
            "adapted": params,
        }
        aux = {"return_pre": result.returns[0], "return_post": result.returns[-1]}
        return data, aux

    def replay(meta_params, data):
        def body(params, xs):
            trajectories, advantages = xs
            return inner_step(params, trajectories, inner_surrogate, advantages=advantages), None

        return jax.lax.scan(body, meta_params, (data["pre"], data["pre_advantages"]))[0]

    def trust_region_loss(meta_params, data):
        return _importance_surrogate(policy, replay(meta_params, data), data)

    def trust_region_kl(meta_params, data):
        return _policy_kl(policy, data["adapted"], replay(meta_params, data), data["post"])

    return RLMetaLearner(
        init=lambda params: params,
        loss=loss,
        adapt=adapt,
        params=lambda meta_params: meta_params,
        loss_fn=None,
        inner_steps=inner_steps,
        trust_region=TrustRegionObjectives(collect, trust_region_loss, trust_region_kl),
    )


def _importance_surrogate(policy: Policy, params: Params, data) -> jax.Array:
    post = data["post"]
    ratio = jnp.exp(trajectory_log_probs(policy, params, post) - post.log_probs)
    return -weighted_mean(masks_zero(ratio, post.masks) * data["advantages"], post.masks)


def _policy_kl(policy: Policy, old_params: Params, params: Params, trajectories) -> jax.Array:
    if policy.kl is None:
        raise ValueError("a trust-region update needs a policy with a closed-form kl.")
    old_params = jax.lax.stop_gradient(old_params)
    kl = policy.kl(old_params, params, trajectories.observations)
    return weighted_mean(masks_zero(kl, trajectories.masks), trajectories.masks)


def pretrain_rl(
    env: Any,
    policy: Policy,
    *,
    inner_lr: float = 0.1,
    inner_steps: int = 1,
    num_trajectories: int = 20,
    horizon: int = 100,
    discount: float = 0.99,
    normalize_advantages: bool = True,
    sampler: Sampler = "episodes",
    envs_per_task: int = 1,
) -> RLMetaLearner:
    """The "pretrained on all tasks" baseline: one policy trained by policy gradient.

    The training loss of a task is the REINFORCE surrogate (with the per-task
    baseline) on episodes sampled with the current parameters; averaging over the
    meta-batch gives the policy gradient of the expected return over the task
    distribution. ``adapt`` is :func:`maml_rl`'s, so evaluation is identical.
    """
    learner = maml_rl(
        env,
        policy,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        num_trajectories=num_trajectories,
        horizon=horizon,
        discount=discount,
        meta_gradient="first_order",
        normalize_advantages=normalize_advantages,
        sampler=sampler,
        envs_per_task=envs_per_task,
    )
    sample = make_sampler(env, policy, sampler, num_trajectories, horizon, envs_per_task)

    def loss(params, task: RLTask, step=None):
        del step
        data, aux = collect(params, task)  # sampled data: no gradient flows through it
        trajectories = data["post"]
        log_probs = trajectory_log_probs(policy, params, trajectories)
        return reinforce_loss(log_probs, data["advantages"], trajectories.masks), aux

    def collect(params, task: RLTask):
        params = jax.lax.stop_gradient(params)
        trajectories = sample(params, task.env_params, task.key)
        _, advantages = compute_advantages(trajectories, discount, normalize=normalize_advantages)
        value = mean_episode_return(trajectories)
        data = {"post": trajectories, "advantages": advantages, "adapted": params}
        return data, {"return_pre": value, "return_post": value}

    return learner._replace(
        loss=loss,
        trust_region=TrustRegionObjectives(
            collect,
            lambda params, data: _importance_surrogate(policy, params, data),
            lambda params, data: _policy_kl(policy, data["adapted"], params, data["post"]),
        ),
    )


def make_trust_region_step(
    learner: RLMetaLearner,
    *,
    sample_tasks: Callable[[jax.Array], RLTask],
    meta_batch: int,
    max_kl: float = 0.01,
    cg_iters: int = 10,
    cg_damping: float = 1e-5,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
) -> Callable:
    """A meta-training step whose outer update is TRPO's (:mod:`metajax.trust_region`).

    The MAML paper's outer optimiser for RL (KL radius 0.01). Per step: draw
    ``meta_batch`` tasks from ``fold_in(state.rng, state.step)`` (as
    :func:`metajax.make_train_step`), ``collect`` each task's episodes, then one
    :func:`~metajax.trust_region.trust_region_update` of the meta-parameters on the
    task-mean surrogate and KL of :class:`TrustRegionObjectives`. The state's
    ``opt_state`` is unused (build it with ``optax.identity()``).

    Several devices: as :func:`metajax.make_train_step`'s sampling steps, wrap it in
    :func:`metajax.parallel.shard_train_step`. The task keys are then sharded over
    the mesh's ``"tasks"`` axis (:func:`metajax.parallel.shard_tasks`), so every device
    samples and rolls out only its own tasks, and the task means of the surrogate, of
    the KL and of their gradients and Hessian-vector products (every conjugate-gradient
    iteration, every line-search try) become all-reduces; the meta-parameters stay
    replicated. A meta-batch that does not divide the device count is padded with
    weightless tasks.

    Returns:
      ``step(state) -> (state, metrics)`` with ``return_pre``, ``return_post``,
      ``meta_loss`` (the surrogate before the step), ``surrogate_after``, ``kl``,
      ``backtracks``, ``accepted``, ``grad_norm`` and ``step_norm``.
    """
    from metajax import trust_region  # noqa: PLC0415  (keeps rl importable on its own)

    if learner.trust_region is None:
        raise ValueError("this learner has no trust_region objectives.")
    if meta_batch < 1:
        raise ValueError(f"meta_batch must be >= 1, got {meta_batch}.")
    objectives = learner.trust_region

    def step(state):
        keys = jax.random.split(jax.random.fold_in(state.rng, state.step), meta_batch)
        keys, weights = shard_tasks(keys)  # sharded (and padded) under a mesh

        def task_mean(values):  # [tasks, ...] -> [...]; padding tasks have weight 0
            if weights is None:
                return jnp.mean(values, axis=0)
            return jnp.tensordot(weights, values, axes=1) / jnp.sum(weights)

        tasks = jax.vmap(sample_tasks)(keys)
        data, aux = jax.vmap(objectives.collect, in_axes=(None, 0))(state.meta_params, tasks)

        def mean_over_tasks(fn):
            return lambda p: task_mean(jax.vmap(fn, in_axes=(None, 0))(p, data))

        meta_params, info = trust_region.trust_region_update(
            mean_over_tasks(objectives.loss),
            mean_over_tasks(objectives.kl),
            state.meta_params,
            max_kl=max_kl,
            cg_iters=cg_iters,
            cg_damping=cg_damping,
            backtrack_ratio=backtrack_ratio,
            max_backtracks=max_backtracks,
        )
        metrics = {k: jnp.mean(task_mean(v)) for k, v in aux.items()}
        metrics.update(
            meta_loss=info.loss_before,
            surrogate_after=info.loss_after,
            kl=info.kl,
            backtracks=info.backtracks,
            accepted=info.accepted,
            grad_norm=info.grad_norm,
            step_norm=info.step_norm,
        )
        return state.replace(step=state.step + 1, meta_params=meta_params), metrics

    return step


__all__ = [
    "AdaptationResult",
    "Policy",
    "RLMetaLearner",
    "RLTask",
    "Trajectory",
    "TrustRegionObjectives",
    "baseline_features",
    "categorical_mlp_policy",
    "compute_advantages",
    "dice_loss",
    "discounted_returns",
    "episode_returns",
    "gaussian_mlp_policy",
    "linear_feature_baseline",
    "magic_box",
    "make_sampler",
    "make_trust_region_step",
    "maml_rl",
    "mean_episode_return",
    "pretrain_rl",
    "reinforce_loss",
    "rl_task_sampler",
    "rollout",
    "sample_step_budget",
    "sample_trajectories",
    "trajectory_log_probs",
]
