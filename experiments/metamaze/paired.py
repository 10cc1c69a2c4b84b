"""Goal-by-goal differences between evaluated policies (``metajax eval`` JSON).

Every policy in one evaluation meets the same held-out goals and episode keys, so the
difference of two policies' returns can be taken goal by goal; its CI is free of the
goals' own spread (:func:`metajax.recipes.nav2d.paired_difference`). A run named
``mean`` with ``--mean RUN ...`` stands for the per-goal mean of those runs; its rows
also give a 95% Student-t interval over those runs (each run's mean difference), which
covers the spread between training seeds that the goal-by-goal interval leaves out.

Usage:
  python experiments/metamaze/paired.py experiments/metamaze/horizon20/metamaze_eval.json \\
      --a RUN@1 RUN2@1 --b PRETRAIN@0 [--mean RUN RUN2 ...]
"""

import argparse
import json

import numpy as np
from scipy import stats

from metajax.recipes.nav2d import paired_difference


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results")
    parser.add_argument("--a", nargs="+", required=True, help="RUN@STEPS, each compared with --b")
    parser.add_argument("--b", nargs="+", required=True, help="RUN@STEPS")
    parser.add_argument("--mean", nargs="*", default=[], help="runs averaged into 'mean'")
    args = parser.parse_args(argv)
    results = json.load(open(args.results))
    if args.mean:
        per_goal = [np.asarray(results["runs"][r]["per_goal_returns"]) for r in args.mean]
        results["runs"]["mean"] = {"per_goal_returns": np.mean(per_goal, 0).tolist()}
    print(
        f"# python experiments/metamaze/paired.py {args.results} --a {' '.join(args.a)} "
        f"--b {' '.join(args.b)}" + (f" --mean {' '.join(args.mean)}" if args.mean else "")
    )
    print("| a | b | mean of a - b over goals | 95% CI over goals | 95% t-interval over runs |")
    print("|---|---|---|---|---|")
    for a in args.a:
        for b in args.b:
            (ra, sa), (rb, sb) = a.rsplit("@", 1), b.rsplit("@", 1)
            mean, half = paired_difference(results, ra, int(sa), rb, int(sb))
            over_runs = ""
            if ra == "mean" and len(args.mean) > 1:
                per_run = [
                    paired_difference(results, r, int(sa), rb, int(sb))[0] for r in args.mean
                ]
                t = stats.t.ppf(0.975, len(per_run) - 1)
                h = t * np.std(per_run, ddof=1) / np.sqrt(len(per_run))
                over_runs = f"[{np.mean(per_run) - h:+.2f}, {np.mean(per_run) + h:+.2f}]"
            print(
                f"| {a} | {b} | {mean:+.2f} | [{mean - half:+.2f}, {mean + half:+.2f}] "
                f"| {over_runs} |"
            )


if __name__ == "__main__":
    main()
