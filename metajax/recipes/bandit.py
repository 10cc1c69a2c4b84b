"""MAML-RL on K-armed Bernoulli bandits, compared with Thompson sampling.

Tasks are 5-armed Bernoulli bandits with arm probabilities i.i.d. uniform in
``[0, 1]``. The meta-learned agent is a softmax policy (ReLU MLP on a constant
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
      arms: number of arms.
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


def build(cfg: BanditTrain):
    env = BernoulliBandit()
    policy = rl.categorical_mlp_policy(env.observation_size, cfg.arms, cfg.hidden)
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
    return rl.rl_task_sampler(lambda key: sample_bandit_params(key, cfg.arms))


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
        description="bandit/maml",
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


def evaluate(cfg: BanditEval) -> dict:
    """Mean reward per pull in each block of pulls, for each agent; writes JSON and a table."""
    train_cfg, state = restore_run(cfg.workdir, BanditTrain, lambda c: initial_state(c)[0])
    _, _, learner = build(train_cfg)
    tasks = jax.vmap(_sampler(train_cfg))(jax.random.split(jax.random.key(cfg.seed), cfg.num_tasks))
    adapt = jax.jit(
        lambda p: jax.vmap(lambda t: learner.adapt(p, t, steps=cfg.steps)[1].returns)(tasks)
    )
    block = train_cfg.num_trajectories
    pulls = block * (cfg.steps + 1)
    ts = jax.jit(jax.vmap(lambda t: thompson_sampling(t.key, t.env_params.probs, pulls)))(tasks)
    probs = np.asarray(tasks.env_params.probs)
    rows = {
        f"MAML-RL ({int(state.step)} meta-steps)": np.asarray(adapt(state.meta_params)),
        "random init, same adaptation": np.asarray(adapt(initial_state(train_cfg)[0].meta_params)),
        "Thompson sampling, Beta(1,1)": np.asarray(ts).reshape(cfg.num_tasks, -1, block).mean(-1),
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
    lines.append(
        f"\nMean reward per pull (± 95% CI) over {cfg.num_tasks} held-out {train_cfg.arms}-armed "
        f"Bernoulli bandits (probabilities uniform in [0, 1], seed {cfg.seed}); the policy-gradient "
        f"agents take one REINFORCE step after each block of {block} pulls."
    )
    table = "\n".join(lines)
    with open(os.path.join(cfg.workdir, "bandit_eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(cfg.workdir, "bandit_eval.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return results


__all__ = ["BanditEval", "BanditTrain", "evaluate", "train"]
