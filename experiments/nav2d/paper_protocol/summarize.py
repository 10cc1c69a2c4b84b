"""The paper-protocol runs: returns after 0-3 steps and the training return by period.

For each seed with ``protocol_s<seed>_{final,best}.log`` here: the MAML code's test
protocol (``AverageReturn``) and the 20-episode evaluation (``eval_s<seed>_*.json``) of
the final and the kept (best training return, ``best_s<seed>.json``) state, beside the
same seed's 200-iteration run (``../rllab_protocol/dice_s<seed>_x0.25_current.log``,
``../estimator_ab/eval_dice_s<seed>_x0.25.json``); then the mean training return after
adaptation (``metrics_s<seed>.jsonl``) over each 100 iterations.

Usage: python experiments/nav2d/paper_protocol/summarize.py > experiments/nav2d/paper_protocol/summary.md
"""

import glob
import json
import os
import re

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
NAV2D = os.path.dirname(HERE)


def protocol(path):
    rows = re.findall(r"^\| (\d+) \| (-?[\d.]+) ±", open(path).read(), re.M)
    return [float(r) for _, r in rows]


def episodes(path):
    (run,) = json.load(open(path))["runs"].values()
    return [m for m, _ in run["returns"]], run["meta_steps"]


def fmt(values):
    return " / ".join(f"{v:.2f}" for v in values)


def main():
    seeds = sorted(
        int(re.search(r"_s(\d+)_final", p).group(1))
        for p in glob.glob(os.path.join(HERE, "protocol_s*_final.log"))
    )
    print(
        "| DiCE seed | state | iterations | the code's protocol: after 0 / 1 / 2 / 3 steps "
        "| 20 episodes: after 0 / 1 / 2 / 3 steps |"
    )
    print("|---|---|---|---|---|")
    for seed in seeds:
        base_p = protocol(os.path.join(NAV2D, "rllab_protocol", f"dice_s{seed}_x0.25_current.log"))
        base_e, base_steps = episodes(
            os.path.join(NAV2D, "estimator_ab", f"eval_dice_s{seed}_x0.25.json")
        )
        print(
            f"| {seed} | the estimator A/B's run | {base_steps} | {fmt(base_p)} | {fmt(base_e)} |"
        )
        for which in ("final", "best"):
            p = os.path.join(HERE, f"protocol_s{seed}_{which}.log")
            e = os.path.join(HERE, f"eval_s{seed}_{which}.json")
            if os.path.exists(p) and os.path.exists(e):
                ep, steps = episodes(e)
                print(f"| {seed} | {which} | {steps} | {fmt(protocol(p))} | {fmt(ep)} |")
    print()
    for seed in seeds:
        best = json.load(open(os.path.join(HERE, f"best_s{seed}.json")))
        records = [json.loads(line) for line in open(os.path.join(HERE, f"metrics_s{seed}.jsonl"))]
        last = max(r["step"] for r in records)
        periods = []
        for lo in range(1, last + 1, 100):
            values = [r["return_post"] for r in records if lo <= r["step"] < lo + 100]
            periods.append(f"{lo}-{min(lo + 99, last)}: {np.mean(values):.2f}")
        print(
            f"- seed {seed}: kept iteration {best['step']} ({best['metric']} {best['value']:.2f}); "
            "mean training return after adaptation by period: " + ", ".join(periods)
        )


if __name__ == "__main__":
    main()
