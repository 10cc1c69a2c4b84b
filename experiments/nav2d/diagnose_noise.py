"""Why do nav2d returns after 2-3 inner steps stay far from the paper's -3.3?

For a trained run, on the evaluation goals of ``metajax eval nav2d`` (seed 12345,
100 goals, step size halved after the first step), prints after 0..3 inner steps:
the policy's action std (environment units, both coordinates), the fraction of
episodes that reach the goal (end within 0.01, before the time limit), their mean length, the sampled return,
and the return of the same adapted policy with its noise switched off (mean action).

    python experiments/nav2d/diagnose_noise.py runs/nav2d/maml-trpo
"""

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

from metajax.recipes import nav2d


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--later-lr-scale", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--num-tasks", type=int, default=100)
    args = parser.parse_args()

    cfg, state = nav2d.load_run(args.workdir)
    _, _, learner = nav2d.build(cfg)
    tasks = nav2d.held_out_tasks(args.seed, args.num_tasks, cfg.env)
    meta = state.meta_params
    scale = 0.1  # the policy's action scale (network output x 0.1)

    @jax.jit
    def one(task):
        _, result = learner.adapt(meta, task, steps=args.steps, later_lr_scale=args.later_lr_scale)
        traj = result.trajectories  # [steps + 1, N, T]
        length = traj.masks.sum(-1)
        reached = length < cfg.horizon  # ended by reaching the goal, not by the time limit
        stds, greedy = [], []
        for k in range(args.steps + 1):
            params, _ = learner.adapt(meta, task, steps=k, later_lr_scale=args.later_lr_scale)
            stds.append(scale * jnp.exp(params["log_std"]))
            quiet = dict(params, log_std=jnp.full_like(params["log_std"], -30.0))
            greedy.append(learner.adapt(quiet, task, steps=0)[1].returns[0])
        return (
            result.returns,
            reached.mean(-1),
            length.mean(-1),
            jnp.stack(stds),
            jnp.stack(greedy),
        )

    returns, reached, length, stds, greedy = map(np.asarray, jax.lax.map(one, tasks))
    n = returns.shape[0]
    print(
        f"run {args.workdir} (meta-step {int(state.step)}), {n} goals, seed {args.seed}, "
        f"later lr scale {args.later_lr_scale}"
    )
    print(
        "| inner steps | action std (x, y) | episodes reaching the goal | mean episode length "
        "| return (sampled) | return (mean action) |"
    )
    print("|---|---|---|---|---|---|")
    for k in range(args.steps + 1):
        ci = lambda a: 1.96 * a.std(ddof=1) / math.sqrt(n)
        print(
            f"| {k} | {stds[:, k, 0].mean():.4f}, {stds[:, k, 1].mean():.4f} "
            f"| {100 * reached[:, k].mean():.1f}% | {length[:, k].mean():.1f} "
            f"| {returns[:, k].mean():.2f} ± {ci(returns[:, k]):.2f} "
            f"| {greedy[:, k].mean():.2f} ± {ci(greedy[:, k]):.2f} |"
        )


if __name__ == "__main__":
    main()
