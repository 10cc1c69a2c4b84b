"""iMAML: the meta-gradient through the proximal inner solution, by implicit differentiation.

The inner problem of a task is proximal:

.. math::

   \\phi^*(\\theta) = \\arg\\min_\\phi\\; L_\\text{support}(\\phi)
       + \\tfrac{\\lambda}{2} \\lVert \\phi - \\theta \\rVert^2,

solved approximately by the shared inner loop (gradient descent from
:math:`\\phi = \\theta`). At a stationary point
:math:`\\nabla L_s(\\phi^*) + \\lambda (\\phi^* - \\theta) = 0`, so
:math:`d\\phi^*/d\\theta = (I + H/\\lambda)^{-1}` with :math:`H = \\nabla^2 L_s(\\phi^*)`,
and the meta-gradient of :math:`L_\\text{query}(\\phi^*)` is

.. math::

   g_\\theta = (I + H/\\lambda)^{-1}\\, \\nabla L_\\text{query}(\\phi^*).

A custom VJP computes it with a few conjugate-gradient iterations
(:func:`conjugate_gradient`) on
Hessian-vector products (``jax.jvp`` of ``jax.grad``, never forming ``H``). The
inner loop itself is never differentiated, so memory does not grow with the number
of inner steps (``tests/test_imaml.py`` checks the compiled temporary memory against
unrolled MAML's).

The curvature in the solve is a choice (``curvature=``). The default,
:func:`hessian_curvature`, is the paper's. When the support loss is nonconvex, ``H``
can have eigenvalues below ``-lambda`` and the system is indefinite; conv4 on
Omniglot does (experiments/omniglot/README.md, "Why iMAML stalls here").
:func:`gauss_newton_curvature` uses the generalised Gauss-Newton matrix
``G = J^T H_out J`` instead (``J`` the Jacobian of the model's outputs, ``H_out``
the output loss's Hessian in the outputs), which is positive semi-definite for a
convex output loss (cross-entropy, squared error), so ``I + G/lambda`` is positive
definite and CG converges. ``G = H`` for a linear model with squared error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metajax import inner as inner_lib
from metajax.algorithms.base import MetaLearner, check_task
from metajax.losses import as_loss_with_aux
from metajax.tasks import Batch, Task

Params = Any
# (phi, support) -> v -> C v: a symmetric curvature of the support loss at phi.
Curvature = Callable[[Params, Batch], Callable[[Params], Params]]


def proximal_loss(loss_fn: Callable, center: Params, lam: float) -> Callable:
    """``(phi, batch) -> loss_fn(phi, batch) + lam/2 ||phi - center||^2`` (aux kept)."""
    loss_fn = as_loss_with_aux(loss_fn)

    def loss(phi, batch):
        value, aux = loss_fn(phi, batch)
        sq = jax.tree.map(lambda p, c: jnp.sum(jnp.square(p - c)), phi, center)
        return value + 0.5 * lam * sum(jax.tree.leaves(sq)), aux

    return loss


def hessian_curvature(loss_fn: Callable) -> Curvature:
    """The support loss's Hessian at ``phi``, as Hessian-vector products (the paper's).

    Forward-over-reverse (``jax.linearize`` of ``jax.grad``), linearised once at
    ``phi`` so each product costs one tangent pass.
    """
    loss_fn = as_loss_with_aux(loss_fn)

    def curvature(phi, support):
        _, hvp = jax.linearize(jax.grad(lambda p: loss_fn(p, support)[0]), phi)
        return hvp

    return curvature


def gauss_newton_curvature(predict_fn: Callable, output_loss_fn: Callable) -> Curvature:
    """The generalised Gauss-Newton matrix ``G = J^T H_out J`` of the support loss.

    For a loss ``L(phi) = l(f(phi))`` with model outputs ``f(phi)``, ``J`` is the
    Jacobian of ``f`` and ``H_out`` the Hessian of ``l`` in the outputs. ``G`` drops
    the second-derivative term of the model, so it is positive semi-definite
    whenever ``l`` is convex in the outputs (softmax cross-entropy, squared error).
    Each product is one Jacobian-vector product, one output-space Hessian-vector
    product and one vector-Jacobian product (the transpose of the first), all
    linearised once at ``phi``.

    Args:
      predict_fn: ``(params, batch) -> outputs`` (e.g. logits); it takes the batch,
        not just its inputs, so models that use the example weights (batch norm over
        real examples only) keep doing so.
      output_loss_fn: ``(outputs, batch) -> scalar`` or ``(scalar, aux)``, with
        ``output_loss_fn(predict_fn(p, b), b)`` the task loss ``loss_fn(p, b)``.

    Returns:
      A curvature for :func:`imaml`'s ``curvature=``.

    Example:
      >>> curvature = gauss_newton_curvature(
      ...     lambda p, b: apply(p, b.inputs),
      ...     lambda logits, b: weighted_mean(softmax_cross_entropy(logits, b.targets), b.weights),
      ... )
      >>> learner = imaml(loss_fn, lam=2.0, curvature=curvature)

    Reference: Schraudolph, "Fast Curvature Matrix-Vector Products for Second-Order
    Gradient Descent", Neural Computation 2002; Martens, "Deep learning via
    Hessian-free optimization", ICML 2010.
    """
    output_loss_fn = as_loss_with_aux(output_loss_fn)

    def curvature(phi, support):
        outputs, jvp = jax.linearize(lambda p: predict_fn(p, support), phi)
        vjp = jax.linear_transpose(jvp, phi)
        _, out_hvp = jax.linearize(jax.grad(lambda o: output_loss_fn(o, support)[0]), outputs)

        def matvec(v):
            (gv,) = vjp(out_hvp(jvp(v)))
            return gv

        return matvec

    return curvature


def _vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def conjugate_gradient(
    matvec: Callable[[Params], Params],
    b: Params,
    *,
    steps: int,
    tol: float = 0.0,
    negative_curvature: str = "skip",
) -> Params:
    """Solves ``A x = b`` for symmetric positive-definite ``A`` on pytrees, from ``x = 0``.

    At most ``steps`` iterations; stops early once ``|r| <= tol |b|``. (Not
    ``jax.scipy.sparse.linalg.cg``: in jax 0.10.2 it raises an ``AssertionError``
    under ``vmap`` when the leaves of ``b`` are batched along different axes, which
    is what vmapping conv4's gradients over tasks produces.)

    ``negative_curvature`` says what to do with a search direction ``p`` of
    ``p^T A p <= 0``, which an indefinite ``A`` produces: ``"skip"`` (the default)
    takes no step along it and goes on; ``"stop"`` ends the solve there, returning
    the iterate so far, or ``b`` itself if it is the first direction (truncated
    Newton-CG, Nocedal & Wright, "Numerical Optimization", Algorithm 7.1, the inner
    loop of Steihaug's method without the trust region).
    """
    if negative_curvature not in ("skip", "stop"):
        raise ValueError(
            f"negative_curvature must be 'skip' or 'stop', got {negative_curvature!r}."
        )
    stop_on_negative = negative_curvature == "stop"
    x = jax.tree.map(jnp.zeros_like, b)
    rs = _vdot(b, b)
    threshold = jnp.square(tol) * rs

    def cond(carry):
        i, _, _, _, rs, stopped = carry
        return (i < steps) & (rs > threshold) & ~stopped

    def body(carry):
        i, x, r, p, rs, _ = carry
        ap = matvec(p)
        curvature = _vdot(p, ap)
        positive = curvature > 0
        alpha = jnp.where(positive, rs / jnp.where(positive, curvature, 1), 0)
        x_new = jax.tree.map(lambda a, b: a + alpha * b, x, p)
        r_new = jax.tree.map(lambda a, b: a - alpha * b, r, ap)
        rs_new = _vdot(r_new, r_new)
        beta = jnp.where(rs > 0, rs_new / jnp.where(rs > 0, rs, 1), 0)
        p_new = jax.tree.map(lambda a, b: a + beta * b, r_new, p)
        if not stop_on_negative:
            return i + 1, x_new, r_new, p_new, rs_new, jnp.array(False)
        stop = ~positive
        # On the first direction there is no iterate yet: fall back to b (x_1 = b).
        x_stop = jax.tree.map(lambda a, b0: jnp.where(i == 0, b0, a), x, b)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(stop, o, n), new, old)
        return i + 1, keep(x_new, x_stop), keep(r_new, r), keep(p_new, p), rs_new, stop

    init = (0, x, b, b, rs, jnp.array(False))
    _, x, _, _, _, _ = jax.lax.while_loop(cond, body, init)
    return x


def imaml(
    loss_fn: Callable,
    inner_lr: float = 0.1,
    inner_steps: int = 16,
    *,
    lam: float = 2.0,
    cg_steps: int = 5,
    cg_tol: float = 1e-10,
    inner_optimizer: optax.GradientTransformation | None = None,
    cg_damping: float = 0.0,
    lam_damping: float = 0.0,
    curvature: Curvature | None = None,
    cg_negative_curvature: str = "skip",
) -> MetaLearner:
    """Implicit MAML (iMAML-GD).

    Args:
      loss_fn: ``(params, batch) -> scalar`` or ``(scalar, aux)``.
      inner_lr: SGD step size on the proximal objective (ignored if
        ``inner_optimizer`` is given).
      inner_steps: gradient steps on the proximal objective. The implicit gradient
        is exact only at its minimiser, so use enough steps to (nearly) solve it.
      lam: proximal regularisation strength ``lambda`` (> 0).
      cg_steps: conjugate-gradient iterations for ``(I + H/lambda) v = g``; ``0``
        skips the solve and returns ``g`` (first-order iMAML).
      cg_tol: relative residual at which CG stops early.
      inner_optimizer: any optax transformation instead of SGD (e.g. a
        Hessian-free or Adam inner solver); it is never differentiated through.
      cg_damping, lam_damping: damp the linear system the meta-gradient solves to
        ``((1 + cg_damping) I + H / (lam + lam_damping)) v = g``. ``0, 0`` (the
        default) is the paper's system; the authors' released code uses ``1, 10``.
        With a nonconvex support loss ``H`` can have negative eigenvalues, and for
        small ``lam`` the undamped system can be indefinite.
      curvature: the matrix ``H`` of the solve, ``(phi, support) -> matvec``:
        :func:`hessian_curvature` of ``loss_fn`` (the default, the paper's) or
        :func:`gauss_newton_curvature` (positive semi-definite, for nonconvex
        support losses whose Hessian makes the system indefinite).
      cg_negative_curvature: :func:`conjugate_gradient`'s ``negative_curvature``:
        ``"skip"`` (the default) or ``"stop"``, which ends the solve at the first
        direction of non-positive curvature of an indefinite system (returning
        ``g``, first order, if that is the first direction).

    Returns:
      A :class:`MetaLearner` whose meta-parameters are the model parameters.
      ``loss`` has the implicit meta-gradient; ``adapt`` solves the same proximal
      problem (at evaluation too) and, if differentiated directly, unrolls it.
      ``aux["support_loss"]`` is the support loss at ``theta``.

    Example:
      >>> learner = imaml(loss_fn, inner_lr=0.1, inner_steps=16, lam=2.0, cg_steps=5)
      >>> grads = jax.grad(lambda p: learner.loss(p, task)[0])(params)

    Reference: Rajeswaran, Finn, Kakade, Levine, "Meta-Learning with Implicit
    Gradients", NeurIPS 2019 (Algorithms 1 and 2; the proximal problem is solved
    at meta-test time as well). The authors' released code differs from the paper
    (it adapts without the proximal term and damps the CG system); this follows the
    paper.
    """
    loss_fn = as_loss_with_aux(loss_fn)
    if not isinstance(inner_steps, int) or inner_steps < 0:
        raise ValueError(f"inner_steps must be a non-negative int, got {inner_steps!r}.")
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}.")
    if not isinstance(cg_steps, int) or cg_steps < 0:
        raise ValueError(f"cg_steps must be a non-negative int, got {cg_steps!r}.")
    if cg_damping < 0 or lam_damping < 0:
        raise ValueError(
            f"cg_damping and lam_damping must be >= 0, got {cg_damping!r}, {lam_damping!r}."
        )
    if cg_negative_curvature not in ("skip", "stop"):
        raise ValueError(
            f"cg_negative_curvature must be 'skip' or 'stop', got {cg_negative_curvature!r}."
        )
    tx = inner_optimizer if inner_optimizer is not None else inner_lib.sgd(inner_lr)
    if curvature is None:
        curvature = hessian_curvature(loss_fn)

    def adapt_fn(theta, support: Batch, *, steps=None, observe=None):
        inner = inner_lib.make_inner_loop(proximal_loss(loss_fn, theta, lam), tx)
        return inner_lib.adapt(
            inner,
            theta,
            support,
            steps=inner_steps if steps is None else steps,
            observe=observe,
        )

    @jax.custom_vjp
    def solve(theta, support):
        phi, result = adapt_fn(theta, support)
        return phi, result.support_losses

    def solve_fwd(theta, support):
        out = solve(theta, support)
        return out, (out[0], support)

    def solve_bwd(residuals, cotangents):
        phi, support = residuals
        g, _ = cotangents  # the support losses are reported, not differentiated
        if cg_steps == 0:
            return g, None

        hvp = curvature(phi, support)

        def matvec(v):
            scale, curvature = 1.0 + cg_damping, 1.0 / (lam + lam_damping)
            return jax.tree.map(lambda a, b: scale * a + curvature * b, v, hvp(v))

        x = conjugate_gradient(
            matvec, g, steps=cg_steps, tol=cg_tol, negative_curvature=cg_negative_curvature
        )
        return x, None

    solve.defvjp(solve_fwd, solve_bwd)

    def loss(theta, task: Task, step=None):
        del step  # no schedules
        check_task(task)
        phi, support_losses = solve(theta, task.support)
        query_loss, query_aux = loss_fn(phi, task.query)
        aux = {"query_loss": query_loss, **{f"query_{k}": v for k, v in query_aux.items()}}
        if support_losses.shape[0]:
            # Before the first step phi = theta, so the proximal term is 0.
            aux["support_loss"] = support_losses[0]
        return query_loss, aux

    return MetaLearner(
        init=lambda p: p,
        loss=loss,
        adapt=adapt_fn,
        params=lambda m: m,
        loss_fn=loss_fn,
        inner_steps=inner_steps,
    )
