"""Memory of the MAML meta-step on conv4 against the number of inner steps.

Workload: the Omniglot W1 shape (5-way 1-shot, 1 query per class, conv4-64, 28x28
inputs, inner SGD lr 0.4, Adam outer step), meta-batch 32 by default, for 1, 5, 10
and 20 inner steps; second order with and without ``remat``, and first order. The
``imaml`` variants (``--variants imaml imaml-gauss-newton``) put iMAML beside them:
the same steps of proximal SGD (lr 0.1, its Omniglot setting; lambda 2) and a 5-step
conjugate-gradient solve on Hessian- or Gauss-Newton-vector products at the adapted
parameters, which need no stored inner trajectory.

For each configuration a fresh subprocess builds the jitted train step, compiles it,
and runs one meta-step. It reports:

* the compiled executable's ``memory_analysis()``: argument, output, temporary and
  aliased (donated) bytes; ``exec_bytes = temp + argument + output`` is the figure
  the issue asks for;
* the process's RSS: ``rss_base_mb`` after imports and data, ``compile_hwm_mb``
  (high-water mark up to the end of compilation, XLA's own memory included),
  ``rss_after_compile_mb``, and ``step_hwm_mb``, the high-water mark while running the
  step (the mark is reset with ``/proc/self/clear_refs`` after compiling), so
  ``step_rss_increase_mb = step_hwm - rss_after_compile`` is what running the step
  added; plus ``ru_maxrss`` (the whole process's peak);
* compile time and the time of that one step (not a steady-state figure).

Usage:
  python benchmarks/memory_vs_inner_steps.py \\
      --out benchmarks/results/memory_vs_inner_steps.jsonl \\
      --md benchmarks/results/memory_vs_inner_steps.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time

import _host  # this directory is on sys.path when the script runs

VARIANTS = {
    # name: (first_order, remat); MAML's variants
    "second-order": (False, False),
    "second-order+remat": (False, True),
    "first-order": (True, False),
    "first-order+remat": (True, True),
    # iMAML (curvature of the CG solve); first_order/remat do not apply
    "imaml": (False, False),
    "imaml-gauss-newton": (False, False),
}


def build_learner(variant: str, inner_steps: int):
    """The meta-learner of one variant: MAML's (``maml``) or iMAML's (``imaml``)."""
    import metajax as mj
    from metajax.recipes import omniglot

    conv = "im2col"
    if variant.startswith("imaml"):
        curvature = None
        if variant == "imaml-gauss-newton":
            curvature = mj.gauss_newton_curvature(
                omniglot.classifier_logits(conv), omniglot.classifier_output_loss
            )
        return mj.imaml(
            omniglot.classifier_loss(conv),
            inner_lr=0.1,
            inner_steps=inner_steps,
            lam=2.0,
            cg_steps=5,
            curvature=curvature,
        )
    first_order, remat = VARIANTS[variant]
    return mj.maml(
        omniglot.classifier_loss(conv),
        inner_lr=0.4,
        inner_steps=inner_steps,
        first_order=first_order,
        remat=remat,
    )


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak_rss() -> bool:
    """Resets VmHWM (Linux >= 4.0); returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(
    *,
    inner_steps: int,
    variant: str,
    meta_batch: int,
    channels: int,
    task_parallel: str,
    max_run_mb: float,
    tune_allocator: bool = True,
) -> dict:
    """Compiles and runs one W1-shaped MAML meta-step in this process.

    The step is only compiled, not run, when the compiled program needs more than
    ``max_run_mb`` (the RSS fields are then NaN): the machine is shared.
    """
    import _bench  # this directory is on sys.path when a script runs
    import jax
    import numpy as np
    import optax

    import metajax as mj
    from metajax.models import conv4

    allocator_tuned = mj.tune_host_allocator() if tune_allocator else False
    first_order, remat = VARIANTS[variant]
    ways, shots, queries = 5, 1, 1
    tasks = _bench.random_omniglot_tasks(
        np.random.default_rng(0),
        tasks=meta_batch,
        ways=ways,
        shots=shots,
        queries=queries,
        normal=True,
    )
    learner = build_learner(variant, inner_steps)
    outer = optax.adam(1e-3)
    params = conv4.init(jax.random.key(0), ways=ways, channels=channels)
    state = mj.init_train_state(learner, params, outer, jax.random.key(1))
    mode = int(task_parallel) if task_parallel.isdigit() else task_parallel
    step = jax.jit(
        mj.make_train_step(learner, outer, pre_adaptation_metrics=False, task_parallel=mode),
        donate_argnums=0,
    )
    jax.block_until_ready((state, tasks))
    rss_base = _proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    compiled = step.lower(state, tasks).compile()
    compile_s = time.perf_counter() - t0
    compile_hwm = _proc_status_mb("VmHWM")
    mem = compiled.memory_analysis()
    arg, out, tmp = mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes
    ran = (arg + out + tmp) / 2**20 <= max_run_mb
    step_s = step_hwm = meta_loss = float("nan")
    rss_after_compile = _proc_status_mb("VmRSS")
    if ran:
        reset_ok = _reset_peak_rss()
        t0 = time.perf_counter()
        state, metrics = compiled(state, tasks)
        jax.block_until_ready((state, metrics))
        step_s = time.perf_counter() - t0
        step_hwm = _proc_status_mb("VmHWM") if reset_ok else float("nan")
        meta_loss = float(metrics["meta_loss"])
    return {
        "inner_steps": inner_steps,
        "variant": variant,
        "first_order": first_order,
        "remat": remat,
        "meta_batch": meta_batch,
        "channels": channels,
        "task_parallel": task_parallel,
        "allocator_tuned": allocator_tuned,
        "argument_mb": arg / 2**20,
        "output_mb": out / 2**20,
        "temp_mb": tmp / 2**20,
        "alias_mb": mem.alias_size_in_bytes / 2**20,
        "exec_mb": (arg + out + tmp) / 2**20,
        "rss_base_mb": rss_base,
        "compile_hwm_mb": compile_hwm,
        "step_hwm_mb": step_hwm,
        "rss_after_compile_mb": rss_after_compile,
        "step_rss_over_base_mb": step_hwm - rss_base,
        "step_rss_increase_mb": step_hwm - rss_after_compile,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "compile_s": compile_s,
        "one_step_s": step_s,
        "ran": ran,
        "meta_loss": meta_loss,
        "jax_version": jax.__version__,
        "device": jax.devices()[0].device_kind,
    }


def run_isolated(**kwargs) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(kwargs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {**kwargs, "error": proc.stderr[-2000:]}


def markdown(rows: list[dict], header: str) -> str:
    """The table: memory and its ratios to 1 step of the same variant and of plain MAML."""
    lines = [
        header,
        "",
        "| inner steps | variant | exec MB (temp + arg + out) | x same variant, 1 step "
        "| x second-order, 1 step | RSS added by the step MB | x same variant, 1 step (RSS) "
        "| process peak RSS MB | compile s | one step s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ok = [r for r in rows if "error" not in r]
    fewest = min((r["inner_steps"] for r in ok), default=None)
    base = {r["variant"]: r for r in ok if r["inner_steps"] == fewest}
    plain = base.get("second-order")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['inner_steps']} | {r['variant']} | error |" + " |" * 7)
            continue
        b = base.get(r["variant"])
        ratio = f"{r['exec_mb'] / b['exec_mb']:.2f}" if b else ""
        ratio_plain = f"{r['exec_mb'] / plain['exec_mb']:.2f}" if plain else ""
        if r["ran"]:
            rss = f"{r['step_rss_increase_mb']:.0f}"
            rss_ratio = (
                f"{r['step_rss_increase_mb'] / b['step_rss_increase_mb']:.2f}"
                if b and b["ran"]
                else ""
            )
            peak, one = f"{r['ru_maxrss_mb']:.0f}", f"{r['one_step_s']:.2f}"
        else:
            rss, rss_ratio, peak, one = "not run (too large)", "", "", ""
        lines.append(
            f"| {r['inner_steps']} | {r['variant']} | {r['exec_mb']:.0f} | {ratio} "
            f"| {ratio_plain} | {rss} | {rss_ratio} | {peak} | {r['compile_s']:.1f} | {one} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import _bench  # imports jax; the measurements run in fresh processes

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS)[:4], choices=list(VARIANTS))
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--task-parallel", default="vmap")
    parser.add_argument(
        "--max-run-mb",
        type=float,
        default=8000,
        help="only compile (no run, no RSS) configurations whose program needs more",
    )
    _bench.add_output_args(parser)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(**json.loads(args.worker))))
        return 0

    load_before = os.getloadavg()
    rows = []
    for variant in args.variants:
        for steps in args.inner_steps:
            row = run_isolated(
                inner_steps=steps,
                variant=variant,
                meta_batch=args.meta_batch,
                channels=args.channels,
                task_parallel=args.task_parallel,
                max_run_mb=args.max_run_mb,
                tune_allocator=not args.no_tune_allocator,
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine = {
        **_bench.source_state(),
        "machine": platform.processor() or platform.machine(),
        **_host.cpu_facts(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _bench.append_jsonl(args.out, [{**r, **machine} for r in rows])
    ok = [r for r in rows if "error" not in r]
    header = (
        f"Meta-step on conv4-{args.channels}, W1 shape (5-way 1-shot, 1 query/class), "
        f"meta-batch {args.meta_batch}, task_parallel={args.task_parallel}; jax "
        f"{ok[0]['jax_version'] if ok else '?'} on {ok[0]['device'] if ok else '?'} "
        f"({os.cpu_count()} cores of {_host.describe()}), {machine['when']}, load average "
        f"{load_before[0]:.2f} before / {machine['loadavg_after'][0]:.2f} after; host "
        f"allocator {'not ' if args.no_tune_allocator else ''}tuned (metajax.tune_host_allocator)."
    )
    command = "python benchmarks/memory_vs_inner_steps.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    table = markdown(rows, header + f"\n\nCommand: `{command.strip()}`")
    _bench.write_table(table, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
