"""The paper-protocol runs: returns after 0-3 steps and the training return by period.

For each seed with ``protocol_s<seed>_{final,best}.log`` here (and seed 1's 400-to-500
leg, ``*_s1_i500_*``): the MAML code's test
protocol (``AverageReturn``) and the 20-episode evaluation (``eval_s<seed>_*.json``) of
the final and the kept (best training return, ``best_s<seed>.json``) state, beside the
same seed's 200-iteration run where it was evaluated (seeds 0-2) (``../rllab_protocol/dice_s<seed>_x0.25_current.log``,
``../estimator_ab/eval_dice_s<seed>_x0.25.json``); then the mean training return after
adaptation (``metrics_s<seed>.jsonl``) over each 100 iterations. Where the 20-episode
evaluation kept per-goal returns (seed 3 on), also their median and the worst goals.

Usage: python experiments/nav2d/paper_protocol/summarize.py > experiments/nav2d/paper_protocol/summary.md
"""

import glob
import json
import os
import re

import numpy as np
from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
NAV2D = os.path.dirname(HERE)


def protocol(path):
    rows = re.findall(r"^\| (\d+) \| (-?[\d.]+) ±", open(path).read(), re.M)
    return [float(r) for _, r in rows]


def episodes(path):
    (run,) = json.load(open(path))["runs"].values()
    return [m for m, _ in run["returns"]], run["meta_steps"]


#: File-name tags of a seed's legs: "" for the run.sh run, "_i500" for seed 1's
#: continuation from 400 to 500 (its commands are in the nav2d README).
TAGS = ("", "_i500")
#: Finn et al. 2017, Table 4: 2D navigation, after 0 / 1 / 2 / 3 steps.
PAPER = (-40.41, -11.68, -3.33, -3.23)


def iterations(seed, tag, which):
    if which == "best":
        return json.load(open(os.path.join(HERE, f"best_s{seed}{tag}.json")))["step"]
    lines = open(os.path.join(HERE, f"metrics_s{seed}{tag}.jsonl")).read().splitlines()
    return json.loads(lines[-1])["step"]


def fmt(values):
    return " / ".join(f"{v:.2f}" for v in values)


def main():
    seeds = sorted(
        {
            int(re.search(r"protocol_s(\d+)_", p).group(1))
            for p in glob.glob(os.path.join(HERE, "protocol_s*_final.log"))
        }
    )
    print(
        "| DiCE seed | state | iterations | the code's protocol: after 0 / 1 / 2 / 3 steps "
        "| 20 episodes: after 0 / 1 / 2 / 3 steps |"
    )
    print("|---|---|---|---|---|")
    at_500 = {}
    for seed in seeds:
        base = os.path.join(NAV2D, "rllab_protocol", f"dice_s{seed}_x0.25_current.log")
        if os.path.exists(base):  # seeds 3 and 4 had no A/B evaluation at 200 iterations
            base_p = protocol(base)
            base_e, base_steps = episodes(
                os.path.join(NAV2D, "estimator_ab", f"eval_dice_s{seed}_x0.25.json")
            )
            print(
                f"| {seed} | the estimator A/B's run | {base_steps} | {fmt(base_p)} "
                f"| {fmt(base_e)} |"
            )
        for tag in TAGS:
            for which in ("final", "best"):
                p = os.path.join(HERE, f"protocol_s{seed}{tag}_{which}.log")
                e = os.path.join(HERE, f"eval_s{seed}{tag}_{which}.json")
                if not os.path.exists(p):
                    continue
                if os.path.exists(e):
                    ep, steps = episodes(e)
                    ep = fmt(ep)
                else:  # the kept state's iteration, or the run's last one
                    steps = iterations(seed, tag, which)
                    ep = "not run"
                print(f"| {seed} | {which} | {steps} | {fmt(protocol(p))} | {ep} |")
                if which == "final" and steps == 500:
                    at_500[seed] = protocol(p)
    print()
    if at_500:
        mean = np.mean(list(at_500.values()), axis=0)
        print(
            f"- Mean of the final states at 500 iterations (seeds {', '.join(map(str, at_500))}), "
            f"the code's protocol, after 0 / 1 / 2 / 3 steps: {fmt(mean)} "
            f"(paper: {fmt(PAPER)})."
        )
        if len(at_500) > 1:
            # Student's t interval over seeds: the spread between seeds, not within one.
            values = np.array(list(at_500.values()))
            half = stats.t.ppf(0.975, len(values) - 1) * values.std(axis=0, ddof=1)
            half /= np.sqrt(len(values))
            ranges = " / ".join(f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(mean - half, mean + half))
            inside = [
                "yes" if lo <= p <= hi else "no"
                for lo, hi, p in zip(mean - half, mean + half, PAPER)
            ]
            print(
                f"- 95% t-interval of that mean over the {len(values)} seeds, after 0 / 1 / 2 / 3 "
                f"steps: {ranges}; the paper's figure inside: {' / '.join(inside)}."
            )
    for seed in seeds:  # where the 20-episode evaluation kept per-goal returns (seed 3 on)
        e = os.path.join(HERE, f"eval_s{seed}_final.json")
        (run,) = json.load(open(e))["runs"].values() if os.path.exists(e) else ({},)
        if "per_goal_returns" not in run:
            continue
        per_goal = np.asarray(run["per_goal_returns"])
        worst = np.argsort(per_goal[:, 2])[:2]
        print(
            f"- seed {seed}, final state, 20-episode evaluation goal by goal: median after "
            f"0 / 1 / 2 / 3 steps {fmt(np.median(per_goal, 0))}; the worst goals after two "
            + "steps: "
            + ", ".join(f"goal {g}: {fmt(per_goal[g])}" for g in worst)
            + f"; the two-step mean without goal {worst[0]}: "
            f"{np.delete(per_goal[:, 2], worst[0]).mean():.2f} (with it: {per_goal[:, 2].mean():.2f})"
        )
    for seed in seeds:
        tag = [t for t in TAGS if os.path.exists(os.path.join(HERE, f"best_s{seed}{t}.json"))][-1]
        best = json.load(open(os.path.join(HERE, f"best_s{seed}{tag}.json")))
        records = [
            json.loads(line) for line in open(os.path.join(HERE, f"metrics_s{seed}{tag}.jsonl"))
        ]
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
