"""Seeds 0-4 of each bandit setting: MAML-RL's mean reward per pull in each block.

Seed 0 is the committed run of ``experiments/bandit`` (its ``bandit_eval*.json``);
seeds 1-4 come from ``run.sh`` here. A run counts as collapsed when its policy became
deterministic on the safe arm, which pays exactly 0: every block's mean reward is
within 1e-3 of 0.

Usage: python experiments/bandit/seeds/summarize.py > experiments/bandit/seeds/summary.md
"""

import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SEED0 = {
    "bernoulli-lr0.01": "bandit_eval.json",
    "gymnax-bernoulli-lr0.01": "bandit_eval_gymnax-bernoulli.json",
    "gymnax-gaussian-lr0.01": "bandit_eval_gymnax-gaussian.json",
    "gymnax-gaussian-lr0.001": "bandit_eval_gymnax-gaussian-lr1e-3.json",
}


def rows_of(path):
    rows = json.load(open(path))["rows"]
    maml = next(v for k, v in rows.items() if k.startswith("MAML-RL"))
    thompson = next(v for k, v in rows.items() if k.startswith("Thompson"))
    random_init = next(v for k, v in rows.items() if k.startswith("random init"))
    return np.asarray(maml)[:, 0], np.asarray(thompson)[:, 0], np.asarray(random_init)[:, 0]


def main():
    print("| setting | seed | MAML-RL, pulls 1-20 | 21-40 | 41-60 | 61-80 | random init, 21-40 | Thompson, 21-40 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, seed0 in SEED0.items():
        paths = {0: os.path.join(HERE, "..", seed0)}
        for seed in range(1, 5):
            paths[seed] = os.path.join(HERE, f"eval_{name}-s{seed}.json")
        after = []
        for seed, path in paths.items():
            if not os.path.exists(path):
                continue
            maml, thompson, random_init = rows_of(path)
            collapsed = bool(np.all(np.abs(maml) < 1e-3))
            after.append(maml[1])
            cells = " | ".join(f"{v:.3f}" for v in maml)
            flag = " (collapsed)" if collapsed else ""
            print(f"| {name} | {seed}{flag} | {cells} | {random_init[1]:.3f} | {thompson[1]:.3f} |")
        print(f"| {name} | mean of {len(after)} | | **{np.mean(after):.3f}** (min {np.min(after):.3f}) | | | | |")


if __name__ == "__main__":
    main()
