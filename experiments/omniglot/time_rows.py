"""Seconds per meta-step of each Table 1 configuration, measured on this machine.

Usage: python experiments/omniglot/time_rows.py [--steps 3] > experiments/omniglot/time_rows.log

Builds each row's train step exactly as ``metajax train omniglot`` does (the paper's
defaults for its ways and shots; conv4-64, second-order MAML, the MAML split's
training images on the device) and times ``--steps`` meta-steps after the
compiling one; prints compile time, the median step time, and the wall-clock
time the paper's 60,000 meta-steps would take at that rate. Run it with nothing
else on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax

from metajax import runtime
from metajax.data import omniglot as omniglot_data
from metajax.recipes import omniglot

ROWS = [(5, 1), (5, 5), (20, 1), (20, 5)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    runtime.tune_host_allocator()
    data = omniglot_data.load_omniglot()
    load = os.getloadavg()[0]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, load average {load:.2f}")
    for ways, shots in ROWS:
        cfg = omniglot.OmniglotTrain(ways=ways, shots=shots).resolved()
        images, _ = omniglot.load_images(cfg, "train", data)
        learner = omniglot.build_learner(cfg)
        state, outer = omniglot.initial_state(cfg)
        step = jax.jit(omniglot.make_step(cfg, learner, outer), donate_argnums=0)
        t0 = time.perf_counter()
        state, metrics = step(state, images)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, metrics = step(state, images)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        print(
            f"{ways}-way {shots}-shot: meta-batch {cfg.meta_batch}, {cfg.inner_steps} inner "
            f"step(s), {cfg.queries} query/class: first call {compile_s:.1f} s, then "
            f"{median:.2f} s per meta-step (median of {args.steps}; "
            f"{', '.join(f'{t:.2f}' for t in times)}); 60,000 steps would take "
            f"{60000 * median / 3600:.0f} h",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
