"""Wall-clock time per meta-step of finished runs, from their ``metrics.jsonl``.

Usage: python experiments/step_times.py experiments/sinusoid/metrics_maml.jsonl ...

Prints, per file: the mean time per step over the logged intervals after the first
(which includes compilation), i.e. their total wall-clock time over their steps, the
median ``sec_per_step`` of those intervals, and that total. Runs that shared the
machine with other jobs show it here: these are the run's own timings, not a
benchmark (see ``benchmarks/`` for those).

The mean is the figure to quote. Files written before 2026-12-05 (runner fix in the
commit that added this note) timed each record between two metrics reads instead of
between the ends of the logged calls. With several calls per log period and a
checkpoint period that is a multiple of the log period, each checkpoint record then
got about one call's time over the whole period and the next record about two
periods' time: those records' ``sec_per_step`` are wrong (a fifth and twice the true
value for nav2d's log every 5 / checkpoint every 10), and so is their median, but
their total, and hence the mean, is right.
"""

import json
import statistics
import sys


def main(paths: list[str]) -> None:
    for path in paths:
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        rows = records[1:]
        if not rows:
            print(f"{path}: {len(records)} record(s), no interval after the first")
            continue
        steps = [b["step"] - a["step"] for a, b in zip(records, records[1:])]
        median = statistics.median(r["sec_per_step"] for r in rows)
        total = sum(r["sec_per_step"] * n for r, n in zip(rows, steps))
        mean = total / sum(steps)
        print(
            f"{path}: {records[-1]['step']} meta-steps, mean {mean * 1e3:.2f} ms/step "
            f"(median of the intervals {median * 1e3:.2f} ms), "
            f"{total / 60:.1f} min in logged intervals after the first"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
