"""metajax computes the same meta-gradient as learn2learn on the benchmark workloads.

The timing comparison in ``omniglot_vs_peers.py`` is only fair if both libraries do
the same work. This script takes learn2learn's second-order MAML meta-loss and
meta-gradient at torch's initial weights on a fixed batch (``peers/torch_peers.py``
``reference_meta_grad``), converts the weights to metajax's layout, and compares.

Usage (needs the ``peers`` extra):
  python benchmarks/check_against_peers.py --meta-batch 4
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import metajax as mj
from metajax.models import MLP
from metajax.recipes.omniglot import classifier_loss

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))


def conv4_from_torch(weights: dict) -> dict:
    params = {}
    for i in range(4):
        params[f"conv{i}"] = {
            "w": jnp.asarray(weights[f"conv{i + 1}.weight"].transpose(2, 3, 1, 0)),
            "b": jnp.asarray(weights[f"conv{i + 1}.bias"]),
        }
        params[f"bn{i}"] = {
            "scale": jnp.asarray(weights[f"bn{i + 1}.weight"]),
            "bias": jnp.asarray(weights[f"bn{i + 1}.bias"]),
        }
    params["head"] = {
        "w": jnp.asarray(weights["head.weight"].T),
        "b": jnp.asarray(weights["head.bias"]),
    }
    return params


def conv4_to_torch_names(grads: dict) -> dict:
    out = {}
    for i in range(4):
        out[f"conv{i + 1}.weight"] = np.asarray(grads[f"conv{i}"]["w"]).transpose(3, 2, 0, 1)
        out[f"conv{i + 1}.bias"] = np.asarray(grads[f"conv{i}"]["b"])
        out[f"bn{i + 1}.weight"] = np.asarray(grads[f"bn{i}"]["scale"])
        out[f"bn{i + 1}.bias"] = np.asarray(grads[f"bn{i}"]["bias"])
    out["head.weight"] = np.asarray(grads["head"]["w"]).T
    out["head.bias"] = np.asarray(grads["head"]["b"])
    return out


def mlp_from_torch(weights: dict) -> dict:
    names = {"fc1": "hidden_0", "fc2": "hidden_1", "fc3": "head"}
    return {
        "params": {
            new: {
                "kernel": jnp.asarray(weights[f"{old}.weight"].T),
                "bias": jnp.asarray(weights[f"{old}.bias"]),
            }
            for old, new in names.items()
        }
    }


def mlp_to_torch_names(grads: dict) -> dict:
    names = {"fc1": "hidden_0", "fc2": "hidden_1", "fc3": "head"}
    out = {}
    for old, new in names.items():
        out[f"{old}.weight"] = np.asarray(grads["params"][new]["kernel"]).T
        out[f"{old}.bias"] = np.asarray(grads["params"][new]["bias"])
    return out


VERBOSE = False


def check(workload: str, meta_batch: int, conv: str = "im2col") -> float:
    from torch_peers import get_workload, reference_meta_grad

    w = get_workload(workload)
    loss_ref, grads_ref, inputs, weights = reference_meta_grad(workload, meta_batch=meta_batch)
    if w["family"] == "omniglot":
        params = conv4_from_torch(weights)
        loss_fn = classifier_loss(conv)
        to_torch = conv4_to_torch_names
        to_x = lambda x: jnp.asarray(x.transpose(0, 1, 3, 4, 2))  # [T, N, C, H, W] -> NHWC
        to_y = lambda y: jnp.asarray(y, jnp.int32)
    else:
        params = mlp_from_torch(weights)
        loss_fn = mj.make_loss(MLP(hidden=(40, 40)).apply, mj.squared_error)
        to_torch = mlp_to_torch_names
        to_x = to_y = jnp.asarray

    def batch(x, y):
        x, y = to_x(x), to_y(y)
        return mj.Batch(x, y, jnp.ones(y.shape[:2], jnp.float32))

    tasks = mj.Task(
        batch(inputs["x_support"], inputs["y_support"]), batch(inputs["x_query"], inputs["y_query"])
    )
    learner = mj.maml(
        loss_fn, inner_lr=w["inner_lr"], inner_steps=w["inner_steps"], first_order=w["first_order"]
    )

    @jax.jit
    def meta(params, tasks):
        losses, grads = jax.vmap(
            jax.value_and_grad(lambda p, t: learner.loss(p, t)[0]), in_axes=(None, 0)
        )(params, tasks)
        return losses.mean(), jax.tree.map(lambda g: g.mean(0), grads)

    loss, grads = meta(params, tasks)
    grads = to_torch(grads)
    # Relative to the largest gradient entry of the whole model: a conv bias feeding
    # batch norm has an exactly-zero true gradient, so a per-tensor relative error
    # would compare float noise with float noise.
    scale = max(float(np.abs(ref).max()) for ref in grads_ref.values())
    worst = 0.0
    for name, ref in grads_ref.items():
        err = float(np.abs(grads[name] - ref).max()) / scale
        if VERBOSE:
            print(f"  {name:14s} max|ref| {float(np.abs(ref).max()):.2e}  error {err:.2e}")
        worst = max(worst, err)
    print(
        f"{workload}: meta-loss metajax {float(loss):.6f} vs learn2learn {loss_ref:.6f}; "
        f"max |grad diff| / max |grad| = {worst:.2e}"
    )
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workloads",
        nargs="+",
        default=["W1-so-1step", "W1-so-5step", "W2-so-1step", "W3-so-5step"],
    )
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument(
        "--convs", nargs="+", default=["im2col", "im2col_fused"], help="conv4 formulations"
    )
    args = parser.parse_args(argv)
    worst = 0.0
    for conv in args.convs:
        print(f"conv4 formulation: {conv}")
        worst = max([worst] + [check(w, args.meta_batch, conv) for w in args.workloads])
    print("OK" if worst < args.tolerance else "MISMATCH", f"(worst {worst:.2e})")
    return 0 if worst < args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
