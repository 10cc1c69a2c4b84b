"""The step-budget table: every seed's returns and the mean over seeds, from the logs.

For each seed with ``eval_s<seed>_i<iters>.json`` and ``protocol_s<seed>_i<iters>.log``
here, and the same seed's run trained with 20 episodes per task (the estimator A/B's
DiCE runs: ``../estimator_ab/eval_dice_s<seed>_x0.25.json`` and
``../rllab_protocol/dice_s<seed>_x0.25_current.log``), the return after each inner step
(later steps at 0.25 x the step size) both ways: 20-episode batches (``metajax eval``)
and the MAML code's test protocol (``AverageReturn``). Then the mean over the seeds
that have all rows, and how far each seed's run with the code's sampler is from the
same seed trained with 20 episodes, after three steps of the code's protocol.

Usage: python experiments/nav2d/step_budget/summarize.py > experiments/nav2d/step_budget/summary.md
"""

import glob
import json
import os
import re

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
NAV2D = os.path.dirname(HERE)


def episodes(path):
    """``[steps + 1]`` mean returns from a ``metajax eval`` JSON with one run."""
    runs = json.load(open(path))["runs"]
    (run,) = runs.values()
    return np.asarray(run["returns"])[:, 0]


def protocol(path):
    """``[steps + 1]`` ``AverageReturn`` from an ``eval_rllab_protocol.py`` log."""
    rows = re.findall(r"^\| (\d+) \| (-?[\d.]+) ±", open(path).read(), re.M)
    return np.asarray([float(r) for _, r in rows])


def fmt(values):
    return " / ".join(f"{v:.2f}" for v in values)


def main():
    rows = {}  # (label, iters) -> {seed: (episodes [4], protocol [4])}
    for path in sorted(glob.glob(os.path.join(HERE, "eval_s*_i*.json"))):
        seed, iters = map(int, re.search(r"eval_s(\d+)_i(\d+)", path).groups())
        proto = os.path.join(HERE, f"protocol_s{seed}_i{iters}.log")
        rows.setdefault(("the code's sampler", iters), {})[seed] = (
            episodes(path),
            protocol(proto),
        )
        ab = os.path.join(NAV2D, "estimator_ab", f"eval_dice_s{seed}_x0.25.json")
        ab_proto = os.path.join(NAV2D, "rllab_protocol", f"dice_s{seed}_x0.25_current.log")
        if iters == 200 and os.path.exists(ab) and os.path.exists(ab_proto):
            rows.setdefault(("20 episodes per task", 200), {})[seed] = (
                episodes(ab),
                protocol(ab_proto),
            )
    print(
        "| meta-trained with | seed | iterations | 20 episodes: after 1 / 2 / 3 steps "
        "| the code's protocol: after 0 / 1 / 2 / 3 steps |"
    )
    print("|---|---|---|---|---|")
    seeds = sorted({s for by_seed in rows.values() for s in by_seed})
    for seed in seeds:
        for key in (
            ("the code's sampler", 100),
            ("the code's sampler", 200),
            ("20 episodes per task", 200),
        ):
            if seed in rows.get(key, {}):
                ep, pr = rows[key][seed]
                print(f"| {key[0]} | {seed} | {key[1]} | {fmt(ep[1:])} | {fmt(pr)} |")
    print()
    for key, by_seed in sorted(rows.items()):
        ep = np.stack([e for e, _ in by_seed.values()])
        pr = np.stack([p for _, p in by_seed.values()])
        print(
            f"- {key[0]}, {key[1]} iterations, mean of seeds {sorted(by_seed)}: "
            f"20 episodes {fmt(ep.mean(0)[1:])}; the code's protocol {fmt(pr.mean(0))}"
        )
    ours, theirs = (
        rows.get(("the code's sampler", 200), {}),
        rows.get(("20 episodes per task", 200), {}),
    )
    common = sorted(set(ours) & set(theirs))
    diffs = [ours[s][1][3] - theirs[s][1][3] for s in common]
    print(
        "- after three steps of the code's protocol, the code's sampler minus 20 episodes, "
        "seed by seed: " + ", ".join(f"seed {s} {d:+.2f}" for s, d in zip(common, diffs))
    )


if __name__ == "__main__":
    main()
