"""Where one W2 task's query pass goes in conv4: the first block against the other three.

Forward and backward (gradient with respect to the parameters) of conv4 on one W2 task's
75 query images (28x28, binary-ish), jitted, timed in alternating rounds:

* ``full``: the whole network;
* ``block1``: conv -> batch norm -> pool -> ReLU of the first block alone;
* ``blocks2-4``: the other three blocks and the head, on a 14x14x64 input;

each with ``--convs`` formulations (``im2col``, ``im2col_fused``).

Usage:
  python benchmarks/conv4_block_costs.py > benchmarks/results/conv4_block_costs.log
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import metajax as mj
from metajax.models import conv4


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--convs", nargs="+", default=["im2col", "im2col_fused"])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    mj.tune_host_allocator()
    params = conv4.init(jax.random.key(0), ways=5)
    images = (jax.random.uniform(jax.random.key(1), (75, 28, 28, 1)) > 0.8).astype(jnp.float32)
    hidden = jax.random.normal(jax.random.key(2), (75, 14, 14, 64))
    later = {f"conv{i - 1}": params[f"conv{i}"] for i in range(1, 4)}
    later |= {f"bn{i - 1}": params[f"bn{i}"] for i in range(1, 4)} | {"head": params["head"]}
    first = {k: params[k] for k in ("conv0", "bn0")}

    def block1(p, x, conv):  # a one-block network's features
        return conv4.apply(p | {"head": None}, x, conv=conv, return_features=True)

    parts = {}
    for conv in args.convs:
        parts[("full", conv)] = (params, images, lambda p, x, c=conv: conv4.apply(p, x, conv=c))
        parts[("block1", conv)] = (first, images, lambda p, x, c=conv: block1(p, x, c))
        parts[("blocks2-4", conv)] = (later, hidden, lambda p, x, c=conv: conv4.apply(p, x, conv=c))
    compiled = {
        key: (jax.jit(jax.grad(lambda p, x, f=f: jnp.sum(jnp.sin(f(p, x))))), p, x)
        for key, (p, x, f) in parts.items()
    }
    for fn, p, x in compiled.values():
        jax.block_until_ready(fn(p, x))
    times = {key: [] for key in compiled}
    for _ in range(args.rounds):
        for key, (fn, p, x) in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(p, x))
            times[key].append(time.perf_counter() - t0)
    print(f"jax {jax.__version__}, {jax.default_backend()}, load average {os.getloadavg()}")
    print("| part | conv | forward + backward, ms (median) |\n|---|---|---|")
    for (part, conv), ts in times.items():
        print(f"| {part} | {conv} | {1e3 * float(np.median(ts)):.1f} |")


if __name__ == "__main__":
    main()
