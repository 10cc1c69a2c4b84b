"""Which nav2d TRPO runs are bit-identical? (issue 7: run-to-run differences)

    python experiments/nav2d/determinism/compare.py > experiments/nav2d/determinism/compare.log

Compares every metric but the wall-clock ``sec_per_step`` of the records two metrics
files share (same step), exactly (``==`` on the floats as logged).
"""

from __future__ import annotations

import itertools
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
NAV = os.path.dirname(HERE)
FILES = {
    "repeat_a (6 steps, log every 1)": os.path.join(HERE, "metrics_repeat_a.jsonl"),
    "repeat_b (6 steps, log every 1)": os.path.join(HERE, "metrics_repeat_b.jsonl"),
    "default_flags_30 (METAJAX_TUNE_XLA=0)": os.path.join(HERE, "metrics_default_flags_30.jsonl"),
    "committed TRPO run": os.path.join(NAV, "metrics_maml_trpo.jsonl"),
    "rerun (eighth session)": os.path.join(NAV, "metrics_maml_trpo_rerun.jsonl"),
    "rerun2 (ninth session)": os.path.join(NAV, "metrics_maml_trpo_rerun2.jsonl"),
}


def read(path):
    with open(path) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def main() -> None:
    runs = {name: read(path) for name, path in FILES.items()}
    for (na, a), (nb, b) in itertools.combinations(runs.items(), 2):
        shared = sorted(set(a) & set(b))
        if not shared:
            continue
        equal = [
            s for s in shared if all(a[s][k] == b[s].get(k) for k in a[s] if k != "sec_per_step")
        ]
        print(
            f"{na} vs {nb}: {len(equal)}/{len(shared)} shared records bit-identical "
            f"(steps {shared[0]}..{shared[-1]}); return_pre at step {shared[0]}: "
            f"{a[shared[0]]['return_pre']!r} vs {b[shared[0]]['return_pre']!r}"
        )


if __name__ == "__main__":
    main()
