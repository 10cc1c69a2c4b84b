"""Omniglot MAML meta-step: metajax beside learn2learn / higher / TorchOpt, same run.

Workloads (see ``peers/torch_peers.py``): W1 = the MAML paper's protocol (5-way
1-shot, 1 query per class, conv4-64, meta-batch 32, 1 inner SGD step at lr 0.4,
second order, Adam); W2 = the same with 15 queries per class. Each measurement
runs in a fresh subprocess (clean peak RSS), one after the other on the same
machine; metajax's compile time is reported apart from its steady state.

Usage:
  python benchmarks/omniglot_vs_peers.py --workloads W1-so-1step W2-so-1step \\
      --peers learn2learn --iters 5 --out benchmarks/results/omniglot_vs_peers.jsonl

metajax's worker calls :func:`metajax.tune_host_allocator` (see :mod:`metajax.runtime`:
without it every step page-faults its temporary buffers afresh) and
:func:`metajax.tune_xla_cpu`, as the CLI does (``--xla-cpu both`` times it with and
without). For a fair
comparison the peers run both with glibc's default allocator and with the same
tuning through glibc's environment variables (``--peer-allocator``).

Needs the ``peers`` extra for the PyTorch side (see ``benchmarks/peers/README.md``);
``--peers`` with no names times metajax alone. ``--device cuda`` runs the peers on the
GPU; metajax uses whatever JAX backend is present (recorded as ``jax_backend``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))

import _host  # noqa: E402  (this directory is on sys.path when the script runs)


def time_metajax(
    workload_name: str,
    *,
    warmup: int,
    iters: int,
    conv: str,
    task_parallel: str = "vmap",
    tune_allocator: bool = True,
    tune_xla: bool = True,
    cpu_devices: int = 0,
    compile_alone: bool = False,
) -> dict:
    """Times metajax's jitted train step on one workload, in this process.

    With ``cpu_devices`` > 0 the host CPU is split into that many
    devices (:func:`metajax.cpu_devices`, before JAX starts) and the step is sharded
    over them (:func:`metajax.parallel.shard_train_step`), each device looping over its
    share of the tasks. Its first call then compiles and runs one step
    (``compile_s``); ``compile_alone`` also compiles the same program once more after
    the timed steps and the memory readings, and records that time alone
    (``compile_alone_s``; it includes printing the program's HLO, so it errs long).
    """
    import resource

    import metajax as mj

    devices_set = mj.cpu_devices(cpu_devices) if cpu_devices else 0  # before the first array

    import _bench  # this directory is on sys.path when a script runs
    import jax
    import numpy as np
    from torch_peers import _rss_now_mb, get_workload  # workload definitions; no torch needed

    from metajax.models import conv4

    xla_tuned = mj.tune_xla_cpu() if tune_xla else False  # before the first array
    tuned = mj.tune_host_allocator() if tune_allocator else False
    w = get_workload(workload_name)
    if w["family"] != "omniglot":
        raise ValueError("this script times the Omniglot workloads (W1, W2)")
    tasks_n = w["meta_batch"]
    tasks, learner, outer, state = _bench.omniglot_workload(w, conv)
    rss_before_compile = _rss_now_mb()
    step = mj.make_train_step(
        learner,
        outer,
        pre_adaptation_metrics=False,
        task_parallel=int(task_parallel) if task_parallel.isdigit() else task_parallel,
    )
    hlo = None
    if jax.device_count() > 1:
        compiled, state, hlo = _bench.sharded_task_batch_step(step, state, tasks)
        t0 = time.perf_counter()
        state, _ = compiled(state, tasks)  # compiles; the state is donated
        jax.block_until_ready(state)
        compile_s = time.perf_counter() - t0
        cost = {}  # per device, and a loop body once: see the single-device figure
    else:
        step = jax.jit(step, donate_argnums=0)
        t0 = time.perf_counter()
        compiled = step.lower(state, tasks).compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
    peak_after_compile = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for _ in range(warmup):
        state, metrics = compiled(state, tasks)
    jax.block_until_ready(state)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        state, metrics = compiled(state, tasks)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    q25, q75 = np.percentile(times, [25, 75])
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    rss_end = _rss_now_mb()
    extra = {}
    if compile_alone and hlo is not None:
        t0 = time.perf_counter()
        hlo()  # lowers and compiles the sharded step once more, and prints its HLO
        extra["compile_alone_s"] = time.perf_counter() - t0
    return {
        "peer": "metajax",
        "workload": workload_name,
        "conv": conv4.resolve_conv(conv),
        "allocator": "tuned" if tuned else "default",
        "xla_cpu": "tuned" if xla_tuned else "default",
        "task_parallel": task_parallel,
        "cpu_devices": devices_set,
        "sec_per_step_median": med,
        "sec_per_step_iqr": float(q75 - q25),
        "tasks_per_s": tasks_n / med,
        "compile_s": compile_s,
        "gflop_per_step": float(cost.get("flops", float("nan"))) / 1e9,
        "peak_rss_mb": peak_rss,
        # Where the peak comes from: the process before the step is built (Python, JAX,
        # the data), the high-water mark once the first call (sharded: compile and one
        # step; else the compile alone) returned, and the resident set after the timed steps.
        "rss_before_compile_mb": rss_before_compile,
        "peak_rss_after_compile_mb": peak_after_compile,
        "rss_end_mb": rss_end,
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "times": times,
        "meta_loss": float(metrics["meta_loss"]),
        **extra,
    }


def run_metajax_isolated(
    workload: str,
    *,
    warmup: int,
    iters: int,
    conv: str,
    task_parallel: str,
    tune_allocator: bool,
    tune_xla: bool = True,
    cpu_devices: int = 0,
    compile_alone: bool = False,
) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        workload,
        "--warmup",
        str(warmup),
        "--iters",
        str(iters),
        "--conv",
        conv,
        "--task-parallel",
        task_parallel,
    ]
    if not tune_allocator:
        cmd.append("--default-allocator")
    if not tune_xla:
        cmd += ["--xla-cpu", "default"]
    cmd += ["--cpu-devices", str(cpu_devices)]
    if compile_alone:
        cmd.append("--compile-alone")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"peer": "metajax", "workload": workload, "error": proc.stderr[-2000:]}


#: glibc's environment equivalent of metajax.tune_host_allocator, for the peers.
TUNED_ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def run_peer_isolated(
    peer: str, workload: str, *, warmup: int, iters: int, tuned: bool, device: str = "cpu"
) -> dict:
    from torch_peers import run_isolated

    saved = dict(os.environ)
    if tuned:
        os.environ.update(TUNED_ALLOCATOR_ENV)
    try:
        result = run_isolated(peer, workload, warmup=warmup, iters=iters, device=device)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {**result, "allocator": "tuned" if tuned else "default"}


#: Which settings ("tuned" or not) a --peer-allocator / --xla-cpu choice times.
TUNED_SETTINGS = {"default": [False], "tuned": [True], "both": [False, True]}


def _config(r: dict) -> str:
    """One measured setting, without its timing: the library and how it was run."""
    if r["peer"] == "metajax":
        return (
            f"metajax (task_parallel={r.get('task_parallel')}, "
            f"{r.get('xla_cpu', 'default')} XLA:CPU flags, cpu_devices={r.get('cpu_devices', 0)})"
        )
    return f"{r['peer']} ({r.get('allocator', 'default')} allocator)"


def round_summary(results: list[dict]) -> list[str]:
    """Each peer's per-round ratio to each metajax setting, and their spread.

    A ratio is the peer's median step over metajax's in the same round. Over the
    rounds: the geometric mean with a 95% t-interval of the log-ratios (rounds are
    independent draws of the host's state), and the smallest and largest.
    """
    from statistics import mean, stdev

    from scipy import stats  # the peers' extra brings scipy

    lines = []
    for workload in dict.fromkeys(r["workload"] for r in results):
        ok = [r for r in results if r["workload"] == workload and "error" not in r]
        ours = sorted({_config(r) for r in ok if r["peer"] == "metajax"})
        theirs = sorted({_config(r) for r in ok if r["peer"] != "metajax"})
        for mine in ours:
            for peer in theirs:
                ratios = []
                for round_ in sorted({r["round"] for r in ok}):
                    a = [r for r in ok if r["round"] == round_ and _config(r) == mine]
                    b = [r for r in ok if r["round"] == round_ and _config(r) == peer]
                    if a and b:
                        ratios.append(b[0]["sec_per_step_median"] / a[0]["sec_per_step_median"])
                if not ratios:
                    continue
                logs = [math.log(x) for x in ratios]
                text = (
                    f"{workload}: {peer} / {mine}: rounds "
                    + " ".join(f"{x:.2f}x" for x in ratios)
                    + f"; geometric mean {math.exp(mean(logs)):.2f}x"
                )
                if len(logs) > 1:
                    half = stats.t.ppf(0.975, len(logs) - 1) * stdev(logs) / math.sqrt(len(logs))
                    text += (
                        f", 95% t-interval [{math.exp(mean(logs) - half):.2f}x, "
                        f"{math.exp(mean(logs) + half):.2f}x]"
                    )
                text += f", range {min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} rounds"
                lines.append(text)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["W1-so-1step", "W2-so-1step"])
    parser.add_argument("--peers", nargs="*", default=["learn2learn"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument(
        "--conv",
        default="auto",
        choices=["auto", "im2col", "im2col_fused", "winograd_fused", "xla"],
    )
    parser.add_argument(
        "--task-parallel",
        nargs="+",
        default=["vmap"],
        help="metajax task-parallel modes to time: vmap, map, or a chunk size",
    )
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="do not call metajax.tune_host_allocator in the metajax worker",
    )
    parser.add_argument(
        "--xla-cpu",
        choices=["default", "tuned", "both"],
        default="tuned",
        help="time metajax with metajax.tune_xla_cpu (as the CLI runs), without it, or both",
    )
    parser.add_argument(
        "--peer-allocator",
        choices=["default", "tuned", "both"],
        default="both",
        help="run the peers with glibc's default allocator, with the same tuning as "
        "metajax (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_), or both",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="torch device for the peers (metajax uses the JAX backend that is present)",
    )
    parser.add_argument(
        "--cpu-devices",
        type=int,
        nargs="+",
        default=[0],
        help="metajax settings to time: 0 (the CPU as one device) or N CPU devices (one "
        "per core) with the step sharded over them (metajax.cpu_devices)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every measurement this many times, alternating metajax first and "
        "the peers first, and summarise the ratio to each peer over the rounds",
    )
    parser.add_argument(
        "--compile-alone",
        action="store_true",
        help="on the split CPU, also time compiling the sharded step alone, after the "
        "timed steps (its first call compiles and runs one step)",
    )
    parser.add_argument("--out", default=None, help="append JSON lines here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        mode = args.task_parallel[0]
        record = time_metajax(
            args.worker,
            warmup=args.warmup,
            iters=args.iters,
            conv=args.conv,
            task_parallel=mode,
            tune_allocator=not args.default_allocator,
            tune_xla=args.xla_cpu != "default",
            cpu_devices=args.cpu_devices[0],
            compile_alone=args.compile_alone,
        )
        print(json.dumps(record))
        return 0

    peer_modes = TUNED_SETTINGS[args.peer_allocator]
    xla_modes = TUNED_SETTINGS[args.xla_cpu]
    machine = {
        "machine": platform.processor() or platform.machine(),
        **_host.cpu_facts(),
        "cpus": os.cpu_count(),
        "peer_device": args.device,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),  # the run's start; "ended": each record's
    }
    results = []

    def record(r: dict, round_: int) -> None:
        # Each measurement is printed and appended as soon as it ends, so a run cut
        # short (a time limit) keeps what it measured. No jax in this process: on a GPU
        # it would hold device memory the measured subprocesses need.
        r = {**r, "round": round_, "ended": time.strftime("%H:%M:%S")}
        results.append(r)
        print(json.dumps(r), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({**r, **machine}) + "\n")

    def run_metajax(workload: str, round_: int) -> None:
        for mode in args.task_parallel:
            for tune_xla in xla_modes:
                for cpu_devices in args.cpu_devices:
                    record(
                        run_metajax_isolated(
                            workload,
                            warmup=args.warmup,
                            iters=args.iters,
                            conv=args.conv,
                            task_parallel=mode,
                            tune_allocator=not args.default_allocator,
                            tune_xla=tune_xla,
                            cpu_devices=cpu_devices,
                            compile_alone=args.compile_alone,
                        ),
                        round_,
                    )

    def run_peers(workload: str, round_: int) -> None:
        for peer in args.peers or []:
            for tuned in peer_modes:
                record(
                    run_peer_isolated(
                        peer,
                        workload,
                        warmup=args.warmup,
                        iters=args.iters,
                        tuned=tuned,
                        device=args.device,
                    ),
                    round_,
                )

    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1; got {args.rounds}")
    for workload in args.workloads:
        for round_ in range(args.rounds):
            # Alternate the order, so that neither side always runs first (after a
            # compile, or on a host that slows down as it warms up).
            for run in (run_metajax, run_peers)[:: 1 if round_ % 2 == 0 else -1]:
                run(workload, round_)

    print(
        "| workload | library | s / meta-step (median, IQR) | tasks/s | peak RSS MB | "
        "metajax speed-up | notes |"
    )
    print("|---|---|---|---|---|---|---|")
    for workload in args.workloads:
        rows = [r for r in results if r.get("workload") == workload]
        ours_all = [r for r in rows if r["peer"] == "metajax" and "error" not in r]
        ours = min(ours_all, key=lambda r: r["sec_per_step_median"]) if ours_all else None
        for r in rows:
            if "error" in r:
                print(f"| {workload} | {r['peer']} | error: {r['error'][:80]} | | | | |")
                continue
            # speed-up of metajax's fastest mode over this peer
            ratio = (r["sec_per_step_median"] / ours["sec_per_step_median"]) if ours else None
            if r["peer"] == "metajax":
                note = (
                    f"compile {r['compile_s']:.1f} s, {r['gflop_per_step']:.0f} GFLOP/step, "
                    f"{r.get('jax_backend', '?')} ({r.get('device', '?')})"
                )
                if r.get("cpu_devices"):  # sharded: timed as the first call, no cost analysis
                    note = f"first call (compile and one step) {r['compile_s']:.1f} s"
                    if "compile_alone_s" in r:
                        note += f", compile alone {r['compile_alone_s']:.1f} s"
            else:
                note = f"{r.get('lib_version', '')}, {r.get('device', 'cpu')}"
                if r.get("peak_gpu_mem_mb") is not None:
                    note += f" ({r.get('device_name', '')}), peak GPU {r['peak_gpu_mem_mb']:.0f} MB"
            if args.rounds > 1:
                note += f", round {r['round']}"
            library = r["peer"]
            if r["peer"] == "metajax" and r.get("task_parallel", "vmap") != "vmap":
                library += f" (task_parallel={r['task_parallel']})"
            library += f", {r.get('allocator', 'default')} allocator"
            if r["peer"] == "metajax":
                library += f", {r.get('xla_cpu', 'default')} XLA:CPU flags"
                if r.get("cpu_devices"):
                    library += f", {r['cpu_devices']} CPU devices (sharded)"
            print(
                f"| {workload} | {library} | {r['sec_per_step_median']:.3f} "
                f"(±{r['sec_per_step_iqr']:.3f}) | {r['tasks_per_s']:.1f} | "
                f"{r['peak_rss_mb']:.0f} | "
                f"{'' if r['peer'] == 'metajax' or ratio is None else f'{ratio:.2f}x'} "
                f"| {note} |"
            )
    if args.rounds > 1:
        print()
        for line in round_summary(results):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
