"""Where the time of the Omniglot MAML meta-step goes: a differential profile.

The full second-order step is built up from its parts, each compiled on its own and
timed in the same process (rounds interleaved, so machine load hits all parts alike):

* ``fwd_shared``   query forward + loss of every task with the *shared* meta-parameters
  (what a first inner step sees: XLA can run all tasks as one batch);
* ``fwd_per_task`` the same with *per-task* parameters (what the query pass after
  adaptation sees: under ``vmap`` every matmul becomes a batched matmul);
* ``grad_per_task`` forward + backward of the query loss at per-task parameters;
* ``inner_grad``   the support-set gradient (the inner step);
* ``fo_step`` / ``so_step`` the whole first- / second-order meta-step (Adam included).

For each part it prints the compiled program's FLOPs and bytes accessed (XLA's cost
analysis), the achieved GFLOP/s, the arithmetic intensity (FLOP per byte), and the
fraction of a float32 matmul peak measured in the same process.

Usage:
  python benchmarks/profile_omniglot_step.py --workload W2 --iters 3 \\
      --out benchmarks/results/profile_omniglot_step.jsonl
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import _bench  # noqa: E402  (this directory is on sys.path when a script runs)
import jax
import jax.numpy as jnp
import numpy as np
import optax

import metajax as mj
from metajax.models import conv4
from metajax.recipes.omniglot import classifier_loss

WORKLOADS = {"W1": 1, "W2": 15}  # queries per class; 5-way 1-shot, meta-batch 32


def build_parts(queries: int, *, conv: str, tasks_n: int = 32, ways: int = 5, shots: int = 1):
    tasks = _bench.random_omniglot_tasks(
        np.random.default_rng(0), tasks=tasks_n, ways=ways, shots=shots, queries=queries
    )
    loss_fn = classifier_loss(conv)
    params = conv4.init(jax.random.key(0), ways=ways)
    per_task = jax.tree.map(lambda p: jnp.broadcast_to(p, (tasks_n, *p.shape)) * 1.0, params)
    outer = optax.adam(1e-3)

    def loss_only(p, b):
        return loss_fn(p, b)[0]

    parts = {
        "fwd_shared": (
            jax.jit(jax.vmap(loss_only, in_axes=(None, 0))),
            (params, tasks.query),
        ),
        "fwd_per_task": (jax.jit(jax.vmap(loss_only)), (per_task, tasks.query)),
        "grad_per_task": (jax.jit(jax.vmap(jax.grad(loss_only))), (per_task, tasks.query)),
        "inner_grad": (
            jax.jit(jax.vmap(jax.grad(loss_only), in_axes=(None, 0))),
            (params, tasks.support),
        ),
    }
    for name, first_order in (("fo_step", True), ("so_step", False)):
        learner = mj.maml(loss_fn, inner_lr=0.4, inner_steps=1, first_order=first_order)
        state = mj.init_train_state(learner, params, outer, jax.random.key(1))
        step = jax.jit(mj.make_train_step(learner, outer, pre_adaptation_metrics=False))
        parts[name] = (step, (state, tasks))
    return parts


def profile(workload: str, *, iters: int, conv: str) -> list[dict]:
    queries = WORKLOADS[workload]
    peak = _bench.matmul_peak_gflops(repeats=5)["best"]
    parts = build_parts(queries, conv=conv)
    compiled, records = {}, {}
    for name, (fn, args) in parts.items():
        t0 = time.perf_counter()
        compiled[name] = fn.lower(*args).compile()
        cost = compiled[name].cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        records[name] = {
            "workload": workload,
            "part": name,
            "compile_s": time.perf_counter() - t0,
            "gflop": float(cost.get("flops", float("nan"))) / 1e9,
            "gbytes_accessed": float(cost.get("bytes accessed", float("nan"))) / 1e9,
            "times": [],
        }
        jax.block_until_ready(compiled[name](*args))  # warm-up
    for _ in range(iters):  # interleaved rounds
        for name, (_, args) in parts.items():
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[name](*args))
            records[name]["times"].append(time.perf_counter() - t0)
    out = []
    load = os.getloadavg()[0]
    for r in records.values():
        sec = float(np.median(r["times"]))
        r.update(
            sec_median=sec,
            gflop_per_s=r["gflop"] / sec,
            fraction_of_matmul_peak=r["gflop"] / sec / peak,
            flop_per_byte=r["gflop"] / r["gbytes_accessed"],
            matmul_peak_gflop_per_s=peak,
            load_avg_1min=load,
            conv=conv,
            jax_version=jax.__version__,
            machine=f"{platform.machine()} x{os.cpu_count()}",
        )
        out.append(r)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="W2")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument(
        "--conv", default="im2col", choices=["im2col", "im2col_fused", "winograd_fused", "xla"]
    )
    parser.add_argument("--out", default=None, help="append JSON lines here")
    args = parser.parse_args(argv)
    records = profile(args.workload, iters=args.iters, conv=args.conv)
    so = next(r["sec_median"] for r in records if r["part"] == "so_step")
    print(
        f"{args.workload}, conv={args.conv}; float32 matmul peak here: "
        f"{records[0]['matmul_peak_gflop_per_s']:.0f} GFLOP/s; 1-min load average "
        f"{records[0]['load_avg_1min']:.1f}\n"
    )
    print(
        "| part | s (median) | share of so_step | GFLOP | GB accessed | FLOP/byte | GFLOP/s | of peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['part']} | {r['sec_median']:.3f} | {r['sec_median'] / so:.2f} | "
            f"{r['gflop']:.1f} | {r['gbytes_accessed']:.1f} | {r['flop_per_byte']:.1f} | "
            f"{r['gflop_per_s']:.1f} | {100 * r['fraction_of_matmul_peak']:.0f}% |"
        )
    _bench.append_jsonl(args.out, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
