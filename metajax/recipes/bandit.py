"""MAML-RL on bandits, compared with Thompson sampling.

Tasks (``env``): ``bernoulli``, 5-armed Bernoulli bandits with arm probabilities
i.i.d. uniform in ``[0, 1]`` (:class:`metajax.envs.BernoulliBandit`); or gymnax's
two-armed ``BernoulliBandit-misc`` and ``GaussianBandit-misc``
(:class:`metajax.envs.gymnax_adapter.GymnaxBandit`, ``gymnax-bernoulli`` and
``gymnax-gaussian``), whose Thompson sampling uses the task distribution's own
prior for the Gaussian one. The meta-learned agent is a softmax policy (ReLU MLP on a constant
input) adapted by :func:`metajax.rl.maml_rl`: it pulls ``num_trajectories`` arms,
takes one REINFORCE step with the linear baseline, pulls again, and so on. The
evaluation reports the mean reward per pull in each block of ``num_trajectories``
pulls (block ``k`` is played after ``k`` inner steps) on held-out bandits, next to
Thompson sampling with a uniform Beta(1, 1) prior (updated after every pull, so it
adapts more often than the policy-gradient agents), a random initialisation with
the same adaptation, uniform play and the best arm.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import rl
from metajax.envs import BernoulliBandit, sample_bandit_params
from metajax.runner import restore_run, run_training
from metajax.train import TrainState, init_train_state, jit_train_step, make_train_step


@dataclasses.dataclass(frozen=True)
class BanditTrain:
    """Meta-train a bandit policy with MAML-RL.

    Attributes:
      workdir: run directory.
      env: ``bernoulli`` (metajax's K-armed bandit, probabilities uniform in [0, 1]),
        ``gymnax-bernoulli`` or ``gymnax-gaussian`` (gymnax's two-armed bandits; need
        ``pip install metajax[rl]``).
      arms: number of arms (``bernoulli`` only; gymnax's bandits have 2).
      steps: meta-iterations.
      meta_batch: bandits per meta-step.
      num_trajectories: pulls per inner step (and for the outer loss).
      inner_lr: inner REINFORCE step size.
      inner_steps: inner steps in meta-training.
      outer_lr: Adam learning rate.
      meta_gradient: ``dice``, ``maml`` or ``first_order``.
      hidden: policy hidden widths.
      seed: seed of initialisation and task sampling.
      log_every: metrics period.
      checkpoint_every: checkpoint period.
      progress: show a progress bar.
    """

    workdir: str = "runs/bandit/maml"
    env: Literal["bernoulli", "gymnax-bernoulli", "gymnax-gaussian"] = "bernoulli"
    arms: int = 5
    steps: int = 500
    meta_batch: int = 20
    num_trajectories: int = 20
    inner_lr: float = 0.5
    inner_steps: int = 1
    outer_lr: float = 1e-2
    meta_gradient: rl.MetaGradient = "dice"
    hidden: tuple[int, ...] = (32,)
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 100
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class BanditEval:
    """Evaluate a bandit run against Thompson sampling on held-out bandits.

    Attributes:
      workdir: the MAML run.
      steps: inner steps (so ``steps + 1`` blocks of pulls).
      num_tasks: held-out bandits.
      seed: seed of the held-out bandits.
    """

    workdir: str = "runs/bandit/maml"
    steps: int = 3
    num_tasks: int = 1000
    seed: int = 12345


GYMNAX_BANDITS = {
    "gymnax-bernoulli": "BernoulliBandit-misc",
    "gymnax-gaussian": "GaussianBandit-misc",
}


def make_env(cfg: BanditTrain):
    if cfg.env == "bernoulli":
        return BernoulliBandit()
    if cfg.env not in GYMNAX_BANDITS:
        raise ValueError(
            f"env must be bernoulli or one of {sorted(GYMNAX_BANDITS)}; got {cfg.env!r}."
        )
    from metajax.envs.gymnax_adapter import make_gymnax_bandit  # noqa: PLC0415

    return make_gymnax_bandit(GYMNAX_BANDITS[cfg.env])


def num_arms(cfg: BanditTrain) -> int:
    return cfg.arms if cfg.env == "bernoulli" else 2


def build(cfg: BanditTrain):
    env = make_env(cfg)
    policy = rl.categorical_mlp_policy(env.observation_size, num_arms(cfg), cfg.hidden)
    learner = rl.maml_rl(
        env,
        policy,
        inner_lr=cfg.inner_lr,
        inner_steps=cfg.inner_steps,
        num_trajectories=cfg.num_trajectories,
        horizon=1,
        discount=1.0,
        meta_gradient=cfg.meta_gradient,
    )
    return env, policy, learner


def _sampler(cfg: BanditTrain):
    if cfg.env == "bernoulli":
        return rl.rl_task_sampler(lambda key: sample_bandit_params(key, cfg.arms))
    return rl.rl_task_sampler(make_env(cfg).sample_params)


def initial_state(cfg: BanditTrain) -> tuple[TrainState, optax.GradientTransformation]:
    _, policy, learner = build(cfg)
    init_key, task_key = jax.random.split(jax.random.key(cfg.seed))
    outer = optax.adam(cfg.outer_lr)
    return init_train_state(learner, policy.init(init_key), outer, task_key), outer


def train(cfg: BanditTrain) -> TrainState:
    """Meta-trains (or resumes) a bandit run."""
    _, _, learner = build(cfg)
    state, outer = initial_state(cfg)
    step = make_train_step(
        learner,
        outer,
        sample_tasks=_sampler(cfg),
        meta_batch=cfg.meta_batch,
        pre_adaptation_metrics=False,
    )
    return run_training(
        workdir=cfg.workdir,
        state=state,
        train_step=jit_train_step(step),
        num_steps=cfg.steps,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        config=dataclasses.asdict(cfg),
        progress=cfg.progress,
        plot=False,
        description=f"bandit/{cfg.env}/maml",
    )


def thompson_sampling(key: jax.Array, probs: jax.Array, pulls: int) -> jax.Array:
    """Rewards ``[pulls]`` of Beta(1, 1) Thompson sampling on one Bernoulli bandit."""

    def body(carry, key):
        successes, failures = carry
        sample_key, reward_key = jax.random.split(key)
        arm = jnp.argmax(jax.random.beta(sample_key, successes, failures))
        reward = jax.random.bernoulli(reward_key, probs[arm]).astype(jnp.float32)
        one_hot = jax.nn.one_hot(arm, probs.shape[0])
        return (successes + reward * one_hot, failures + (1 - reward) * one_hot), reward

    ones = jnp.ones_like(probs)
    _, rewards = jax.lax.scan(body, (ones, ones), jax.random.split(key, pulls))
    return rewards


def gaussian_thompson_sampling(
    key: jax.Array,
    mu: jax.Array,
    pulls: int,
    *,
    prior_mean: float = -1.0,
    prior_std: float = 1.0,
    noise_std: float = 0.1,
) -> jax.Array:
    """Rewards ``[pulls]`` of Thompson sampling on gymnax's Gaussian bandit.

    Arm 0 pays 0; arm 1 pays ``N(mu, noise_std^2)``. The posterior over ``mu`` starts
    at the task distribution's prior ``N(prior_mean, prior_std^2)`` (gymnax's
    ``mean_mu``, ``sigma_p``) and is updated in closed form after each pull of arm 1;
    each pull plays arm 1 if a posterior sample of ``mu`` is above 0.
    """

    def body(carry, key):
        mean, precision = carry
        sample_key, reward_key = jax.random.split(key)
        sample = mean + jax.random.normal(sample_key) / jnp.sqrt(precision)
        pull = sample > 0
        observed = mu + noise_std * jax.random.normal(reward_key)
        new_precision = precision + 1.0 / noise_std**2
        new_mean = (precision * mean + observed / noise_std**2) / new_precision
        carry = (jnp.where(pull, new_mean, mean), jnp.where(pull, new_precision, precision))
        return carry, jnp.where(pull, observed, 0.0)

    init = (jnp.float32(prior_mean), jnp.float32(1.0 / prior_std**2))
    _, rewards = jax.lax.scan(body, init, jax.random.split(key, pulls))
    return rewards


def thompson_rewards(train_cfg: BanditTrain, env, tasks, pulls: int) -> jax.Array:
    """``[tasks, pulls]`` rewards of the env's Thompson sampling baseline."""
    if train_cfg.env == "gymnax-gaussian":
        p = env.env_params
        fn = lambda t: gaussian_thompson_sampling(  # noqa: E731
            t.key,
            t.env_params.value,
            pulls,
            prior_mean=float(p.mean_mu),
            prior_std=float(p.sigma_p),
            noise_std=float(p.sigma_l),
        )
    else:
        fn = lambda t: thompson_sampling(t.key, env.arm_means(t.env_params), pulls)  # noqa: E731
    return jax.jit(jax.vmap(fn))(tasks)


def evaluate(cfg: BanditEval) -> dict:
    """Mean reward per pull in each block of pulls, for each agent; writes JSON and a table."""
    train_cfg, state = restore_run(cfg.workdir, BanditTrain, lambda c: initial_state(c)[0])
    env, _, learner = build(train_cfg)
    tasks = jax.vmap(_sampler(train_cfg))(jax.random.split(jax.random.key(cfg.seed), cfg.num_tasks))
    adapt = jax.jit(
        lambda p: jax.vmap(lambda t: learner.adapt(p, t, steps=cfg.steps)[1].returns)(tasks)
    )
    block = train_cfg.num_trajectories
    pulls = block * (cfg.steps + 1)
    ts = thompson_rewards(train_cfg, env, tasks, pulls)
    probs = np.asarray(env.arm_means(tasks.env_params))
    thompson = (
        "Thompson sampling, Gaussian prior of the task distribution"
        if train_cfg.env == "gymnax-gaussian"
        else "Thompson sampling, Beta(1,1)"
    )
    rows = {
        f"MAML-RL ({int(state.step)} meta-steps)": np.asarray(adapt(state.meta_params)),
        "random init, same adaptation": np.asarray(adapt(initial_state(train_cfg)[0].meta_params)),
        thompson: np.asarray(ts).reshape(cfg.num_tasks, -1, block).mean(-1),
        "uniform random arm": np.repeat(probs.mean(1, keepdims=True), cfg.steps + 1, 1),
        "best arm (oracle)": np.repeat(probs.max(1, keepdims=True), cfg.steps + 1, 1),
    }
    results = {"config": dataclasses.asdict(cfg), "train_config": dataclasses.asdict(train_cfg)}
    results["rows"] = {
        name: [
            (float(m), float(1.96 * s / np.sqrt(cfg.num_tasks)))
            for m, s in zip(r.mean(0), r.std(0, ddof=1))
        ]
        for name, r in rows.items()
    }
    lines = [
        "| agent | "
        + " | ".join(f"pulls {k * block + 1}-{(k + 1) * block}" for k in range(cfg.steps + 1))
        + " |",
        "|---|" + "---|" * (cfg.steps + 1),
    ]
    for name, cells in results["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m:.3f} ± {c:.3f}" for m, c in cells) + " |")
    described = {
        "bernoulli": f"{train_cfg.arms}-armed Bernoulli bandits (probabilities uniform in [0, 1]",
        "gymnax-bernoulli": "gymnax BernoulliBandit-misc tasks (arm probabilities (p, 1-p), "
        "p in {0.1, 0.9}",
        "gymnax-gaussian": "gymnax GaussianBandit-misc tasks (arm 0 pays 0, arm 1 N(mu, 0.1^2), "
        "mu ~ N(-1, 1)",
    }[train_cfg.env]
    lines.append(
        f"\nMean reward per pull (± 95% CI) over {cfg.num_tasks} held-out {described}, "
        f"seed {cfg.seed}); the policy-gradient agents take one REINFORCE step after each "
        f"block of {block} pulls."
    )
    table = "\n".join(lines)
    with open(os.path.join(cfg.workdir, "bandit_eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(cfg.workdir, "bandit_eval.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return results


__all__ = [
    "BanditEval",
    "BanditTrain",
    "evaluate",
    "gaussian_thompson_sampling",
    "thompson_sampling",
    "train",
]
