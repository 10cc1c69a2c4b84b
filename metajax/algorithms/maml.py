"""The MAML family over the shared inner loop.

Each factory returns a :class:`MetaLearner`: ``init(params) -> meta_params``,
``loss(meta_params, task) -> (meta_loss, aux)`` for *one* task (``vmap`` it over a
batch of tasks), and ``adapt(meta_params, support, ...)`` which runs the inner
loop and returns the adapted model parameters. ``jax.grad`` of ``loss`` with
respect to ``meta_params`` is the meta-gradient.

=================  =============================================================
``maml``           second-order MAML (Finn et al. 2017)
``fomaml``         first-order MAML (inner gradients under ``stop_gradient``)
``anil``           Almost No Inner Loop: only the head adapts (Raghu et al. 2020)
``meta_sgd``       per-parameter inner learning rates are meta-parameters
                   (Li et al. 2017)
``reptile``        outer update from ``theta - phi`` (Nichol et al. 2018)
``pretrain``       the non-meta baseline: train on all tasks' data jointly,
                   fine-tune with the same inner loop at test time
=================  =============================================================

Example:
  >>> maml = maml(loss_fn, inner_lr=0.01, inner_steps=1)
  >>> loss, aux = maml.loss(params, task)
  >>> grads = jax.grad(lambda p: maml.loss(p, task)[0])(params)
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
from metajax.tasks import Task

Params = Any
MetaParams = Any


def _gradient_based(
    loss_fn: Callable,
    *,
    inner_optimizer: Callable[[MetaParams], optax.GradientTransformation],
    inner_steps: int,
    first_order: bool,
    adapt: inner_lib.AdaptSpec,
    remat: bool,
    backprop_steps: int | None,
    init: Callable[[Params], MetaParams] = lambda p: p,
    params: Callable[[MetaParams], Params] = lambda m: m,
    objective: str = "query",
) -> MetaLearner:
    loss_fn = as_loss_with_aux(loss_fn)
    if not isinstance(inner_steps, int) or inner_steps < 0:
        raise ValueError(f"inner_steps must be a non-negative int, got {inner_steps!r}.")

    def adapt_fn(meta_params, support, *, steps=None, observe=None, first_order=first_order):
        inner = inner_lib.make_inner_loop(
            loss_fn, inner_optimizer(meta_params), first_order=first_order, adapt=adapt
        )
        return inner_lib.adapt(
            inner,
            params(meta_params),
            support,
            steps=inner_steps if steps is None else steps,
            remat=remat,
            backprop_steps=backprop_steps,
            observe=observe,
        )

    def loss(meta_params, task: Task):
        check_task(task)
        if objective == "reptile":
            # Reptile's update direction is theta - phi, phi = adapted parameters.
            # The surrogate 0.5 * ||theta - stop_gradient(phi)||^2 has exactly that
            # gradient, so the same train step and outer optimizer apply.
            adapted, result = adapt_fn(meta_params, task.support, first_order=True)
            theta = params(meta_params)
            phi = jax.lax.stop_gradient(adapted)
            sq = jax.tree.map(lambda t, p: jnp.sum(jnp.square(t - p)), theta, phi)
            meta_loss = 0.5 * sum(jax.tree.leaves(sq))
            query_loss, query_aux = loss_fn(phi, task.query)
        else:
            adapted, result = adapt_fn(meta_params, task.support)
            query_loss, query_aux = loss_fn(adapted, task.query)
            meta_loss = query_loss
        aux = {"query_loss": query_loss, **{f"query_{k}": v for k, v in query_aux.items()}}
        if result.support_losses.shape[0]:
            aux["support_loss"] = result.support_losses[0]
        return meta_loss, aux

    return MetaLearner(init, loss, adapt_fn, params, loss_fn, inner_steps)


def maml(
    loss_fn: Callable,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    *,
    inner_optimizer: optax.GradientTransformation | None = None,
    adapt: inner_lib.AdaptSpec = None,
    remat: bool = False,
    backprop_steps: int | None = None,
) -> MetaLearner:
    """Model-Agnostic Meta-Learning.

    The meta-loss of a task is ``L_query(theta')`` with ``theta'`` the result of
    ``inner_steps`` inner updates on the support set; its gradient differentiates
    through those updates. For one SGD step,
    ``grad = (I - inner_lr * H_support(theta)) @ grad L_query(theta')``.

    Args:
      loss_fn: ``(params, batch) -> scalar`` or ``(scalar, aux)``.
      inner_lr: SGD step size (ignored if ``inner_optimizer`` is given).
      inner_steps: number of inner updates.
      first_order: drop the second-order term (FOMAML).
      inner_optimizer: any optax transformation to use instead of SGD; use
        :func:`metajax.inner.adam` (``optax.adam`` with a small ``eps_root``) for finite
        second-order gradients at zero gradients.
      adapt: which parameters adapt (``None``: all; see :func:`metajax.inner.adapt_mask`).
      remat: rematerialise each inner step (memory for compute).
      backprop_steps: truncate the meta-gradient to the last k inner steps.

    Returns:
      A :class:`MetaLearner`.

    Reference: Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast
    Adaptation of Deep Networks", ICML 2017.
    """
    tx = inner_optimizer if inner_optimizer is not None else inner_lib.sgd(inner_lr)
    return _gradient_based(
        loss_fn,
        inner_optimizer=lambda _: tx,
        inner_steps=inner_steps,
        first_order=first_order,
        adapt=adapt,
        remat=remat,
        backprop_steps=backprop_steps,
    )


def fomaml(
    loss_fn: Callable, inner_lr: float = 0.01, inner_steps: int = 1, **kwargs
) -> MetaLearner:
    """First-order MAML: :func:`maml` with ``first_order=True``.

    The meta-gradient is ``grad L_query(theta')``, evaluated at the adapted
    parameters. Reference: Finn et al. 2017, sec. 5.2; Nichol et al. 2018.
    """
    return maml(loss_fn, inner_lr, inner_steps, first_order=True, **kwargs)


def anil(
    loss_fn: Callable,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    *,
    head: inner_lib.AdaptSpec = "head",
    **kwargs,
) -> MetaLearner:
    """Almost No Inner Loop: MAML where only the head adapts.

    Args:
      head: the adapting parameters: a key name found in the parameter paths
        (default ``"head"``), a mask pytree, or a callable returning one.
      **kwargs: as :func:`maml`.

    Reference: Raghu, Raghu, Bengio, Vinyals, "Rapid Learning or Feature Reuse?
    Towards Understanding the Effectiveness of MAML", ICLR 2020.
    """
    return maml(loss_fn, inner_lr, inner_steps, first_order, adapt=head, **kwargs)


def meta_sgd(
    loss_fn: Callable,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    *,
    adapt: inner_lib.AdaptSpec = None,
    remat: bool = False,
    backprop_steps: int | None = None,
) -> MetaLearner:
    """Meta-SGD: per-parameter inner learning rates, learned by the outer loop.

    ``meta_params = {"params": theta, "inner_lr": alpha}`` with ``alpha`` shaped
    like ``theta`` and initialised to ``inner_lr``; the inner update is
    ``theta - alpha * grad`` (elementwise).

    Reference: Li, Zhou, Chen, Li, "Meta-SGD: Learning to Learn Quickly for
    Few-Shot Learning", 2017.
    """

    def init(params):
        return {
            "params": params,
            "inner_lr": jax.tree.map(lambda p: jnp.full_like(p, inner_lr), params),
        }

    return _gradient_based(
        loss_fn,
        inner_optimizer=lambda m: inner_lib.per_parameter_sgd(m["inner_lr"]),
        inner_steps=inner_steps,
        first_order=first_order,
        adapt=adapt,
        remat=remat,
        backprop_steps=backprop_steps,
        init=init,
        params=lambda m: m["params"],
    )


def reptile(
    loss_fn: Callable,
    inner_lr: float = 0.01,
    inner_steps: int = 5,
    *,
    inner_optimizer: optax.GradientTransformation | None = None,
    adapt: inner_lib.AdaptSpec = None,
    remat: bool = False,
) -> MetaLearner:
    """Reptile: move the initialisation towards the adapted parameters.

    The per-task "gradient" is ``theta - phi`` where ``phi`` is the result of
    ``inner_steps`` updates on the support set; nothing is differentiated through
    the inner loop. With outer ``optax.sgd(eps)`` this is exactly
    ``theta <- theta + eps * (phi - theta)`` averaged over tasks.

    Reference: Nichol, Achiam, Schulman, "On First-Order Meta-Learning
    Algorithms", 2018.
    """
    tx = inner_optimizer if inner_optimizer is not None else inner_lib.sgd(inner_lr)
    return _gradient_based(
        loss_fn,
        inner_optimizer=lambda _: tx,
        inner_steps=inner_steps,
        first_order=True,
        adapt=adapt,
        remat=remat,
        backprop_steps=None,
        objective="reptile",
    )


def pretrain(
    loss_fn: Callable,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    *,
    inner_optimizer: optax.GradientTransformation | None = None,
    adapt: inner_lib.AdaptSpec = None,
) -> MetaLearner:
    """The non-meta baseline: fit one model to every task's data, fine-tune at test time.

    The training loss of a task is the task loss on its support and query
    examples together at the *un-adapted* parameters (joint training on the task
    distribution); ``adapt`` fine-tunes with the same inner loop as :func:`maml`,
    so evaluation is identical. This is the "pretrained on all tasks" baseline of
    Finn et al. 2017 (sec. 5.1).
    """
    learner = maml(
        loss_fn,
        inner_lr,
        inner_steps,
        first_order=True,
        inner_optimizer=inner_optimizer,
        adapt=adapt,
    )
    base_loss = as_loss_with_aux(loss_fn)

    def loss(params, task: Task):
        check_task(task)
        joint = jax.tree.map(lambda s, q: jnp.concatenate([s, q]), task.support, task.query)
        joint_loss, _ = base_loss(params, joint)
        query_loss, query_aux = base_loss(params, task.query)
        aux = {"query_loss": query_loss, **{f"query_{k}": v for k, v in query_aux.items()}}
        return joint_loss, aux

    return learner._replace(loss=loss)


ALGORITHMS: dict[str, Callable[..., MetaLearner]] = {
    "maml": maml,
    "fomaml": fomaml,
    "anil": anil,
    "meta-sgd": meta_sgd,
    "reptile": reptile,
    "pretrain": pretrain,
}
