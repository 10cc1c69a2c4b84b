"""Where a W1/W2 meta-step's time goes, by compiled operation, from JAX's profiler.

Runs the workload's second-order MAML step (``task_parallel="map"``, or
``--task-parallel``), optionally on a
CPU split into one device per core (``--cpu-devices``, :func:`metajax.cpu_devices`,
the step sharded over them), records ``--steps`` steps with ``jax.profiler`` and sums
the trace's complete events by operation name, with the trailing ``.N`` of XLA's
fusion names dropped (``ynn_fusion.77`` -> ``ynn_fusion``). Reports each category's
total time, share of all operation time, count and mean duration, the thread time of
the executing threads, and how much of it no operation covered (dispatch and waits).
``ynn_fusion`` are XLA:CPU's YNNPACK kernels, split by whether their computation in
the compiled program (compiled once more for its HLO) contains a dot (matmuls) or not
(reductions); ``dot`` and ``dot_general`` are XLA's own matmuls.

``--instructions N`` also lists the N costliest single instructions with their output
and operand shapes.

Usage:
  python benchmarks/profile_ops.py --workload W1-so-1step --cpu-devices 2 --instructions 12 \\
      > benchmarks/results/profile_ops_W1_cpu2.log
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "peers"))

import metajax as mj  # noqa: E402

#: Trace events that are not compiled operations.
NOT_OPS = ("ThunkExecutor", "$", "Rendezvous", "Wait", "PjitFunction", "shard_args")


def fusions_with_dot(hlo: str) -> set[str]:
    """Names of the fusions whose computation (in the HLO text) contains a dot."""
    bodies = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M)
    }
    return {
        m.group(1)
        for m in re.finditer(r"%([\w.\-]+) = [^\n]*? fusion\([^\n]*?calls=%?([\w.\-]+)", hlo)
        if re.search(r" (dot|convolution)\(", bodies.get(m.group(2), ""))
    }


def instruction_shapes(hlo: str) -> dict[str, str]:
    """Instruction name -> ``"output <- operands"`` shapes; a fusion's operand shapes
    are its computation's parameters', another instruction's are looked up by name."""
    computations = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M)
    }
    lines = re.findall(r"%([\w.\-]+) = (\S+) [\w\-]+\(([^\n]*)", hlo)
    output = {name: out.split("{")[0] for name, out, _ in lines}
    shapes = {}
    for name, _, rest in lines:
        called = re.search(r"calls=%?([\w.\-]+)", rest)
        if called and called.group(1) in computations:
            operands = re.findall(
                r"= ([a-z]+\d*\[[\d,]*\])\S* parameter\(", computations[called.group(1)]
            )
        else:
            names = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
            operands = [output.get(n, "?") for n in names]
        shapes[name] = f"{output[name]} <- {', '.join(operands)}"
    return shapes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="W1-so-1step")
    parser.add_argument("--cpu-devices", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--task-parallel",
        default="map",
        help="how the step runs tasks: vmap, map, or a chunk size",
    )
    parser.add_argument(
        "--tune-xla",
        action="store_true",
        help="with metajax.tune_xla_cpu, as the CLI and omniglot_vs_peers.py run "
        "(without it, XLA's default CPU flags: the profile logs of 2026-12-06 and before)",
    )
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument(
        "--instructions",
        type=int,
        default=0,
        help="also list this many costliest single instructions, with their HLO shapes",
    )
    args = parser.parse_args(argv)
    mj.cpu_devices(args.cpu_devices)  # before JAX starts its backends
    if args.tune_xla:
        mj.tune_xla_cpu()
    mj.tune_host_allocator()
    import _bench
    import jax
    from torch_peers import get_workload

    mode = int(args.task_parallel) if args.task_parallel.isdigit() else args.task_parallel
    tasks, learner, outer, state = _bench.omniglot_workload(get_workload(args.workload), "auto")
    step = mj.make_train_step(learner, outer, pre_adaptation_metrics=False, task_parallel=mode)
    run, state, hlo = _bench.sharded_task_batch_step(step, state, tasks)
    for _ in range(3):  # compile and warm up
        state, _ = run(state, tasks)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        for _ in range(args.steps):
            state, _ = run(state, tasks)
            jax.block_until_ready(state)
        seconds = (time.perf_counter() - start) / args.steps
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        events = [e for e in json.load(gzip.open(path))["traceEvents"] if e.get("ph") == "X"]
    facts = _bench.machine()
    print(
        f"# python benchmarks/profile_ops.py {' '.join(sys.argv[1:])}   ({facts['when']}, "
        f"commit {facts['git_commit']}, jax {facts['jax_version']}, {facts['devices']} "
        f"device(s), load average {facts['loadavg'][0]:.1f})"
    )
    ops = [e for e in events if not e["name"].startswith(NOT_OPS)]
    total = collections.Counter()
    count = collections.Counter()
    hlo_text = hlo()  # compiles the step once more
    with_dot = fusions_with_dot(hlo_text)
    for e in ops:
        name = re.sub(r"(\.\d+)+$", "", e["name"])
        if name.startswith("ynn_fusion"):  # YNNPACK runs matmuls and reductions
            name += " (dot)" if e["name"] in with_dot else " (no dot)"
        total[name] += e["dur"]
        count[name] += 1
    op_us = sum(total.values())
    per_thread = collections.Counter((e["pid"], e["tid"]) for e in ops)
    # The devices' executing threads (others run a few stray operations).
    threads = [t for t, n in per_thread.items() if n >= 0.1 * len(ops)]
    thread_us = seconds * args.steps * 1e6 * len(threads)
    ms_per_step = 1e-3 / args.steps  # trace durations are in microseconds
    print(
        f"{args.workload}: {seconds:.3f} s per meta-step while profiled; {len(threads)} "
        f"executing threads; operations cover {op_us / 1e6 / args.steps:.3f} s of "
        f"{thread_us / 1e6 / args.steps:.3f} s of thread time per step "
        f"({100 * op_us / thread_us:.0f}%); {len(ops) // args.steps} operations per step."
    )
    print()
    print("| operation | ms per step | share | calls per step | mean us |")
    print("|---|---|---|---|---|")
    for name, us in total.most_common(args.top):
        print(
            f"| {name} | {us * ms_per_step:.1f} | {100 * us / op_us:.1f}% "
            f"| {count[name] // args.steps} | {us / count[name]:.1f} |"
        )
    small = [n for n in total if total[n] / count[n] < 10]
    print(
        f"\nOperations averaging under 10 us: {sum(count[n] for n in small) // args.steps} "
        f"calls and {sum(total[n] for n in small) * ms_per_step:.1f} ms per step."
    )
    if args.instructions:
        by_instruction = collections.Counter()
        calls = collections.Counter()
        for e in ops:
            by_instruction[e["name"]] += e["dur"]
            calls[e["name"]] += 1
        shapes = instruction_shapes(hlo_text)
        print("\n| instruction | output shape, operand shapes | ms per step | calls per step |")
        print("|---|---|---|---|")
        for name, us in by_instruction.most_common(args.instructions):
            print(
                f"| {name} | {shapes.get(name, '?')} | {us * ms_per_step:.1f} "
                f"| {calls[name] // args.steps} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
