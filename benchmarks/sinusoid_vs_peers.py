"""W3 sinusoid MAML meta-step: metajax beside learn2learn / higher / TorchOpt, same run.

W3 (``peers/torch_peers.py``): sinusoid regression, MLP 1-40-40-1 (ReLU), K=10
support and 10 query points, meta-batch 25, 1 or 5 inner SGD steps at lr 0.01,
second order, Adam 1e-3. Every library gets the same fixed meta-batch
(``torch_peers.make_inputs``, seed 0), reused on every step.

metajax runs three ways:

* ``metajax-plain``: ``jax.jit(make_train_step(...))`` called once per meta-step from a
  Python loop (the tasks are an argument);
* ``metajax-fused``: ``mj.repeat_step`` runs ``--steps-per-call`` meta-steps per
  compiled call on the same fixed tasks, so the per-call overhead is paid once;
* ``metajax-fused-unroll``: as fused, with the inner loop unrolled
  (``maml(..., unroll=True)``: the inner steps as straight-line code instead of a
  ``lax.scan``, so XLA fuses across steps and the loop's per-iteration cost goes);
* ``metajax-fused-sampled``: as fused, but every meta-step draws its own 25 tasks on
  the device (how ``metajax train sinusoid`` trains).

Every (library, workload) measurement runs in a fresh subprocess (clean peak RSS);
the whole set is repeated for ``--rounds`` rounds, each round running every library
once, one after the other, so a change in load hits all of them. A library's figure
is the median over rounds of its per-round median; metajax's ratio to a peer is the
median over rounds of the per-round ratio.

Usage:
  python benchmarks/sinusoid_vs_peers.py --rounds 3 \\
      --out benchmarks/results/sinusoid_vs_peers.jsonl --md benchmarks/results/sinusoid_vs_peers.md

``--device cuda`` runs the PyTorch peers on the GPU; metajax uses whatever JAX backend
is present (recorded as ``jax_backend``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))

import _host  # noqa: E402  (this directory is on sys.path when the script runs)

METAJAX_VARIANTS = (
    "metajax-plain",
    "metajax-fused",
    "metajax-fused-unroll",
    "metajax-fused-sampled",
)


def time_metajax(
    variant: str,
    workload_name: str,
    *,
    warmup: int,
    iters: int,
    steps_per_call: int,
    tune_allocator: bool = True,
) -> dict:
    """Times one metajax variant on a W3 workload, in this process."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from torch_peers import get_workload, make_inputs  # workload definitions; no torch

    import metajax as mj
    from metajax.data.sinusoid import SinusoidDistribution
    from metajax.models.mlp import MLP

    allocator_tuned = mj.tune_host_allocator() if tune_allocator else False
    w = get_workload(workload_name)
    if w["family"] != "sinusoid":
        raise ValueError("this script times the sinusoid workloads (W3)")
    data = make_inputs(w, seed=0)

    def batch(x, y):  # a batch of tasks: weights need the [tasks, examples] shape
        return mj.Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(x.shape[:2], jnp.float32))

    tasks = mj.Task(
        batch(data["x_support"], data["y_support"]), batch(data["x_query"], data["y_query"])
    )
    model = MLP(hidden=(w["hidden"], w["hidden"]), outputs=1)
    learner = mj.maml(
        mj.make_loss(model.apply, mj.squared_error),
        inner_lr=w["inner_lr"],
        inner_steps=w["inner_steps"],
        first_order=w["first_order"],
        unroll=variant == "metajax-fused-unroll",
    )
    outer = optax.adam(w["outer_lr"])
    params = model.init(jax.random.key(0), jnp.zeros((1, 1)))
    state = mj.init_train_state(learner, params, outer, jax.random.key(1))

    if variant == "metajax-plain":
        step = mj.make_train_step(learner, outer, pre_adaptation_metrics=False)
        args, spc = (tasks,), 1
    elif variant in ("metajax-fused", "metajax-fused-unroll"):
        step = mj.repeat_step(
            mj.make_train_step(learner, outer, pre_adaptation_metrics=False), steps_per_call
        )
        args, spc = (tasks,), steps_per_call
    elif variant == "metajax-fused-sampled":
        dist = SinusoidDistribution()
        step = mj.repeat_step(
            mj.make_train_step(
                learner,
                outer,
                sample_tasks=lambda key: dist.sample_task(
                    key, shots=w["k_support"], queries=w["k_query"]
                ),
                meta_batch=w["meta_batch"],
                pre_adaptation_metrics=False,
            ),
            steps_per_call,
        )
        args, spc = (), steps_per_call
    else:
        raise ValueError(variant)
    jitted = jax.jit(step, donate_argnums=0)
    t0 = time.perf_counter()
    compiled = jitted.lower(state, *args).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, metrics = compiled(state, *args)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        state, metrics = compiled(state, *args)
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - t0) / spc)
    med = float(np.median(times))
    q25, q75 = np.percentile(times, [25, 75])
    return {
        "peer": variant,
        "workload": workload_name,
        "steps_per_call": spc,
        "allocator_tuned": allocator_tuned,
        "sec_per_step_median": med,
        "sec_per_step_iqr": float(q75 - q25),
        "tasks_per_s": w["meta_batch"] / med,
        "compile_s": compile_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "meta_loss_last": float(jnp.ravel(metrics["meta_loss"])[-1]),
        "times": times,
    }


def run_metajax_isolated(
    variant, workload, *, warmup, iters, steps_per_call, tune_allocator=True
) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        json.dumps(
            dict(
                variant=variant,
                workload_name=workload,
                warmup=warmup,
                iters=iters,
                steps_per_call=steps_per_call,
                tune_allocator=tune_allocator,
            )
        ),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"peer": variant, "workload": workload, "error": proc.stderr[-2000:]}


def summarize(results: list[dict], workloads, runners) -> tuple[list[dict], list[dict]]:
    """Per (workload, runner): medians over rounds; per (workload, metajax variant, peer): ratios."""
    summary, ratios = [], []
    for workload in workloads:
        by_runner = {
            name: [
                r
                for r in results
                if r["workload"] == workload and r["peer"] == name and "error" not in r
            ]
            for name in runners
        }
        for name, rs in by_runner.items():
            if not rs:
                summary.append({"workload": workload, "peer": name, "error": True})
                continue
            summary.append(
                {
                    "workload": workload,
                    "peer": name,
                    "rounds": len(rs),
                    "sec_per_step_median": statistics.median(r["sec_per_step_median"] for r in rs),
                    "sec_per_step_min_max": (
                        min(r["sec_per_step_median"] for r in rs),
                        max(r["sec_per_step_median"] for r in rs),
                    ),
                    "tasks_per_s": statistics.median(r["tasks_per_s"] for r in rs),
                    "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
                    "compile_s": statistics.median(r["compile_s"] for r in rs)
                    if "compile_s" in rs[0]
                    else None,
                    "version": rs[0].get("lib_version") or rs[0].get("jax_version"),
                    "device": rs[0].get("device"),
                    "peak_gpu_mem_mb": statistics.median(r["peak_gpu_mem_mb"] for r in rs)
                    if rs[0].get("peak_gpu_mem_mb") is not None
                    else None,
                }
            )
        for ours in (n for n in runners if n.startswith("metajax")):
            for peer in (n for n in runners if not n.startswith("metajax")):
                per_round = [
                    p["sec_per_step_median"] / o["sec_per_step_median"]
                    for o, p in zip(by_runner[ours], by_runner[peer])
                    if o["round"] == p["round"]
                ]
                if per_round:
                    ratios.append(
                        {
                            "workload": workload,
                            "metajax": ours,
                            "peer": peer,
                            "speedup_median": statistics.median(per_round),
                            "speedup_per_round": per_round,
                        }
                    )
    return summary, ratios


def markdown(summary, ratios, header: str, command: str) -> str:
    peers = list(dict.fromkeys(r["peer"] for r in ratios))  # in the order given
    gpu = any(s.get("peak_gpu_mem_mb") is not None for s in summary)  # peers ran on CUDA
    lines = [
        header,
        "",
        f"Command: `{command}`",
        "",
        "| workload | library | ms / meta-step (median of rounds; min-max) | tasks/s "
        "| peak RSS MB | "
        + ("peak GPU MB | " if gpu else "")
        + "compile s | "
        + " | ".join(f"x {p}" for p in peers)
        + " |",
        "|---|---|---|---|---|" + ("---|" if gpu else "") + "---|" + "---|" * len(peers),
    ]
    for s in summary:
        if s.get("error"):
            lines.append(
                f"| {s['workload']} | {s['peer']} | error |" + " |" * (3 + gpu + len(peers))
            )
            continue
        lo, hi = s["sec_per_step_min_max"]
        speedups = [
            next(
                (
                    f"{r['speedup_median']:.1f}x"
                    for r in ratios
                    if r["workload"] == s["workload"]
                    and r["metajax"] == s["peer"]
                    and r["peer"] == p
                ),
                "",
            )
            for p in peers
        ]
        compile_s = "" if s["compile_s"] is None else f"{s['compile_s']:.1f}"
        gpu_mb = s.get("peak_gpu_mem_mb")
        gpu_cell = ("" if gpu_mb is None else f"{gpu_mb:.0f}") + " | " if gpu else ""
        lines.append(
            f"| {s['workload']} | {s['peer']} | {1e3 * s['sec_per_step_median']:.3f} "
            f"({1e3 * lo:.3f}-{1e3 * hi:.3f}) | {s['tasks_per_s']:.0f} | {s['peak_rss_mb']:.0f} "
            f"| {gpu_cell}{compile_s} | " + " | ".join(speedups) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["W3-so-1step", "W3-so-5step"])
    parser.add_argument("--peers", nargs="*", default=["learn2learn", "higher", "torchopt"])
    parser.add_argument("--metajax", nargs="+", default=list(METAJAX_VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-call", type=int, default=100)
    parser.add_argument("--peer-iters", type=int, default=50)
    parser.add_argument("--plain-iters", type=int, default=500)
    parser.add_argument("--fused-iters", type=int, default=20, help="calls (of steps-per-call)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--peer-threads", type=int, default=None, help="torch threads (default: all cores)"
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="torch device for the peers (metajax uses the JAX backend that is present)",
    )
    parser.add_argument(
        "--no-tune-allocator",
        action="store_true",
        help="metajax workers: leave glibc's malloc as it is (tuned by default, as the CLI does)",
    )
    parser.add_argument("--out", default=None, help="append JSON lines here")
    parser.add_argument("--md", default=None, help="write the markdown table here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(time_metajax(**json.loads(args.worker))))
        return 0

    from torch_peers import run_isolated

    command = "python benchmarks/sinusoid_vs_peers.py " + shlex.join(argv or sys.argv[1:])
    load_before = os.getloadavg()
    runners = list(args.metajax) + list(args.peers)
    results = []
    for round_index in range(args.rounds):
        for workload in args.workloads:
            # Alternate the order between rounds so no library always runs first.
            order = runners if round_index % 2 == 0 else runners[::-1]
            for name in order:
                if name.startswith("metajax"):
                    plain = name == "metajax-plain"
                    r = run_metajax_isolated(
                        name,
                        workload,
                        warmup=args.warmup,
                        iters=args.plain_iters if plain else args.fused_iters,
                        steps_per_call=args.steps_per_call,
                        tune_allocator=not args.no_tune_allocator,
                    )
                else:
                    r = run_isolated(
                        name,
                        workload,
                        warmup=args.warmup,
                        iters=args.peer_iters,
                        threads=args.peer_threads,
                        device=args.device,
                    )
                r["round"] = round_index
                r["loadavg"] = os.getloadavg()
                results.append(r)
                brief = {k: v for k, v in r.items() if k not in ("times", "stderr_tail")}
                print(json.dumps(brief), flush=True)
                # Appended as it ends, so a run cut short keeps what it measured (no
                # jax in this process: on a GPU it would hold the measured ones' memory).
                if args.out:
                    with open(args.out, "a") as f:
                        when = time.strftime("%Y-%m-%d %H:%M:%S")
                        f.write(json.dumps({**r, "kind": "measurement", "when": when}) + "\n")
    summary, ratios = summarize(results, args.workloads, runners)
    load_after = os.getloadavg()
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    import _bench  # (imports jax: only after the isolated measurements)

    _bench.append_jsonl(
        args.out, [{**r, "kind": "summary", "when": when} for r in summary + ratios]
    )
    ok = [r for r in results if "jax_version" in r]
    torch_row = next((r for r in results if "torch_version" in r), {})
    header = (
        f"W3 sinusoid MAML, {args.rounds} rounds, {when}; jax "
        f"{ok[0]['jax_version'] if ok else '?'}, torch {torch_row.get('torch_version', '?')} "
        f"({torch_row.get('threads', '?')} threads), {os.cpu_count()} cores of "
        f"{_host.describe()} shared with "
        f"other work: load average {load_before[0]:.2f} before, {load_after[0]:.2f} after. "
        f"metajax-fused runs {args.steps_per_call} meta-steps per compiled call; metajax "
        f"workers {'without' if args.no_tune_allocator else 'with'} "
        "metajax.tune_host_allocator. "
        "Speed-up columns: metajax's median per-round ratio of step times (peer / metajax)."
    )
    if args.device != "cpu" or (ok and ok[0].get("jax_backend", "cpu") != "cpu"):
        header += (
            f" Devices: metajax on JAX backend {ok[0].get('jax_backend', '?') if ok else '?'} "
            f"({ok[0].get('device', '?') if ok else '?'}); peers on torch "
            f"{torch_row.get('device', args.device)} ({torch_row.get('device_name', '?')})."
        )
    table = markdown(summary, ratios, header, command)
    _bench.write_table(table, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
