"""metajax micro-benchmark suite: the meta-training step on this machine.

Measures the MAML meta-training step (tasks drawn on the device inside the step,
Adam outer update, state donated) against meta-batch size, inner steps, first vs
second order, task-parallel mode, remat and meta-steps per compiled call, on two
models: the sinusoid MLP 1-40-40-1 (10 support + 10 query points) and conv4 on
Omniglot-shaped random images (5-way 1-shot, 1 query per class; 32 channels by
default to keep the default run short, ``--conv4-channels 64`` for the paper's net).

For every configuration it reports:

* compile time (``lower().compile()``), apart from the steady state;
* steady state: after warm-up, every call ended by ``jax.block_until_ready``, the
  configurations of one model timed in alternating rounds in this one process
  (median and IQR); ms per meta-step and tasks/s;
* FLOPs per meta-step: XLA's cost analysis of the same step with its loops unrolled
  (``_bench.model_flops``; the compiled program's own figure counts a while-loop body
  once, so it misses every inner step but one and, under ``lax.map``, every task but
  one; it is recorded too, as ``xla_flops_per_call_compiled``);
* the achieved GFLOP/s and its fraction of the float32 matmul peak measured in this
  process (a jitted 2048x2048 ``jnp.dot``, before and after the runs; the larger
  median is the peak);
* memory: the compiled program's ``memory_analysis()`` (temp + argument + output).

The default grid is a base configuration per model and one axis changed at a time
(5-10 minutes on a 2-core CPU); ``--full-grid`` takes the product of the values.
The first value of each axis is the base; the base task-parallel mode is
``make_train_step``'s default, ``"auto"`` (the table shows what it resolved to).

Usage:
  python benchmarks/suite.py --out benchmarks/results/suite.jsonl --md benchmarks/results/suite.md
  python benchmarks/suite.py --models mlp --meta-batch 25 100 400 --task-parallel vmap 8 --full-grid
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench  # noqa: E402
import _host  # noqa: E402

# Per model: the values of each axis; the first one is the base configuration.
DEFAULT_AXES = {
    "mlp": {
        "meta_batch": [25, 5, 100],
        "inner_steps": [1, 5],
        "first_order": [False, True],
        "task_parallel": ["auto", "map", 5],
        "remat": [False, True],
        "steps_per_call": [10, 1],
    },
    "conv4": {
        "meta_batch": [8, 16],
        "inner_steps": [1, 3],
        "first_order": [False, True],
        "task_parallel": ["auto", "vmap"],
        "remat": [False, True],
        "steps_per_call": [1],
    },
}
TIMING = {"mlp": (5, 10), "conv4": (3, 3)}  # rounds, calls per round


def grid(axes: dict, full: bool) -> list[dict]:
    names = list(axes)
    if full:
        return [dict(zip(names, values)) for values in itertools.product(*axes.values())]
    base = {name: values[0] for name, values in axes.items()}
    configs = [base]
    for name in names:
        for value in axes[name][1:]:
            configs.append({**base, name: value})
    return configs


def _mode(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def run_model(model: str, axes: dict, *, full: bool, channels: int, scale: float) -> list[dict]:
    configs = [
        _bench.StepConfig(model=model, channels=channels, **params) for params in grid(axes, full)
    ]
    compiled = []
    for cfg in configs:
        c = _bench.compile_step(cfg)
        print(f"compiled {cfg.label()} in {c.compile_s:.1f} s", flush=True)
        compiled.append(c)
    rounds, calls = TIMING[model]
    times = _bench.time_interleaved(
        compiled, rounds=max(1, round(rounds * scale)), calls_per_round=calls
    )
    flops_cache: dict = {}
    rows = []
    for c, t in zip(compiled, times):
        key = (c.cfg.meta_batch, c.cfg.inner_steps, c.cfg.first_order)
        if key not in flops_cache:
            flops_cache[key] = _bench.model_flops(c.cfg)
        stats = _bench.summarize(t)
        spc = c.cfg.steps_per_call
        sec_per_step = stats["sec_per_call_median"] / spc
        rows.append(
            {
                **dataclasses.asdict(c.cfg),
                "task_parallel": str(c.cfg.task_parallel),
                "resolved_task_parallel": c.resolved_task_parallel,
                "compile_s": c.compile_s,
                "ms_per_meta_step": 1e3 * sec_per_step,
                "ms_per_meta_step_iqr": 1e3 * stats["sec_per_call_iqr"] / spc,
                "tasks_per_s": c.cfg.meta_batch / sec_per_step,
                "gflop_per_meta_step": flops_cache[key] / 1e9,
                "achieved_gflop_per_s": flops_cache[key] / 1e9 / sec_per_step,
                "xla_flops_per_call_compiled": c.xla_flops,
                **c.memory,
                **stats,
                "times": t,
            }
        )
    return rows


def markdown(rows: list[dict], peak: float, header: str) -> str:
    lines = [
        header,
        "",
        "| model | meta-batch | inner steps | order | task_parallel | remat | steps/call "
        "| ms / meta-step (median, IQR) | tasks/s | compile s | GFLOP / meta-step | GFLOP/s "
        "| % of matmul peak | exec MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        model = "mlp" if r["model"] == "mlp" else f"conv4-{r['channels']}"
        mode = r["task_parallel"]
        if mode == "auto":
            mode = f"auto (= {r['resolved_task_parallel']})"
        lines.append(
            f"| {model} | {r['meta_batch']} | {r['inner_steps']} "
            f"| {'first' if r['first_order'] else 'second'} | {mode} "
            f"| {'on' if r['remat'] else 'off'} | {r['steps_per_call']} "
            f"| {r['ms_per_meta_step']:.3f} (±{r['ms_per_meta_step_iqr']:.3f}) "
            f"| {r['tasks_per_s']:.0f} | {r['compile_s']:.1f} | {r['gflop_per_meta_step']:.3f} "
            f"| {r['achieved_gflop_per_s']:.1f} | {100 * r['achieved_gflop_per_s'] / peak:.1f} "
            f"| {r.get('exec_mb', float('nan')):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "conv4"], choices=["mlp", "conv4"])
    parser.add_argument("--meta-batch", type=int, nargs="+", help="values (first is the base)")
    parser.add_argument("--inner-steps", type=int, nargs="+")
    parser.add_argument("--order", nargs="+", choices=["second", "first"])
    parser.add_argument("--task-parallel", nargs="+", help="vmap, map or chunk sizes")
    parser.add_argument("--remat", nargs="+", choices=["off", "on"])
    parser.add_argument("--steps-per-call", type=int, nargs="+")
    parser.add_argument("--conv4-channels", type=int, default=32)
    parser.add_argument("--full-grid", action="store_true", help="product of all axis values")
    parser.add_argument("--repeats-scale", type=float, default=1.0, help="scale timing rounds")
    _bench.add_output_args(parser)
    args = parser.parse_args(argv)
    allocator_tuned = _bench.setup_host(not args.no_tune_allocator)

    overrides = {
        "meta_batch": args.meta_batch,
        "inner_steps": args.inner_steps,
        "first_order": args.order and [o == "first" for o in args.order],
        "task_parallel": args.task_parallel and [_mode(m) for m in args.task_parallel],
        "remat": args.remat and [r == "on" for r in args.remat],
        "steps_per_call": args.steps_per_call,
    }
    before = _bench.machine()
    peak_before = _bench.matmul_peak_gflops()
    rows = []
    for model in args.models:
        axes = {k: (overrides[k] or v) for k, v in DEFAULT_AXES[model].items()}
        rows += run_model(
            model,
            axes,
            full=args.full_grid,
            channels=args.conv4_channels,
            scale=args.repeats_scale,
        )
    peak_after = _bench.matmul_peak_gflops()
    after = _bench.machine()
    peak = max(peak_before["median"], peak_after["median"])
    extra = {
        "matmul_peak_gflop_per_s": peak,
        "matmul_peak_before": peak_before,
        "matmul_peak_after": peak_after,
        "loadavg_before": before["loadavg"],
        "allocator_tuned": allocator_tuned,
        **after,
    }
    for r in rows:
        r["fraction_of_matmul_peak"] = r["achieved_gflop_per_s"] / peak
    _bench.append_jsonl(args.out, [{**r, **extra} for r in rows])
    header = (
        f"jax {after['jax_version']} on {after['device']} ({after['cpus']} cores of "
        f"{_host.describe()}, "
        f"{after['devices']} device), {after['when']}. float32 matmul peak measured in the "
        f"same process: {peak:.0f} GFLOP/s (2048x2048 jnp.dot; "
        f"{peak_before['median']:.0f} before, {peak_after['median']:.0f} after). Load "
        f"average {before['loadavg'][0]:.2f} before, {after['loadavg'][0]:.2f} after. Host "
        f"allocator {'tuned' if allocator_tuned else 'not tuned'} (metajax.tune_host_allocator)."
    )
    command = "python benchmarks/suite.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    table = markdown(rows, peak, header + f"\n\nCommand: `{command.strip()}`")
    _bench.write_table(table, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
