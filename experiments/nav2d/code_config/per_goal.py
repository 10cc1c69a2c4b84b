"""Per-goal spread of the returns under the MAML code's test protocol.

The mean over goals hides whether a poor figure comes from every goal or from a few
where an update overshoots. For each run: mean, median, 10th percentile and the number
of the 100 held-out goals (seed 12345) whose return is below -20, after 0..3 steps,
with rllab's sampler (40 environments, 4000-step batches, AverageReturn).

    python experiments/nav2d/code_config/per_goal.py runs/nav2d/code-config-maml-s0 --later-lr-scale 0.5
"""

import argparse

import numpy as np

from metajax.recipes import nav2d


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--later-lr-scale", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--num-tasks", type=int, default=100)
    args = parser.parse_args()
    tasks = nav2d.held_out_tasks(args.seed, args.num_tasks)
    print(f"{args.num_tasks} goals (seed {args.seed}), later steps x{args.later_lr_scale}")
    print("| run | inner steps | mean | median | 10th percentile | goals below -20 |")
    print("|---|---|---|---|---|---|")
    for workdir in args.workdirs:
        cfg, state = nav2d.load_run(workdir)
        _, _, learner = nav2d.build(cfg, num_trajectories=40, sampler="steps", envs_per_task=40)
        returns = nav2d.adaptation_returns(
            learner, state.meta_params, tasks, args.steps, args.later_lr_scale
        )
        for k in range(args.steps + 1):
            r = returns[:, k]
            print(
                f"| `{workdir}` | {k} | {r.mean():.2f} | {np.median(r):.2f} "
                f"| {np.percentile(r, 10):.2f} | {int((r < -20).sum())} |"
            )


if __name__ == "__main__":
    main()
