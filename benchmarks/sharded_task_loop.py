"""The Omniglot W1 meta-step sharded over simulated CPU devices, per task-parallel mode.

Each device count runs in its own process (``XLA_FLAGS=--xla_force_host_platform_device_count=N``
must be set before JAX starts). The step is :func:`metajax.parallel.shard_train_step`
of the W1 workload's train step (32 tasks, second-order MAML on conv4); with one
device it is the plain jitted step. Reported per mode: seconds per meta-step
(median), the trip count of the task loop in the compiled program (the tasks each
device loops over; ``-`` for ``vmap``, which has no loop) and the number of
all-gathers in it.

Simulated devices share the same cores, so this does not measure a speed-up from
more hardware: it checks that each device computes only its share of the tasks.

Usage:
  python benchmarks/sharded_task_loop.py --devices 1 2 8 --modes map 4 vmap \\
      --out benchmarks/results/sharded_task_loop.jsonl --md benchmarks/results/sharded_task_loop.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(modes: list[str], iters: int) -> list[dict]:
    sys.path.insert(0, os.path.join(HERE, "peers"))
    import _bench
    import jax
    import numpy as np
    from torch_peers import get_workload  # the workload definitions only; no torch needed

    import metajax as mj

    mj.tune_host_allocator()
    w = get_workload("W1-so-1step")
    records = []
    for mode in modes:
        tasks, learner, outer, state = _bench.omniglot_workload(w, "auto")
        step = mj.make_train_step(
            learner,
            outer,
            pre_adaptation_metrics=False,
            task_parallel=int(mode) if mode.isdigit() else mode,
        )
        sharded, state, hlo_text = _bench.sharded_task_batch_step(step, state, tasks)
        start = time.perf_counter()
        state, metrics = sharded(state, tasks)
        jax.block_until_ready(state)
        first_call_s = time.perf_counter() - start
        hlo = hlo_text()  # the same program, for its loop and its collectives
        trips = sorted({int(n) for n in re.findall(r'known_trip_count":\{"n":"(\d+)"', hlo)})
        times = []
        for _ in range(iters + 1):  # the first of these is a warm-up
            start = time.perf_counter()
            state, metrics = sharded(state, tasks)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
        times = times[1:]
        records.append(
            {
                "workload": "W1-so-1step",
                "task_parallel": mode,
                "devices": jax.device_count(),
                "sec_per_step_median": float(np.median(times)),
                "times": times,
                "first_call_s": first_call_s,
                "loop_trip_counts": trips,
                "all_gathers": hlo.count(" all-gather("),
                "meta_loss": float(metrics["meta_loss"]),
                **_bench.machine(),
            }
        )
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--modes", nargs="+", default=["map", "4", "vmap"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", default=None, help="append JSON lines here")
    parser.add_argument("--md", default=None, help="write the markdown table here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        for record in worker(args.modes, args.iters):
            print(json.dumps(record), flush=True)
        return 0

    sys.path.insert(0, HERE)
    import _bench

    records = []
    for n in args.devices:
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
        env["JAX_PLATFORMS"] = "cpu"
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--iters", str(args.iters)]
        proc = subprocess.run(
            [*cmd, "--modes", *args.modes], capture_output=True, text=True, env=env
        )
        lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode or not lines:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        records += lines
    _bench.append_jsonl(args.out, records)
    first = records[0]
    table = [
        f"W1 meta-step sharded over simulated CPU devices; jax {first['jax_version']}, "
        f"{first['cpus']} cores, commit {first['git_commit']}"
        + (
            f" + uncommitted {' '.join(first['uncommitted_library_files'])}"
            if first["uncommitted_library_files"]
            else ""
        )
        + f", {first['when']}.",
        "",
        "| devices | task_parallel | s / meta-step (median) | task-loop trips per device "
        "| all-gathers | meta-loss after the timed steps |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        trips = ", ".join(map(str, r["loop_trip_counts"])) or "-"
        table.append(
            f"| {r['devices']} | {r['task_parallel']} | {r['sec_per_step_median']:.3f} "
            f"| {trips} | {r['all_gathers']} | {r['meta_loss']:.4f} |"
        )
    _bench.write_table("\n".join(table) + "\n", args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
