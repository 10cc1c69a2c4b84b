"""Each core's single-thread float32 matmul rate, alone and with every core busy.

Statically split work (the split CPU: one JAX device per core, each with
its share of the tasks) runs at the slowest core's pace, so a host whose cores do not
run at the same speed loses the difference at the gradients' all-reduce. This measures
that: a 1024x1024 numpy matmul (one BLAS thread) pinned to each core in turn, then on
all cores at once, for several rounds. No jax.

Usage: python benchmarks/core_speed.py [--rounds 3] [--size 1024] [--reps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import _host

WORKER = """
import os, sys, time, numpy as np
os.sched_setaffinity(0, {int(sys.argv[1])})
n, reps = int(sys.argv[2]), int(sys.argv[3])
a = np.random.default_rng(0).random((n, n), dtype=np.float32)
for _ in range(3):
    a @ a
ts = []
for _ in range(reps):
    t = time.perf_counter(); a @ a; ts.append(time.perf_counter() - t)
print(2 * n**3 / sorted(ts)[len(ts) // 2] / 1e9)
"""

ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def start(core: int, size: int, reps: int) -> subprocess.Popen:
    cmd = [sys.executable, "-c", WORKER, str(core), str(size), str(reps)]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, **ONE_THREAD}
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    print(
        f"{_host.describe()}, cores {cores}, load average {os.getloadavg()[0]:.2f}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    rows = []
    for r in range(args.rounds):
        alone = {c: float(start(c, args.size, args.reps).communicate()[0]) for c in cores}
        procs = {c: start(c, args.size, args.reps) for c in cores}
        together = {c: float(p.communicate()[0]) for c, p in procs.items()}
        rows.append({"round": r, "alone": alone, "together": together})
        print(json.dumps(rows[-1] | {"gflop_per_s": "median of reps, one thread"}), flush=True)
    for mode in ("alone", "together"):
        for c in cores:
            v = [row[mode][c] for row in rows]
            print(f"{mode:8s} core {c}: {min(v):.1f}-{max(v):.1f} GFLOP/s over {len(v)} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
