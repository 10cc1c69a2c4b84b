"""nav2d adaptation measured the way the MAML code's test script measures it.

``maml_examples/test_maml_point.py`` (github.com/cbfinn/maml_rl) adapts a loaded policy
with rllab's VPG, ``batch_size=4000``, and reads the ``AverageReturn`` column of each
iteration. Two properties of that protocol differ from ``metajax eval nav2d``, which
averages a fixed number of episodes per task:

* **The batch is a sample budget, not an episode count.** rllab's vectorised sampler
  steps ``batch_size / max_path_length = 40`` environments in lockstep, each
  restarting as soon as its episode ends, and stops at the first lockstep step at
  which the *completed* episodes hold at least 4000 steps; unfinished episodes are
  dropped (``sandbox/rocky/tf/samplers/vectorized_sampler.py``). metajax has this
  sampler as :func:`metajax.rl.sample_step_budget`.
* **``AverageReturn`` is the mean over those episodes** (``rllab/sampler/base.py``). An
  environment whose episodes end early at the goal contributes several episodes, one
  whose episodes run to the time limit contributes one: the average is weighted
  towards short, successful episodes.

The linear baseline is fitted on the batch before it predicts (``--baseline current``,
the default): so does the version of ``rllab/sampler/base.py`` in the MAML code that
``batch_maml_polopt.py`` calls, and so does metajax's inner step. Upstream rllab, and an
older version of that file, predict first, so the first update uses a zero baseline
and later ones the previous batch's fit: ``--baseline previous``. Advantages are standardised over the
batch's steps in both cases (rllab's ``center_adv``), and each update is one gradient
step on the mean over the batch's steps of ``log pi * A`` (metajax's
``reinforce_loss``), with the run's inner step size, scaled by ``--later-lr-scale``
after the first update.

For each step the script prints the rllab-style average, the plain mean of the first
episode of each of the 40 environments (unweighted, the same policy and batch), the
number of episodes in the batch and the fraction that reached the goal.

    python experiments/nav2d/rllab_protocol/eval_rllab_protocol.py runs/nav2d/ab-dice-s0 --later-lr-scale 0.5
"""

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

from metajax import rl
from metajax.recipes import nav2d


def make_protocol(env, policy, *, num_envs, batch_size, discount, horizon=100):
    """Returns ``sample(params, env_params, key) -> (trajectory, stats)`` and ``update(...)``.

    Sampling is :func:`metajax.rl.sample_step_budget` (rllab's vectorised sampler);
    the update is kept here because ``--baseline previous`` needs the fitted weights.
    """

    def sample(params, env_params, key):
        traj = rl.sample_step_budget(
            env, policy, params, env_params, key,
            num_envs=num_envs, num_steps=batch_size, horizon=horizon,
        )  # fmt: skip
        first = (jnp.cumsum(traj.dones, axis=1) - traj.dones == 0) * traj.masks  # first episode
        num_paths = traj.dones.sum()
        reached = traj.dones * (traj.timesteps + 1 < horizon)  # ended before the time limit
        stats = dict(
            rllab_return=rl.mean_episode_return(traj),
            first_episode_return=jnp.sum(traj.rewards * first) / num_envs,
            num_paths=num_paths,
            reached=reached.sum() / num_paths,
        )
        return traj, stats

    def fit_baseline(features, returns, masks, reg=1e-5):
        f = features.reshape(-1, features.shape[-1])
        root = jnp.sqrt(masks.reshape(-1, 1))
        system = jnp.concatenate([root * f, math.sqrt(reg) * jnp.eye(f.shape[-1])])
        target = jnp.concatenate([root[:, 0] * returns.reshape(-1), jnp.zeros(f.shape[-1])])
        return rl.householder_lstsq(system, target)  # the library baseline's solver

    def update(params, traj, lr, baseline_weights, baseline):
        m = traj.masks
        g = rl.discounted_returns(traj.rewards, m, discount, traj.dones)
        features = rl.baseline_features(traj.observations, traj.timesteps)
        fitted = fit_baseline(features, g, m)
        weights = fitted if baseline == "current" else baseline_weights
        advantages = g - features @ weights
        mean = jnp.sum(m * advantages) / m.sum()
        std = jnp.sqrt(jnp.sum(m * jnp.square(advantages - mean)) / m.sum())
        advantages = (advantages - mean) / (std + 1e-8)

        def loss(p):
            return rl.reinforce_loss(rl.trajectory_log_probs(policy, p, traj), advantages, m)

        grads = jax.grad(loss)(params)
        return jax.tree.map(lambda p, d: p - lr * d, params, grads), fitted

    return sample, update


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--later-lr-scale", type=float, default=0.5)
    parser.add_argument("--inner-lr", type=float, default=None, help="default: the run's")
    parser.add_argument("--batch-size", type=int, default=4000, help="steps per batch (rllab)")
    parser.add_argument("--baseline", choices=("current", "previous"), default="current")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--num-tasks", type=int, default=100)
    args = parser.parse_args()

    cfg, state = nav2d.load_run(args.workdir)
    env, policy, _ = nav2d.build(cfg)
    num_envs = max(1, min(100, args.batch_size // cfg.horizon))
    sample, update = make_protocol(
        env,
        policy,
        num_envs=num_envs,
        batch_size=args.batch_size,
        discount=cfg.discount,
        horizon=cfg.horizon,
    )
    inner_lr = cfg.inner_lr if args.inner_lr is None else args.inner_lr
    tasks = nav2d.held_out_tasks(args.seed, args.num_tasks, cfg.env)

    @jax.jit
    def one(task):
        params = state.meta_params
        weights = jnp.zeros(8)  # rllab's baseline predicts 0 before its first fit
        keys = jax.random.split(task.key, args.steps + 1)
        stats = []
        for k in range(args.steps + 1):
            traj, batch_stats = sample(params, task.env_params, keys[k])
            stats.append(batch_stats)
            if k < args.steps:
                lr = inner_lr * (1.0 if k == 0 else args.later_lr_scale)
                params, weights = update(params, traj, lr, weights, args.baseline)
        return jax.tree.map(lambda *xs: jnp.stack(xs), *stats)

    stats = jax.tree.map(np.asarray, jax.lax.map(one, tasks))
    n = args.num_tasks
    ci = lambda a: 1.96 * a.std(ddof=1) / math.sqrt(n)  # noqa: E731
    print(
        f"run {args.workdir} (meta-step {int(state.step)}), {n} goals (seed {args.seed}); "
        f"batch {args.batch_size} steps from {num_envs} lockstep environments; inner lr "
        f"{inner_lr}, x{args.later_lr_scale} after the first update; baseline: {args.baseline}"
    )
    print(
        "| inner steps | AverageReturn, rllab (mean over the batch's episodes) "
        "| first episode of each environment | episodes per batch | ended before the time limit |"
    )
    print("|---|---|---|---|---|")
    for k in range(args.steps + 1):
        r, f = stats["rllab_return"][:, k], stats["first_episode_return"][:, k]
        print(
            f"| {k} | {r.mean():.2f} ± {ci(r):.2f} | {f.mean():.2f} ± {ci(f):.2f} "
            f"| {stats['num_paths'][:, k].mean():.1f} | {100 * stats['reached'][:, k].mean():.1f}% |"
        )


if __name__ == "__main__":
    main()
