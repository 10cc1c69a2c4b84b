"""The sinusoid MLP step on the CPU as one device and split into one device per core.

The README's quickstart step (MLP 1-40-40-1, second-order MAML, one inner step, tasks
drawn on the device, 100 meta-steps per compiled call), with a meta-batch of 24 so that it
splits evenly: jitted on one device, or sharded over ``mj.cpu_devices(2)``
(:func:`metajax.parallel.shard_train_step`). Each setting runs in its own process, in
alternating rounds. Reported: milliseconds per meta-step, the median of 20 calls.

Usage: python benchmarks/split_cpu_mlp.py [--rounds 2] [--meta-batch 24]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import _host


def worker(devices: int, meta_batch: int) -> None:
    import metajax as mj

    if devices:
        mj.cpu_devices(devices)  # before the first array
    mj.tune_xla_cpu()
    mj.tune_host_allocator()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from metajax import parallel
    from metajax.data.sinusoid import SinusoidDistribution
    from metajax.models import MLP

    model = MLP(hidden=(40, 40), outputs=1)
    params = model.init(jax.random.key(0), jnp.zeros((1, 1)))
    maml = mj.maml(mj.make_loss(model.apply, mj.squared_error), inner_lr=0.01, inner_steps=1)
    outer = optax.adam(1e-3)
    step = mj.make_train_step(
        maml, outer, sample_tasks=SinusoidDistribution().sample_task, meta_batch=meta_batch
    )
    step = mj.repeat_step(step, 100)
    state = mj.init_train_state(maml, params, outer, jax.random.key(2))
    if devices:
        mesh = parallel.make_mesh()
        fn, state = parallel.shard_train_step(step, mesh), parallel.replicate(state, mesh)
    else:
        fn = mj.jit_train_step(step)
    state, _ = fn(state)  # compiles
    jax.block_until_ready(state)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        state, _ = fn(state)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    ms = float(np.median(times)) * 1e3 / 100
    print(f"| {jax.device_count()} | {meta_batch} | {ms:.3f} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--meta-batch", type=int, default=24)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.meta_batch)
        return 0
    print(
        f"# {' '.join(sys.argv)}  ({time.strftime('%Y-%m-%d %H:%M:%S')}, {_host.describe()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
    )
    print("| devices | meta-batch | ms / meta-step |\n|---|---|---|", flush=True)
    for _ in range(args.rounds):
        for devices in (0, 2):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(devices)]
            cmd += ["--meta-batch", str(args.meta_batch)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            rows = [x for x in out.stdout.splitlines() if x.startswith("|")]
            print(
                rows[-1] if rows else f"| {devices} | error: {out.stderr[-300:]!r} | |", flush=True
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
