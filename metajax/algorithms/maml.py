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

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from metajax import inner as inner_lib
from metajax.algorithms.base import MetaLearner, check_task
from metajax.losses import as_loss_with_aux
from metajax.tasks import Task

Params = Any
MetaParams = Any


# Outer step that stands for "after every schedule": what ``loss(..., step=None)`` uses.
FINAL_STEP = jnp.iinfo(jnp.int32).max


def _resolve_step(step) -> jax.Array:
    return jnp.asarray(FINAL_STEP if step is None else step, jnp.int32)


def _gradient_based(
    loss_fn: Callable,
    *,
    inner_optimizer: Callable[[MetaParams], optax.GradientTransformation],
    inner_steps: int,
    first_order: bool,
    adapt: inner_lib.AdaptSpec,
    remat: bool,
    backprop_steps: int | None,
    unroll: int | bool = 1,
    init: Callable[[Params], MetaParams] = lambda p: p,
    params: Callable[[MetaParams], Params] = lambda m: m,
    objective: str = "query",
    multi_step_loss: Any = None,
    first_order_steps: int = 0,
    per_step: inner_lib.AdaptSpec | bool = False,
) -> MetaLearner:
    loss_fn = as_loss_with_aux(loss_fn)
    if not isinstance(inner_steps, int) or inner_steps < 0:
        raise ValueError(f"inner_steps must be a non-negative int, got {inner_steps!r}.")
    if not isinstance(first_order_steps, int) or first_order_steps < 0:
        raise ValueError(
            f"first_order_steps must be a non-negative int, got {first_order_steps!r}."
        )

    def adapt_fn(meta_params, support, *, steps=None, observe=None, first_order=first_order):
        inner = inner_lib.make_inner_loop(
            loss_fn,
            inner_optimizer(meta_params),
            first_order=first_order,
            adapt=adapt,
            per_step=per_step,
        )
        return inner_lib.adapt(
            inner,
            params(meta_params),
            support,
            steps=inner_steps if steps is None else steps,
            remat=remat,
            backprop_steps=backprop_steps,
            observe=observe,
            unroll=unroll,
        )

    def step_weights(step) -> jax.Array:
        weights = multi_step_loss(_resolve_step(step)) if callable(multi_step_loss) else None
        weights = jnp.asarray(multi_step_loss if weights is None else weights)
        if weights.shape != (inner_steps,):
            raise ValueError(
                f"multi_step_loss weights must have shape [inner_steps] = ({inner_steps},); "
                f"got {weights.shape}."
            )
        return weights

    def query_objective(meta_params, task: Task, step, first_order: bool):
        if multi_step_loss is None:
            adapted, result = adapt_fn(meta_params, task.support, first_order=first_order)
            query_loss, query_aux = loss_fn(adapted, task.query)
            return query_loss, (query_loss, query_aux, result)
        # MAML++ multi-step loss: the query loss after every inner step, weighted.
        _, result = adapt_fn(
            meta_params,
            task.support,
            first_order=first_order,
            observe=lambda p: loss_fn(p, task.query),
        )
        losses, auxes = result.observations  # [steps + 1]: before and after each step
        weights = step_weights(step).astype(losses.dtype)
        meta_loss = jnp.sum(weights * losses[1:])
        return meta_loss, (losses[-1], jax.tree.map(lambda x: x[-1], auxes), result)

    def loss(meta_params, task: Task, step=None):
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
        elif first_order or not first_order_steps or step is None:
            meta_loss, (query_loss, query_aux, result) = query_objective(
                meta_params, task, step, first_order
            )
        else:
            # Derivative-order annealing: one compiled program holds both branches and
            # runs one per outer step (the step is not batched over tasks, so under
            # vmap this stays a conditional rather than becoming a select).
            meta_loss, (query_loss, query_aux, result) = jax.lax.cond(
                jnp.asarray(step) < first_order_steps,
                lambda m, t, s: query_objective(m, t, s, True),
                lambda m, t, s: query_objective(m, t, s, False),
                meta_params,
                task,
                jnp.asarray(step, jnp.int32),
            )
        aux = {"query_loss": query_loss, **{f"query_{k}": v for k, v in query_aux.items()}}
        if result.support_losses.shape[0]:
            aux["support_loss"] = result.support_losses[0]
        return meta_loss, aux

    def start_view(meta_params):
        # What the model sees before any inner step: with per-step parameters, their
        # row 0 (the carried tree has the [steps + 1] axis that adapt_fn needs).
        full = params(meta_params)
        if per_step is False:
            return full
        return inner_lib.select_step(full, inner_lib.adapt_mask(full, per_step), 0)

    return MetaLearner(init, loss, adapt_fn, start_view, loss_fn, inner_steps)


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
    unroll: int | bool = 1,
    multi_step_loss: ArrayLike | Callable[[jax.Array], jax.Array] | None = None,
    learn_inner_lr: bool = False,
    learn_hyperparams: Sequence[str] = (),
    first_order_steps: int = 0,
    per_step_params: inner_lib.AdaptSpec | bool = False,
) -> MetaLearner:
    """Model-Agnostic Meta-Learning, with the MAML++ options.

    The meta-loss of a task is ``L_query(theta')`` with ``theta'`` the result of
    ``inner_steps`` inner updates on the support set; its gradient differentiates
    through those updates. For one SGD step,
    ``grad = (I - inner_lr * H_support(theta)) @ grad L_query(theta')``.

    The MAML++ improvements (Antoniou et al. 2019) are options of this one code
    path, and compose with each other and with every option above them:

    * ``multi_step_loss``: the meta-loss is ``sum_k w_k L_query(theta_k)`` over the
      parameters after each inner step ``k = 1..K`` (multi-step loss). ``w`` is a
      fixed ``[inner_steps]`` array or a function of the outer step (see
      :func:`multi_step_loss_weights` for MAML++'s annealing).
    * ``learn_inner_lr``: one inner learning rate per parameter leaf (layer) and per
      inner step, meta-learned (:func:`metajax.inner.per_step_sgd`).
    * ``first_order_steps``: derivative-order annealing: first order for the first
      this-many outer steps, second order afterwards. Implemented with ``lax.cond``
      on the outer step inside one compiled step (both branches are compiled; each
      outer step runs one), so a run switches without recompiling or rebuilding its
      train step.
    * ``per_step_params``: per-step parameters, e.g. MAML++'s per-step batch-norm
      weights and biases (BNWB; for conv4, ``per_step_params=conv4.batch_norm_mask``).
      Each selected leaf gets a leading ``[inner_steps + 1]`` axis in the
      meta-parameters (initialised by copying it), and the model sees row ``k`` while
      the parameters have taken ``k`` inner steps (:mod:`metajax.inner`). The model's
      apply function is unchanged.
    * Cosine annealing of the outer learning rate is a property of the outer
      optimizer: :func:`cosine_outer_lr`.

    MAML++'s per-step batch-norm running statistics (BNRS) are model state, not
    meta-parameters: a model that holds them (``conv4.init(..., running_stats=True)``)
    with ``per_step_params=conv4.batch_norm_mask`` gets one row per inner step, and
    ``make_train_step(..., running_stats=metajax.running_stats.track(...))`` keeps
    them (:mod:`metajax.running_stats`).

    Options that depend on the outer step read it from ``loss(meta_params, task,
    step)``, which :func:`metajax.make_train_step` passes; ``step=None`` (the
    default, e.g. in evaluation) means "after every schedule": the final multi-step
    weights and second order.

    Args:
      loss_fn: ``(params, batch) -> scalar`` or ``(scalar, aux)``.
      inner_lr: SGD step size (ignored if ``inner_optimizer`` is given); the initial
        value of the learned rates with ``learn_inner_lr``.
      inner_steps: number of inner updates.
      first_order: drop the second-order term (FOMAML).
      inner_optimizer: any optax transformation to use instead of SGD; use
        :func:`metajax.inner.adam` (``optax.adam`` with a small ``eps_root``) for finite
        second-order gradients at zero gradients.
      adapt: which parameters adapt (``None``: all; see :func:`metajax.inner.adapt_mask`).
      remat: rematerialise each inner step (memory for compute).
      backprop_steps: truncate the meta-gradient to the last k inner steps (the
        earlier ones count as first order; see :func:`metajax.inner.adapt`).
      unroll: inner steps per ``lax.scan`` iteration (``True``: all; see
        :func:`metajax.inner.adapt`); the same function, faster for small models on
        a CPU.
      multi_step_loss: per-step query-loss weights ``[inner_steps]``, or a function
        ``outer_step -> weights``; ``None``: only the final query loss.
      learn_inner_lr: meta-learn per-layer, per-step inner learning rates.
      learn_hyperparams: names of ``inner_optimizer``'s hyperparameters to
        meta-learn; ``inner_optimizer`` must come from ``optax.inject_hyperparams``
        (learned inner optimizers; see :func:`metajax.inner.with_hyperparams`).
      first_order_steps: outer steps run first order before switching to second order.
      per_step_params: which parameters are per-step (an ``adapt``-style
        specification: a key name, a mask pytree or a callable returning one;
        ``False``: none). Evaluating with more inner steps than ``inner_steps`` reuses
        the last row.

    Returns:
      A :class:`MetaLearner`. Its meta-parameters are the model parameters, or, when
      something besides them is learned, ``{"params": theta, "inner_lr": ...,
      "inner_hyperparams": {name: value}}`` (only the keys in use).

    Example:
      >>> learner = maml(loss_fn, 0.1, 5, learn_inner_lr=True,
      ...                multi_step_loss=multi_step_loss_weights(5, num_epochs=20))
      >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.5)
      >>> learned_opt = maml(loss_fn, inner_steps=5, inner_optimizer=tx,
      ...                    learn_hyperparams=("learning_rate", "momentum"))

    References: Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast
    Adaptation of Deep Networks", ICML 2017. Antoniou, Edwards, Storkey, "How to
    train your MAML", ICLR 2019.
    """
    learn_hyperparams = tuple(learn_hyperparams)
    if learn_inner_lr and inner_optimizer is not None:
        raise ValueError(
            "learn_inner_lr replaces the inner optimizer; do not pass inner_optimizer."
        )
    if learn_hyperparams and inner_optimizer is None:
        raise ValueError(
            "learn_hyperparams needs an inner_optimizer built with optax.inject_hyperparams, "
            "e.g. optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)."
        )
    if multi_step_loss is not None and not callable(multi_step_loss):
        if jnp.shape(multi_step_loss) != (inner_steps,):
            raise ValueError(
                f"multi_step_loss must have shape [inner_steps] = ({inner_steps},); "
                f"got {jnp.shape(multi_step_loss)}."
            )
    tx = inner_optimizer if inner_optimizer is not None else inner_lib.sgd(inner_lr)
    steps_for_lr = max(inner_steps, 1)

    def expand_per_step(p):
        if per_step_params is False:
            return p
        mask = inner_lib.adapt_mask(p, per_step_params)
        return jax.tree.map(
            lambda m, x: jnp.repeat(jnp.asarray(x)[None], inner_steps + 1, axis=0) if m else x,
            mask,
            p,
        )

    if not (learn_inner_lr or learn_hyperparams):
        init, params, make_optimizer = expand_per_step, (lambda m: m), (lambda _: tx)
    else:

        def init(p):
            p = expand_per_step(p)
            meta = {"params": p}
            if learn_inner_lr:
                meta["inner_lr"] = jax.tree.map(
                    lambda x: jnp.full((steps_for_lr,), inner_lr, x.dtype), p
                )
            if learn_hyperparams:
                current = getattr(tx.init(p), "hyperparams", None)
                if not isinstance(current, dict):
                    raise TypeError(
                        "learn_hyperparams needs an inner_optimizer built with "
                        "optax.inject_hyperparams."
                    )
                unknown = sorted(set(learn_hyperparams) - set(current))
                if unknown:
                    raise ValueError(
                        f"learn_hyperparams {unknown} are not numeric hyperparameters of "
                        f"inner_optimizer; it has {sorted(current)}."
                    )
                meta["inner_hyperparams"] = {k: current[k] for k in learn_hyperparams}
            return meta

        def params(m):
            return m["params"]

        def make_optimizer(m):
            if learn_inner_lr:
                return inner_lib.per_step_sgd(m["inner_lr"])
            return inner_lib.with_hyperparams(tx, m["inner_hyperparams"])

    return _gradient_based(
        loss_fn,
        inner_optimizer=make_optimizer,
        inner_steps=inner_steps,
        first_order=first_order,
        adapt=adapt,
        remat=remat,
        backprop_steps=backprop_steps,
        unroll=unroll,
        init=init,
        params=params,
        multi_step_loss=multi_step_loss,
        first_order_steps=first_order_steps,
        per_step=per_step_params,
    )


def multi_step_loss_weights(
    inner_steps: int, num_epochs: int, steps_per_epoch: int = 500
) -> Callable[[jax.Array], jax.Array]:
    """MAML++'s annealed multi-step-loss weights, as a function of the outer step.

    With ``K = inner_steps`` and ``e = outer_step // steps_per_epoch``: every step's
    query loss starts with weight ``1/K``; each epoch the non-final weights drop by
    ``1/(K * num_epochs)`` (to at least ``0.03/K``) and the final one grows by
    ``(K-1)/(K * num_epochs)`` (to at most ``1 - 0.03 (K-1)/K``), so the weights
    always sum to 1. From epoch ``num_epochs`` on, only the final query loss counts
    (weights ``[0, ..., 0, 1]``), as in the reference implementation.

    Args:
      inner_steps: ``K``.
      num_epochs: epochs of annealing (MAML++'s ``multi_step_loss_num_epochs``).
      steps_per_epoch: outer steps per epoch (MAML++: 500).

    Returns:
      ``weights(outer_step) -> [K]`` (jit-compatible; the step may be traced).

    Reference: Antoniou, Edwards, Storkey, "How to train your MAML", ICLR 2019, sec. 4
    ("multi-step loss optimization").
    """
    if inner_steps < 1 or num_epochs < 1 or steps_per_epoch < 1:
        raise ValueError("inner_steps, num_epochs and steps_per_epoch must be >= 1.")
    k = inner_steps
    decay = 1.0 / k / num_epochs
    floor = 0.03 / k

    def weights(step: ArrayLike) -> jax.Array:
        epoch = (jnp.asarray(step, jnp.int32) // steps_per_epoch).astype(jnp.float32)
        non_final = jnp.maximum(1.0 / k - epoch * decay, floor)
        final = jnp.minimum(1.0 / k + epoch * (k - 1) * decay, 1.0 - (k - 1) * floor)
        annealing = jnp.concatenate([jnp.full((k - 1,), non_final), final[None]])
        return jnp.where(epoch < num_epochs, annealing, jax.nn.one_hot(k - 1, k))

    return weights


def cosine_outer_lr(
    learning_rate: float, total_steps: int, min_learning_rate: float = 1e-5
) -> optax.Schedule:
    """MAML++'s cosine annealing of the outer learning rate (an optax schedule).

    ``lr(t) = min + (lr - min) (1 + cos(pi t / total_steps)) / 2``, then ``min``; the
    same curve as PyTorch's ``CosineAnnealingLR(T_max, eta_min)``, per step rather
    than per epoch. Use as ``optax.adam(cosine_outer_lr(1e-3, 60_000))``.

    Reference: Antoniou et al. 2019, sec. 4 ("cosine annealing of meta-optimizer
    learning rate"); Loshchilov & Hutter, "SGDR", ICLR 2017.
    """
    return optax.cosine_decay_schedule(
        learning_rate, total_steps, alpha=min_learning_rate / learning_rate
    )


def maml_plus_plus(
    loss_fn: Callable,
    inner_lr: float = 0.1,
    inner_steps: int = 5,
    first_order: bool = False,
    *,
    multi_step_epochs: int = 20,
    steps_per_epoch: int = 500,
    first_order_steps: int = 0,
    **kwargs,
) -> MetaLearner:
    """MAML++: :func:`maml` with its options set as in the paper's Omniglot runs.

    Multi-step loss annealed over ``multi_step_epochs`` epochs of ``steps_per_epoch``
    outer steps (:func:`multi_step_loss_weights`), per-layer per-step learned inner
    learning rates initialised to ``inner_lr``, and derivative-order annealing after
    ``first_order_steps`` outer steps (the paper's Omniglot configs use second order
    throughout: 0). Pair it with ``optax.adam(cosine_outer_lr(1e-3, total_steps))``.
    Per-step batch-norm weights: pass ``per_step_params`` (see :func:`maml`; the
    Omniglot recipe passes ``conv4.batch_norm_mask``).

    Reference: Antoniou, Edwards, Storkey, "How to train your MAML", ICLR 2019.
    """
    return maml(
        loss_fn,
        inner_lr,
        inner_steps,
        first_order,
        multi_step_loss=multi_step_loss_weights(
            inner_steps, num_epochs=multi_step_epochs, steps_per_epoch=steps_per_epoch
        )
        if inner_steps
        else None,
        learn_inner_lr=True,
        first_order_steps=first_order_steps,
        **kwargs,
    )


def learned_sgd(
    loss_fn: Callable,
    inner_lr: float = 0.1,
    inner_steps: int = 5,
    first_order: bool = False,
    *,
    momentum: float = 0.5,
    learn: Sequence[str] = ("learning_rate", "momentum"),
    **kwargs,
) -> MetaLearner:
    """MAML with a learned inner optimizer: SGD with momentum whose hyperparameters
    are meta-parameters.

    The inner update is optax's heavy-ball SGD, ``m_k = g_k + beta m_{k-1}``,
    ``theta_{k+1} = theta_k - alpha m_k``, with ``alpha`` (``learning_rate``) and
    ``beta`` (``momentum``) meta-learned by the outer loop, which differentiates
    through every inner step. It is :func:`maml` with
    ``inner_optimizer=optax.inject_hyperparams(optax.sgd)(...)`` and
    ``learn_hyperparams=learn``: the same mechanism learns the hyperparameters of any
    optax transformation built with ``optax.inject_hyperparams``.

    Momentum first acts at the second inner step, so use ``inner_steps >= 2``.

    Args:
      loss_fn: ``(params, batch) -> scalar`` or ``(scalar, aux)``.
      inner_lr: initial inner learning rate ``alpha``.
      inner_steps: inner updates.
      first_order: drop the second-order terms (the hyperparameters still get a
        gradient: the adapted parameters depend on them directly).
      momentum: initial momentum ``beta``.
      learn: which of ``("learning_rate", "momentum")`` the outer loop learns.
      **kwargs: other :func:`maml` options (``backprop_steps``, ``remat``,
        ``per_step_params``, ...).

    Returns:
      A :class:`MetaLearner` with meta-parameters ``{"params": theta,
      "inner_hyperparams": {name: value}}``.

    Example:
      >>> learner = learned_sgd(loss_fn, inner_lr=0.1, inner_steps=5, momentum=0.5)

    References: Andrychowicz et al., "Learning to learn by gradient descent by
    gradient descent", NeurIPS 2016; Li et al., "Meta-SGD", 2017 (learned inner
    learning rates); Finn et al. 2017 (MAML).
    """
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=inner_lr, momentum=momentum)
    return maml(
        loss_fn,
        inner_steps=inner_steps,
        first_order=first_order,
        inner_optimizer=tx,
        learn_hyperparams=tuple(learn),
        **kwargs,
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
    unroll: int | bool = 1,
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
        unroll=unroll,
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
    unroll: int | bool = 1,
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
        unroll=unroll,
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

    def loss(params, task: Task, step=None):
        del step
        check_task(task)
        joint = jax.tree.map(lambda s, q: jnp.concatenate([s, q]), task.support, task.query)
        joint_loss, _ = base_loss(params, joint)
        query_loss, query_aux = base_loss(params, task.query)
        aux = {"query_loss": query_loss, **{f"query_{k}": v for k, v in query_aux.items()}}
        return joint_loss, aux

    return learner._replace(loss=loss)
