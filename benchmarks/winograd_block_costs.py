"""One fused conv4 block (14x14x64 -> 64), im2col against Winograd, by batch size.

Times the gradient of one ``"im2col_fused"`` block and of the same block through
Winograd (:func:`metajax.models.conv4._winograd_block`) with respect to its input and
parameters, jitted, for several numbers of images (2x2 output tiles = images x 49).
This is the block alone; ``benchmarks/conv_formulations.py --convs
winograd_fused@RULE`` measures the rules in the full meta-step, which is what
``WINOGRAD_MIN_TILES`` was set from.

Usage:
  python benchmarks/winograd_block_costs.py > benchmarks/results/winograd_block_costs.log
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


def _median_ms(fn, *args, calls: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[5, 10, 20, 30, 40, 75])
    parser.add_argument("--calls", type=int, default=31)
    args = parser.parse_args(argv)
    mj.tune_host_allocator()
    params = conv4.init(jax.random.key(0), ways=5)
    conv_params, bn_params = params["conv1"], params["bn1"]
    print(f"jax {jax.__version__}, {jax.default_backend()}, load average {os.getloadavg()}")
    print("| images | 2x2 tiles | im2col, ms | Winograd, ms | im2col / Winograd |")
    print("|---|---|---|---|---|")
    for n in args.images:
        x = jax.random.normal(jax.random.key(1), (n, 14, 14, 64))
        ms = []
        for block in (conv4._fused_block, conv4._winograd_block):

            def loss(cp, bp, x, block=block):
                y, _ = block(x, cp, bp, None, None)
                return jnp.sum(y * y)

            grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            ms.append(_median_ms(grad, conv_params, bn_params, x, calls=args.calls))
        print(f"| {n} | {n * 49} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[0] / ms[1]:.2f} |")


if __name__ == "__main__":
    main()
