"""Sparse PointRobot with TRPO: every seed's evaluation and the mean over seeds.

Reads ``pointrobot-sparse_eval_trpo{,_s<seed>}.json`` here (``trpo.sh``; seed 0 has no
suffix) and prints, for MAML, the pretrained policy and the random initialisation, the
fraction of episodes reaching the goal after 0-3 inner steps per seed, the mean over
seeds with the range of the seeds, and each seed's MAML minus pretrained gap.

Usage: python experiments/pointrobot/sparse/summarize_trpo.py > experiments/pointrobot/sparse/summary_trpo.md
"""

import glob
import json
import os
import re

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def policy(name):
    if name == "random init":
        return "random initialisation"
    return {"maml": "MAML-RL", "pretrain": "pretrained"}[
        re.search(r"sparse-(\w+?)-trpo", name).group(1)
    ]


def main():
    rows = {}  # policy -> {seed: [steps + 1] mean returns}
    for path in sorted(glob.glob(os.path.join(HERE, "pointrobot-sparse_eval_trpo*.json"))):
        match = re.search(r"_trpo_s(\d+)\.json$", path)
        seed = int(match.group(1)) if match else 0
        for name, run in json.load(open(path))["runs"].items():
            rows.setdefault(policy(name), {})[seed] = np.asarray(run["returns"])
    print("| policy | seed | after 0 steps | after 1 step | after 2 steps | after 3 steps |")
    print("|---|---|---|---|---|---|")
    for name in ("MAML-RL", "pretrained", "random initialisation"):
        by_seed = rows.get(name, {})
        for seed, r in sorted(by_seed.items()):
            print(f"| {name} | {seed} | " + " | ".join(f"{m:.2f} ± {c:.2f}" for m, c in r) + " |")
        if len(by_seed) > 1:
            means = np.stack([r[:, 0] for r in by_seed.values()])
            cells = " | ".join(
                f"**{m:.2f}** ({lo:.2f}-{hi:.2f})"
                for m, lo, hi in zip(means.mean(0), means.min(0), means.max(0))
            )
            print(f"| {name} | mean of {len(by_seed)} (range) | {cells} |")
    maml, pre = rows.get("MAML-RL", {}), rows.get("pretrained", {})
    print()
    for seed in sorted(set(maml) & set(pre)):
        gap = maml[seed][:, 0] - pre[seed][:, 0]
        step1 = maml[seed][1, 0] - maml[seed][0, 0]
        print(
            f"- seed {seed}: MAML minus pretrained after 0-3 steps "
            + " / ".join(f"{g:+.2f}" for g in gap)
            + f"; MAML's first step {step1:+.2f}"
        )


if __name__ == "__main__":
    main()
