"""Does iMAML's meta-gradient point where its own objective goes down? (issue 5)

The damped iMAML run (README, "iMAML with the released code's damping") starts at
64% training query accuracy and falls to 54-59% as it meta-trains. This script
compares, on one meta-batch of 32 Omniglot 5-way 1-shot training episodes (conv4-64,
transductive batch norm), the meta-gradients of the objective iMAML trains:
the query loss after 16 SGD steps (lr 0.1) on the proximal support loss
(lambda = 2 as in the paper, or ``--lam``), from theta:

* ``unrolled``: ``jax.grad`` straight through those 16 steps (the exact gradient of
  the objective, second order, as MAML would compute it);
* ``implicit``: iMAML's custom VJP with the paper's system ``(I + H/lambda) v = g``
  (5 CG steps, the recipe's);
* ``implicit-damped``: the released code's ``(2 I + H/(lambda + 10)) v = g``;
* ``implicit-cg50``: the paper's system solved with 50 CG steps (is 5 enough?);
* ``implicit-gn``, ``implicit-gn-cg20``: ``(I + G/lambda) v = g`` with the
  Gauss-Newton matrix ``G`` of the logits and the cross-entropy (positive
  semi-definite, so the system is positive definite), 5 and 20 CG steps;
* ``implicit-stop``, ``implicit-stop-cg50``: the paper's system with CG that stops
  at the first direction of non-positive curvature (``cg_negative_curvature="stop"``,
  truncated Newton-CG; ``g`` if the first direction already has it), 5 and 50 steps;
* ``first-order``: ``g`` itself (no solve);

and reports norms, cosines to ``unrolled``, how far the 16 steps are from the
proximal minimiser the implicit formula assumes (relative stationarity residual
``|grad L_s(phi) + lambda (phi - theta)| / |grad L_s(theta)|``), and Lanczos
estimates of the support Hessian's extreme eigenvalues at the adapted parameters
(the smallest Ritz value bounds the smallest eigenvalue from above: below -lambda,
the paper's system is indefinite, and neither CG nor the formula's premise holds).
It does so at the initialisation and after ``--maml-steps`` of ordinary MAML
meta-training (1 step, lr 0.4), where the loss landscape is no longer that of a
random network. Findings: experiments/omniglot/README.md, "Why iMAML stalls".

    python experiments/omniglot/imaml_gradient_check.py > experiments/omniglot/imaml_gradient_check.log
    python experiments/omniglot/imaml_gradient_check.py --lam 8 > experiments/omniglot/imaml_gradient_check_lam8.log
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from metajax import algorithms
from metajax.models import conv4
from metajax.recipes import omniglot as recipe
from metajax.train import init_train_state, jit_train_step, make_train_step


def _cos(a, b) -> float:
    return float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maml-steps", type=int, default=300, help="0: the initialisation only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lam", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--lanczos-steps", type=int, default=60)
    parser.add_argument("--curvature-tasks", type=int, default=8)
    args = parser.parse_args()

    cfg = recipe.OmniglotTrain(algorithm="imaml", workdir="/nonexistent").resolved()
    loss_fn = recipe.classifier_loss(cfg.conv)
    images, _ = recipe.load_images(cfg, "train")
    sampler = recipe._episode_sampler(cfg.ways, cfg.shots, cfg.queries)
    lam = cfg.imaml_lam if args.lam is None else args.lam
    lr, steps = cfg.inner_lr, cfg.inner_steps
    gn = algorithms.gauss_newton_curvature(
        recipe.classifier_logits(cfg.conv), recipe.classifier_output_loss
    )

    variants = {
        "implicit": algorithms.imaml(loss_fn, lr, steps, lam=lam, cg_steps=5),
        "implicit-damped": algorithms.imaml(
            loss_fn, lr, steps, lam=lam, cg_steps=5, cg_damping=1.0, lam_damping=10.0
        ),
        "implicit-cg50": algorithms.imaml(loss_fn, lr, steps, lam=lam, cg_steps=50),
        "implicit-gn": algorithms.imaml(loss_fn, lr, steps, lam=lam, cg_steps=5, curvature=gn),
        "implicit-gn-cg20": algorithms.imaml(
            loss_fn, lr, steps, lam=lam, cg_steps=20, curvature=gn
        ),
        "implicit-stop": algorithms.imaml(
            loss_fn, lr, steps, lam=lam, cg_steps=5, cg_negative_curvature="stop"
        ),
        "implicit-stop-cg50": algorithms.imaml(
            loss_fn, lr, steps, lam=lam, cg_steps=50, cg_negative_curvature="stop"
        ),
        "first-order": algorithms.imaml(loss_fn, lr, steps, lam=lam, cg_steps=0),
    }
    plain = variants["implicit"]

    def unrolled_loss(theta, task):
        # iMAML's own 16 proximal steps (its adapt has no custom VJP), differentiated
        # straight through.
        phi, _ = plain.adapt(theta, task.support)
        loss, aux = loss_fn(phi, task.query)
        return loss, aux

    def meta_grad(per_task_loss):
        def batch_loss(theta, tasks):
            losses, aux = jax.vmap(lambda t: per_task_loss(theta, t))(tasks)
            return jnp.mean(losses), jax.tree.map(jnp.mean, aux)

        return jax.jit(jax.grad(batch_loss, has_aux=True))

    grads = {"unrolled": meta_grad(unrolled_loss)}
    grads.update({k: meta_grad(lambda th, t, v=v: v.loss(th, t)) for k, v in variants.items()})

    @jax.jit
    def residual(theta, tasks):
        def one(task):
            phi, _ = plain.adapt(theta, task.support)
            g_phi = jax.grad(lambda p: loss_fn(p, task.support)[0])(phi)
            g_theta = jax.grad(lambda p: loss_fn(p, task.support)[0])(theta)
            r = jax.tree.map(lambda g, p, t: g + lam * (p - t), g_phi, phi, theta)
            return jnp.linalg.norm(ravel_pytree(r)[0]) / jnp.linalg.norm(ravel_pytree(g_theta)[0])

        return jnp.median(jax.vmap(one)(tasks))

    @jax.jit
    def curvature(theta, tasks):
        # Lanczos (full reorthogonalisation) estimates of the support Hessian's extreme
        # eigenvalues at the adapted parameters. By interlacing, the smallest Ritz value
        # is an upper bound on the true smallest eigenvalue: when it is below -lambda,
        # (I + H / lambda) is certainly indefinite.
        k = args.lanczos_steps

        def one(task):
            phi, _ = plain.adapt(theta, task.support)
            flat_phi, unravel = ravel_pytree(phi)
            grad = jax.grad(lambda p: loss_fn(unravel(p), task.support)[0])

            def hvp(v):
                return jax.jvp(grad, (flat_phi,), (v,))[1]

            def body(i, carry):
                q, alpha, beta = carry
                w = hvp(q[i])
                alpha = alpha.at[i].set(jnp.vdot(q[i], w))
                w = w - q.T @ (q @ w)  # against every earlier vector (rows > i are 0)
                w = w - q.T @ (q @ w)
                b = jnp.linalg.norm(w)
                beta = beta.at[i].set(b)
                return q.at[i + 1].set(w / b), alpha, beta

            q0 = jax.random.normal(jax.random.key(0), flat_phi.shape)
            q = jnp.zeros((k + 1, flat_phi.size)).at[0].set(q0 / jnp.linalg.norm(q0))
            _, alpha, beta = jax.lax.fori_loop(0, k, body, (q, jnp.zeros(k), jnp.zeros(k)))
            t = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
            ritz = jnp.linalg.eigvalsh(t)
            return ritz[-1], ritz[0]

        tops, mins = jax.vmap(one)(tasks)
        return tops, mins

    # Ordinary MAML (the recipe's 1 step, lr 0.4) to move theta off the initialisation.
    maml = algorithms.maml(loss_fn, inner_lr=0.4, inner_steps=1)
    outer = optax.adam(cfg.outer_lr)
    params = conv4.init(jax.random.key(args.seed), ways=cfg.ways, channels=cfg.channels)
    state = init_train_state(maml, params, outer, jax.random.key(args.seed + 1))
    maml_step = jit_train_step(
        make_train_step(maml, outer, sample_tasks=sampler, meta_batch=cfg.meta_batch)
    )

    probe_key = jax.random.key(12345)
    rows = []
    points = ["initialisation"] + [f"after {args.maml_steps} MAML steps"] * (args.maml_steps > 0)
    for point in points:
        if point != "initialisation":
            start = time.perf_counter()
            for _ in range(args.maml_steps):
                state, metrics = maml_step(state, images)
            print(
                f"# {args.maml_steps} MAML steps in {time.perf_counter() - start:.0f} s; "
                f"last training query accuracy {float(metrics['query_accuracy']):.3f}",
                flush=True,
            )
        theta = state.meta_params
        tasks = jax.vmap(lambda k: sampler(k, images))(jax.random.split(probe_key, cfg.meta_batch))
        flat = {}
        for name, fn in grads.items():
            g, aux = fn(theta, tasks)
            flat[name] = ravel_pytree(g)[0]
            if name == "unrolled":
                acc = float(aux["accuracy"])
        res = float(residual(theta, tasks))
        few = jax.tree.map(lambda x: x[: args.curvature_tasks], tasks)
        tops, mins = curvature(theta, few)
        print(
            json.dumps(
                {
                    "point": point,
                    "hessian_max_eigenvalue_lower_bound": [round(float(x), 3) for x in tops],
                    "hessian_min_eigenvalue_upper_bound": [round(float(x), 3) for x in mins],
                    "tasks_with_min_eigenvalue_below_minus_lambda": int(jnp.sum(mins < -lam)),
                    "lambda": lam,
                }
            ),
            flush=True,
        )
        for name, g in flat.items():
            row = {
                "point": point,
                "gradient": name,
                "norm": float(jnp.linalg.norm(g)),
                "cos_to_unrolled": _cos(g, flat["unrolled"]),
                "cos_to_first_order": _cos(g, flat["first-order"]),
                "query_accuracy_after_16_steps": acc,
                "median_stationarity_residual": res,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    print("\n| theta | gradient | norm | cos to unrolled | cos to first order |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['point']} | {r['gradient']} | {r['norm']:.4f} | "
            f"{r['cos_to_unrolled']:.3f} | {r['cos_to_first_order']:.3f} |"
        )
    for point in dict.fromkeys(r["point"] for r in rows):
        r = next(r for r in rows if r["point"] == point)
        print(
            f"\n{point}, lambda {lam:g}: query accuracy after the 16 proximal steps "
            f"{r['query_accuracy_after_16_steps']:.3f}; median relative stationarity "
            f"residual {r['median_stationarity_residual']:.3f}"
        )


if __name__ == "__main__":
    main()
