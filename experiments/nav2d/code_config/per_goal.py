"""Per-goal spread of the returns under the MAML code's test protocol.

The mean over goals hides whether a poor figure comes from every goal or from a few
where an update overshoots. For each run: mean, median, 10th percentile and the number
of the 100 held-out goals (seed 12345) whose return is below -20, after 0..3 steps,
with rllab's sampler (40 environments, 4000-step batches, AverageReturn).

    python experiments/nav2d/code_config/per_goal.py runs/nav2d/code-config-maml-s0 --later-lr-scale 0.5

``--goals code`` replaces the 100 held-out goals by the 40 that the MAML code's test
script (maml_examples/test_maml_point.py) draws: ``np.random.seed(1)`` then
``np.random.uniform(-0.5, 0.5, size=(40, 2))``. The episodes' keys stay those of
``--seed``. The stored script then keeps only the seventh of them (``goals =
[goals[6]]``); ``--goals code-6`` evaluates that goal ``--num-tasks`` times, each with
its own episode keys.
"""

import argparse
import dataclasses

import jax.numpy as jnp
import numpy as np

from metajax.recipes import nav2d

CODE_GOALS = 40  # test_num_goals in the MAML code's test script


def add_arguments(parser):
    """The runs, the test schedule and the goals (shared with overshoot.py)."""
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--later-lr-scale", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--num-tasks", type=int, default=100)
    parser.add_argument(
        "--goals",
        choices=["held-out", "code", "code-6"],
        default="held-out",
        help="held-out: --num-tasks goals drawn with --seed; code: the MAML code's 40 test "
        "goals; code-6: the one its stored test script keeps, --num-tasks times",
    )


def goal_set(args):
    """``(tasks, description)`` for the goals the arguments name."""
    if args.goals == "held-out":
        return nav2d.held_out_tasks(args.seed, args.num_tasks), (
            f"{args.num_tasks} goals (seed {args.seed})"
        )
    goals = np.random.RandomState(1).uniform(-0.5, 0.5, size=(CODE_GOALS, 2))
    if args.goals == "code":
        description = f"the MAML code's {CODE_GOALS} test goals (np.random.seed(1))"
    else:
        goals = np.repeat(goals[6:7], args.num_tasks, axis=0)
        description = f"the MAML code's test goal 6, {goals[0].round(3)}, {args.num_tasks} times"
    tasks = nav2d.held_out_tasks(args.seed, len(goals))
    env_params = dataclasses.replace(tasks.env_params, goal=jnp.asarray(goals, jnp.float32))
    return dataclasses.replace(tasks, env_params=env_params), (
        f"{description}, episode keys of seed {args.seed}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    tasks, goals = goal_set(args)
    print(f"{goals}, later steps x{args.later_lr_scale}")
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
