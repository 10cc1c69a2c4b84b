"""Which threads run the Omniglot meta-step, on one CPU device and on the split CPU.

:func:`metajax.cpu_devices` splits the CPU into one XLA device per core and turns off
Eigen's multi-threading (``--xla_cpu_multi_thread_eigen=false``). This checks what that
does to the threads that compute, each setting in its own process:

* ``one``: the CPU as one device, the step jitted;
* ``split_sharded``: 2 devices, the step sharded over them (as the CLI's recipes run it);
* ``split_unsharded``: 2 devices, the plain jitted step (it runs on device 0), as an
  evaluation step or a user's own program does;
* ``split_unsharded_one_core``: the same, with the process pinned to core 0 before JAX
  starts, for the time the step takes on one core.

Reported per setting: seconds per meta-step (median of ``--iters``), the process's CPU
time over wall time in the timed steps, and the CPU time per step of its busiest
threads (``/proc/self/task``), by name.

Usage: python benchmarks/split_cpu_threads.py [--workload W2-so-1step] [--iters 5]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import _host

SETTINGS = ("one", "split_sharded", "split_unsharded", "split_unsharded_one_core")


def _thread_cpu() -> dict[str, tuple[str, int]]:
    """``{thread id: (name, user + system clock ticks)}`` for this process."""
    out = {}
    for task in glob.glob(f"/proc/{os.getpid()}/task/*"):
        try:
            with open(f"{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"{task}/comm") as f:
                name = f.read().strip()
        except OSError:  # the thread ended
            continue
        out[os.path.basename(task)] = (name, int(fields[11]) + int(fields[12]))
    return out


def worker(setting: str, workload: str, iters: int) -> dict:
    if setting == "split_unsharded_one_core":
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
    import metajax as mj

    if setting.startswith("split"):
        mj.cpu_devices(2)  # before the first array
    mj.tune_xla_cpu()
    mj.tune_host_allocator()
    import _bench
    import jax
    import numpy as np
    from torch_peers import get_workload  # the workload definitions only; no torch needed

    tasks, learner, outer, state = _bench.omniglot_workload(get_workload(workload), "auto")
    step = mj.make_train_step(learner, outer, pre_adaptation_metrics=False, task_parallel="map")
    if setting == "split_sharded":
        fn, state, _ = _bench.sharded_task_batch_step(step, state, tasks)
    else:
        fn = jax.jit(step, donate_argnums=0)
    for _ in range(2):  # compile, warm up
        state, metrics = fn(state, tasks)
    jax.block_until_ready(state)
    before = _thread_cpu()
    cpu0 = time.process_time()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        state, metrics = fn(state, tasks)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    after = _thread_cpu()
    tick = os.sysconf("SC_CLK_TCK")
    per_thread = sorted(
        (
            ((ticks - before.get(tid, (name, 0))[1]) / tick / iters, name)
            for tid, (name, ticks) in after.items()
        ),
        reverse=True,
    )
    return {
        "setting": setting,
        "workload": workload,
        "devices": jax.device_count(),
        "cores_allowed": len(os.sched_getaffinity(0)),
        "sec_per_step_median": float(np.median(times)),
        "times": times,
        "cpu_over_wall": cpu / sum(times),
        "busiest_threads_cpu_s_per_step": [[name, round(s, 3)] for s, name in per_thread[:4]],
        "meta_loss": float(metrics["meta_loss"]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="W2-so-1step")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--out", default=None, help="append JSON lines here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.workload, args.iters)))
        return 0
    print(
        f"# {' '.join(sys.argv)}  ({time.strftime('%Y-%m-%d %H:%M:%S')}, {_host.describe()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    print(
        "| setting | devices | cores | s / meta-step | CPU / wall | busiest threads, CPU s per step |"
    )
    print("|---|---|---|---|---|---|")
    for setting in args.settings:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", setting]
        cmd += ["--workload", args.workload, "--iters", str(args.iters)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if not lines:
            print(f"| {setting} | error: {proc.stderr[-300:]!r} |||||", flush=True)
            continue
        r = json.loads(lines[-1])
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({**r, **_host.cpu_facts()}) + "\n")
        threads = ", ".join(f"{name} {s:.2f}" for name, s in r["busiest_threads_cpu_s_per_step"])
        print(
            f"| {setting} | {r['devices']} | {r['cores_allowed']} | "
            f"{r['sec_per_step_median']:.3f} | {r['cpu_over_wall']:.2f} | {threads} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
