"""Wall-clock time per meta-step of finished runs, from their ``metrics.jsonl``.

Usage: python experiments/step_times.py experiments/sinusoid/metrics_maml.jsonl ...

Prints, per file: the median ``sec_per_step`` over the logged intervals (the first,
which includes compilation, is skipped), and the total wall-clock time of the logged
steps. Runs that shared the machine with other jobs show it here: these are the
run's own timings, not a benchmark (see ``benchmarks/`` for those).
"""

import json
import statistics
import sys


def main(paths: list[str]) -> None:
    for path in paths:
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        rows = records[1:]
        steps = [b["step"] - a["step"] for a, b in zip(records, records[1:])]
        median = statistics.median(r["sec_per_step"] for r in rows)
        total = sum(r["sec_per_step"] * n for r, n in zip(rows, steps))
        print(
            f"{path}: {records[-1]['step']} meta-steps, median {median * 1e3:.2f} ms/step, "
            f"{total / 60:.1f} min in logged intervals after the first"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
