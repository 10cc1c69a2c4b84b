"""Task-parallel modes of the train step compared: ``vmap``, ``lax.map`` and chunks.

The measurement behind ``task_parallel="auto"`` (``metajax.train.resolve_task_parallel``).
For each workload every mode is compiled in this process, then timed in alternating
rounds (``_bench.time_interleaved``), so load changes on a shared machine hit every
mode alike. Memory is the compiled program's ``memory_analysis()``.

Workloads: W1 (conv4-64, 5-way 1-shot, 1 query per class, meta-batch 32, 1 inner
step, second order), the same with conv4-32 and meta-batch 16 or 8 (the suite's
conv4 base), and W3 (sinusoid MLP 1-40-40-1, 10 + 10 points, meta-batch 25,
1 and 5 inner steps, second order; 10 meta-steps per compiled call so that the
per-call overhead does not hide the differences). Tasks are drawn on the device.

Usage:
  python benchmarks/task_parallel.py --out benchmarks/results/task_parallel.jsonl \\
      --md benchmarks/results/task_parallel.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench  # noqa: E402
import _host  # noqa: E402

WORKLOADS = {
    "W1": dict(model="conv4", meta_batch=32, inner_steps=1, steps_per_call=1),
    "W1-conv4-32-mb16": dict(
        model="conv4", channels=32, meta_batch=16, inner_steps=1, steps_per_call=1
    ),
    # The suite's conv4 base configuration (benchmarks/suite.py).
    "W1-conv4-32-mb8": dict(
        model="conv4", channels=32, meta_batch=8, inner_steps=1, steps_per_call=1
    ),
    "W3-1step": dict(model="mlp", meta_batch=25, inner_steps=1, steps_per_call=10),
    "W3-5step": dict(model="mlp", meta_batch=25, inner_steps=5, steps_per_call=10),
}
TIMING = {
    "W1": (3, 2),
    "W1-conv4-32-mb16": (3, 3),
    "W1-conv4-32-mb8": (3, 5),
    "W3-1step": (5, 20),
    "W3-5step": (5, 10),
}  # rounds, calls/round


def parse_mode(mode: str) -> str | int:
    return int(mode) if mode.isdigit() else mode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--modes", nargs="+", default=["vmap", "map", "2", "4", "8", "auto"])
    parser.add_argument("--rounds-scale", type=float, default=1.0, help="scale the repeats")
    parser.add_argument(
        "--conv",
        default="auto",
        choices=["auto", "im2col", "im2col_fused", "winograd_fused", "xla"],
        help="conv4 formulation",
    )
    _bench.add_output_args(parser)
    args = parser.parse_args(argv)
    allocator_tuned = _bench.setup_host(not args.no_tune_allocator)

    before = _bench.machine()
    rows = []
    for name in args.workloads:
        compiled = [
            _bench.compile_step(
                _bench.StepConfig(**WORKLOADS[name], task_parallel=parse_mode(mode), conv=args.conv)
            )
            for mode in args.modes
        ]
        rounds, calls = TIMING[name]
        times = _bench.time_interleaved(
            compiled,
            rounds=max(1, round(rounds * args.rounds_scale)),
            calls_per_round=calls,
        )
        for c, t in zip(compiled, times):
            spc = c.cfg.steps_per_call
            stats = _bench.summarize(t)
            row = {
                "workload": name,
                "task_parallel": str(c.cfg.task_parallel),
                "resolved_task_parallel": c.resolved_task_parallel,
                "config": c.cfg.label(),
                "ms_per_meta_step": 1e3 * stats["sec_per_call_median"] / spc,
                "ms_per_meta_step_iqr": 1e3 * stats["sec_per_call_iqr"] / spc,
                "tasks_per_s": c.cfg.meta_batch * spc / stats["sec_per_call_median"],
                "compile_s": c.compile_s,
                **c.memory,
                **stats,
                "times": t,
            }
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)
    after = _bench.machine()
    extra = {"loadavg_before": before["loadavg"], "allocator_tuned": allocator_tuned}
    _bench.append_jsonl(args.out, [{**r, **after, **extra} for r in rows])
    lines = [
        f"Task-parallel modes, jax {after['jax_version']} on {after['device']} "
        f"({after['cpus']} cores of {_host.describe()}), {after['when']}; load average {before['loadavg'][0]:.2f} "
        f"before, {after['loadavg'][0]:.2f} after. Modes timed in alternating rounds in one "
        f"process; host allocator {'tuned' if allocator_tuned else 'not tuned'} "
        "(metajax.tune_host_allocator).",
        "",
        "Command: `"
        + (
            "python benchmarks/task_parallel.py "
            + shlex.join(sys.argv[1:] if argv is None else argv)
        ).strip()
        + "`",
        "",
        "| workload | task_parallel | ms / meta-step (median, IQR) | x vmap time | tasks/s "
        "| exec MB (temp + arg + out) | compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.workloads:
        group = [r for r in rows if r["workload"] == name]
        vmap = next((r for r in group if r["task_parallel"] == "vmap"), None)
        for r in group:
            rel = f"{r['ms_per_meta_step'] / vmap['ms_per_meta_step']:.2f}" if vmap else ""
            mode = r["task_parallel"]
            if mode == "auto":
                mode = f"auto (= {r['resolved_task_parallel']})"
            lines.append(
                f"| {name} | {mode} | {r['ms_per_meta_step']:.2f} "
                f"(±{r['ms_per_meta_step_iqr']:.2f}) | {rel} | {r['tasks_per_s']:.0f} "
                f"| {r.get('exec_mb', float('nan')):.1f} | {r['compile_s']:.1f} |"
            )
    table = "\n".join(lines) + "\n"
    _bench.write_table(table, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
