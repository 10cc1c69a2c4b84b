"""conv4's convolution formulations side by side: the full W1/W2 step and the matmuls.

Two measurements, in one process:

* ``step``: the second-order MAML meta-step on a W1/W2 workload (``peers/torch_peers.py``;
  fixed random Omniglot-shaped tasks) for each ``--conv`` formulation, all compiled
  first and then timed in alternating rounds, so a change in load hits them all.
* ``matmul``: the three matmuls of an im2col layer 2 on one W2 task (75 images of
  14x14x64): forward ``patches @ W``, weight gradient ``patches^T @ dY`` and input
  gradient ``dY @ W^T``, in GFLOP/s, best of ``--repeats``. XLA's CPU flags apply only
  when set before the process starts, so compare flags by running the script once per
  setting (``XLA_FLAGS=... python benchmarks/conv_formulations.py --only matmul``).

``--convs winograd_fused@RULE`` times ``"winograd_fused"`` with another rule for which
blocks use Winograd (``WINOGRAD_RULES``: ``even``; ``even-1200``, the library's on a CPU
that is one device; ``all``).

``--cpu-devices N`` splits the CPU into N devices (one per core)
(:func:`metajax.cpu_devices`) and shards each step over them
(:func:`metajax.parallel.shard_train_step`); its compile time is then that of the
first call (compile and one step).

Usage:
  python benchmarks/conv_formulations.py --workloads W1-so-1step W2-so-1step \\
      --out benchmarks/results/conv_formulations.jsonl --md benchmarks/results/conv_formulations.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "peers"))

import _bench  # noqa: E402
import jax  # noqa: E402
from torch_peers import get_workload  # noqa: E402  (workload definitions; no torch)

import metajax as mj  # noqa: E402

# Which blocks "winograd_fused" convolves by Winograd, for ``--convs winograd_fused@RULE``
# (conv4._winograd_pays is read when a step is traced; the library's rule is "even-1200",
# or "even" on a CPU split into one device per core).
WINOGRAD_RULES = {
    "even": lambda shape: shape[1] % 2 == 0 and shape[2] % 2 == 0 and shape[3] >= 8,
    "even-1200": lambda shape: (
        shape[1] % 2 == 0
        and shape[2] % 2 == 0
        and shape[3] >= 8
        and shape[0] * shape[1] * shape[2] // 4 >= 1200
    ),  # only calls with at least 1200 2x2 output tiles
    "all": lambda shape: shape[3] >= 8,  # odd sizes too (7x7 and 3x3 in conv4)
}


def time_steps(workload: str, convs, *, task_parallel: str, rounds: int) -> list[dict]:
    from metajax.models import conv4

    w = get_workload(workload)
    compiled = []
    default_rule = conv4._winograd_pays
    for name in convs:
        conv, _, rule = name.partition("@")
        conv4._winograd_pays = WINOGRAD_RULES[rule] if rule else default_rule
        tasks, learner, outer, state = _bench.omniglot_workload(w, conv)
        step = mj.make_train_step(
            learner, outer, pre_adaptation_metrics=False, task_parallel=task_parallel
        )
        t0 = time.perf_counter()
        if jax.device_count() > 1:  # traced (with the rule above) at the first call
            sharded, state, _ = _bench.sharded_task_batch_step(step, state, tasks, donate=False)
            jax.block_until_ready(sharded(state, tasks))
            fn = sharded
        else:
            fn = jax.jit(step).lower(state, tasks).compile()
        conv4._winograd_pays = default_rule
        compiled.append(
            _Step(lambda s, fn=fn, tasks=tasks: fn(s, tasks), state, time.perf_counter() - t0)
        )
    times = _bench.time_interleaved(compiled, rounds=rounds, calls_per_round=1, warmup=1)
    return [
        {
            "measure": "step",
            "workload": workload,
            "conv": conv,
            "task_parallel": task_parallel,
            "compile_s": c.compile_s,
            **_bench.summarize(t),
        }
        for conv, c, t in zip(convs, compiled, times)
    ]


class _Step:
    """What :func:`_bench.time_interleaved` needs: ``fn(state) -> (state, metrics)``."""

    def __init__(self, fn, state, compile_s):
        self.fn, self.state, self.compile_s = fn, state, compile_s


def time_matmuls(repeats: int) -> list[dict]:
    key = jax.random.key(0)
    rows, k, n = 75 * 14 * 14, 9 * 64, 64
    patches = jax.random.normal(key, (rows, k))
    weights = jax.random.normal(key, (k, n))
    grad_out = jax.random.normal(key, (rows, n))
    products = {
        "forward patches @ W": (lambda p, w, g: p @ w),
        "weight grad patches^T @ dY": (lambda p, w, g: p.T @ g),
        "input grad dY @ W^T": (lambda p, w, g: g @ w.T),
    }
    out = []
    for name, fn in products.items():
        fn = jax.jit(fn)
        jax.block_until_ready(fn(patches, weights, grad_out))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(patches, weights, grad_out))
            best = min(best, time.perf_counter() - t0)
        out.append(
            {
                "measure": "matmul",
                "product": name,
                "shape": [rows, k, n],
                "gflop_per_s": 2 * rows * k * n / best / 1e9,
                "best_ms": 1e3 * best,
            }
        )
    return out


def table(records: list[dict], facts: dict) -> str:
    lines = [
        "```bash",
        "python " + " ".join([os.path.relpath(__file__, os.path.dirname(HERE)), *sys.argv[1:]]),
        "```",
        "",
        f"jax {facts['jax_version']}, {facts['backend']}, load average "
        f"{', '.join(f'{x:.1f}' for x in facts['loadavg'])}, XLA_FLAGS="
        f"`{os.environ.get('XLA_FLAGS', '')}`, commit {facts['git_commit']}, {facts['when']}.",
        "",
    ]
    steps = [r for r in records if r["measure"] == "step"]
    if steps:
        lines += [
            "| workload | conv | task_parallel | s / meta-step (median, IQR) | compile s |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['workload']} | {r['conv']} | {r['task_parallel']} | "
            f"{r['sec_per_call_median']:.3f} (±{r['sec_per_call_iqr']:.3f}) | {r['compile_s']:.1f} |"
            for r in steps
        ]
        lines.append("")
    mms = [r for r in records if r["measure"] == "matmul"]
    if mms:
        lines += ["| im2col layer-2 product (W2 task) | GFLOP/s | ms |", "|---|---|---|"]
        lines += [f"| {r['product']} | {r['gflop_per_s']:.1f} | {r['best_ms']:.2f} |" for r in mms]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["W1-so-1step", "W2-so-1step"])
    parser.add_argument("--convs", nargs="+", default=["im2col", "im2col_fused", "im2col_vjp"])
    parser.add_argument("--task-parallel", default="map")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--only", choices=["step", "matmul"], default=None)
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=0,
        help="split the CPU into N devices (one per core) and shard each step over them",
    )
    _bench.add_output_args(parser)
    args = parser.parse_args(argv)
    mj.cpu_devices(args.cpu_devices)  # before anything starts JAX's backends
    _bench.setup_host(not args.no_tune_allocator)
    facts = _bench.machine()
    records = []
    if args.only != "step":
        records += time_matmuls(args.repeats)
    if args.only != "matmul":
        mode = int(args.task_parallel) if args.task_parallel.isdigit() else args.task_parallel
        for workload in args.workloads:
            records += time_steps(workload, args.convs, task_parallel=mode, rounds=args.rounds)
    records = [{**r, **facts, "xla_flags": os.environ.get("XLA_FLAGS", "")} for r in records]
    _bench.append_jsonl(args.out, records)
    _bench.write_table(table(records, facts), args.md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
