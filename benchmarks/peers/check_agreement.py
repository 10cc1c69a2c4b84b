#!/usr/bin/env python3
"""Check that the PyTorch peers compute the same MAML meta-loss and meta-gradient.

For a tiny fixed meta-batch and fixed initial weights, every peer in
``torch_peers`` computes the meta-loss and the meta-gradient (grads of the mean
post-adaptation query loss w.r.t. the initial weights; no Adam step).  Prints the
max abs difference of each peer against learn2learn, per case, in float32 and
float64, and exits non-zero if a float32 difference exceeds --tol (default 1e-5,
relative to max(1, |reference|)).

    python benchmarks/peers/check_agreement.py            # conv4 + MLP cases
    python benchmarks/peers/check_agreement.py --quick    # only the required SO 1-step cases
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_peers as tp  # noqa: E402


def tiny(name, **over):
    w = tp.get_workload(name)
    w.update(over)
    w["name"] = name + "-tiny"
    return w


def cases(quick):
    # conv4: 3 tasks, 5-way 1-shot, 2 queries/class (full 28x28 images, so the
    # 4 pools still end at 1x1); MLP: 3 tasks of the sinusoid workload.
    out = [tiny("W1-so-1step", meta_batch=3, queries=2), tiny("W3-so-1step", meta_batch=3)]
    if not quick:
        out += [
            tiny("W1-fo-1step", meta_batch=3, queries=2),
            tiny("W1-so-5step", meta_batch=2, queries=2),
            tiny("W1-fo-5step", meta_batch=2, queries=2),
            tiny("W3-so-5step", meta_batch=3),
        ]
    return out


def loss_and_grads(peer, w, weights, inputs, dtype):
    r = tp.make_runner(peer, w, state_dict=weights, inputs=inputs, dtype=dtype)
    loss = r.grads_step()
    return loss, {n: p.grad.detach().double().numpy() for n, p in r.model.named_parameters()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--peers", nargs="+", default=["learn2learn", "higher", "torchopt", "plain-torch"]
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count())
    ref_peer = a.peers[0]
    failed = False
    print(
        f"reference peer: {ref_peer}; torch {torch.__version__}; "
        + ", ".join(f"{p} {tp.lib_version(p)}" for p in a.peers)
    )
    for w in cases(a.quick):
        inputs = tp.make_inputs(w, a.seed)
        weights = {k: v.detach().numpy() for k, v in tp.build_model(w, a.seed).state_dict().items()}
        order = "first-order" if w["first_order"] else "second-order"
        print(
            f"\n== {w['name']} ({w['model']}, {order}, {w['inner_steps']} inner step(s), "
            f"{w['meta_batch']} tasks)"
        )
        for dtype in (torch.float32, torch.float64):
            res = {p: loss_and_grads(p, w, weights, inputs, dtype) for p in a.peers}
            ref_loss, ref_g = res[ref_peer]
            gscale = max(1.0, max(np.abs(g).max() for g in ref_g.values()))
            print(
                f"  [{str(dtype).split('.')[-1]}] {ref_peer}: loss {ref_loss:.8f}, "
                f"max|grad| {max(np.abs(g).max() for g in ref_g.values()):.4g}"
            )
            for p in a.peers[1:]:
                loss, g = res[p]
                dl = abs(loss - ref_loss)
                dg_name, dg = max(
                    ((n, float(np.abs(g[n] - ref_g[n]).max())) for n in ref_g), key=lambda x: x[1]
                )
                ok = dl <= a.tol * max(1.0, abs(ref_loss)) and dg <= a.tol * gscale
                if dtype == torch.float32 and not ok:
                    failed = True
                print(
                    f"    {p:12s} |dloss| {dl:.3e}   max|dgrad| {dg:.3e} (at {dg_name})"
                    f"   {'OK' if ok else 'MISMATCH'}"
                )
    print("\nAGREEMENT " + ("FAILED" if failed else "OK"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
