"""Table of the estimator A/B: return after 0-3 inner steps per seed, and the mean over seeds.

Usage: python experiments/nav2d/estimator_ab/summarize.py > experiments/nav2d/estimator_ab/summary.md
"""

import glob
import json
import os
import re

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    rows = {}  # (scale, grad) -> {seed: returns [steps + 1, 2]}
    for path in sorted(glob.glob(os.path.join(HERE, "eval_*_s*_x*.json"))):
        seed, scale = re.match(r"eval_\w+?_s(\d+)_x([\d.]+)\.json", os.path.basename(path)).groups()
        runs = json.load(open(path))["runs"]
        for name, run in runs.items():
            grad = re.search(r"ab-(\w+)-s\d+", name).group(1)
            rows.setdefault((scale, grad), {})[int(seed)] = np.asarray(run["returns"])
    for scale in sorted({s for s, _ in rows}, key=float, reverse=True):
        print(f"\nSteps after the first at {scale} x the inner step size (mean ± 95% CI over 100 goals):\n")
        print("| meta-gradient | seed | after 0 steps | after 1 step | after 2 steps | after 3 steps |")
        print("|---|---|---|---|---|---|")
        for grad in ("maml", "dice"):
            by_seed = rows.get((scale, grad), {})
            for seed, r in sorted(by_seed.items()):
                cells = " | ".join(f"{m:.2f} ± {c:.2f}" for m, c in r)
                print(f"| {grad} | {seed} | {cells} |")
            if by_seed:
                means = np.stack([r[:, 0] for r in by_seed.values()])
                cells = " | ".join(
                    f"**{m:.2f}** (seeds {lo:.2f} to {hi:.2f})"
                    for m, lo, hi in zip(means.mean(0), means.min(0), means.max(0))
                )
                print(f"| {grad} | mean of {len(by_seed)} | {cells} |")


if __name__ == "__main__":
    main()
