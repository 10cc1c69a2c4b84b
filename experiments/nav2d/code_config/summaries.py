"""Figures the nav2d README derives from the goal sets and from per_goal.py's logs.

python experiments/nav2d/code_config/summaries.py distances
    median distance from the start (the origin) of each goal set of per_goal.py
python experiments/nav2d/code_config/summaries.py means LOG RUN [RUN ...]
    the mean over RUNs (run directories as the log names them) of each row of a
    per_goal.py log: mean, median, 10th percentile after 0..3 steps
"""

import argparse
import re

import numpy as np
from per_goal import goal_set


def distances():
    print("| goal set | goals | median distance from the start |")
    print("|---|---|---|")
    for goals in ("held-out", "code", "code-6"):
        args = argparse.Namespace(goals=goals, seed=12345, num_tasks=100)
        tasks, description = goal_set(args)
        dist = np.linalg.norm(np.asarray(tasks.env_params.goal), axis=-1)
        print(f"| {description} | {len(dist)} | {np.median(dist):.3f} |")


def means(log, runs):
    row = re.compile(r"\| `(?P<run>[^`]+)` \| (?P<k>\d+) \| (?P<cells>.*) \|$")
    table = {}
    with open(log) as f:
        print(f"{f.readline().strip()} ({log})")
        for line in f:
            match = row.match(line.strip())
            if match and match["run"] in runs:
                cells = [float(c) for c in match["cells"].split(" | ")[:3]]
                table.setdefault(int(match["k"]), {})[match["run"]] = cells
    print(f"mean over {', '.join(runs)}")
    print("| inner steps | mean | median | 10th percentile |")
    print("|---|---|---|---|")
    for k, by_run in sorted(table.items()):
        missing = set(runs) - set(by_run)
        if missing:
            raise SystemExit(f"{log} has no row {k} for {sorted(missing)}")
        values = np.mean([by_run[r] for r in runs], axis=0)
        print(f"| {k} | " + " | ".join(f"{v:.2f}" for v in values) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("distances")
    means_parser = sub.add_parser("means")
    means_parser.add_argument("log")
    means_parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    if args.command == "distances":
        distances()
    else:
        means(args.log, args.runs)


if __name__ == "__main__":
    main()
