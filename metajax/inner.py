"""The differentiable inner loop: adapt parameters to one task's support set.

An :class:`InnerLoop` is a pair of pure functions, ``init(params) -> InnerState``
and ``step(state, support) -> (state, support_loss)``, plus ``params(state)`` to read
the adapted parameters back. :func:`adapt` drives ``step`` with ``lax.scan``, so
``jax.grad`` of anything computed from the adapted parameters differentiates
through every inner update (second-order MAML) unless ``first_order=True``.

The inner optimizer is any optax ``GradientTransformation``; its state is part of
the scan carry, so gradients flow through momentum and second-moment estimates too.

Options:
  * ``first_order``: stop gradients through the inner gradients (FOMAML).
  * ``adapt``: which parameters adapt (a boolean mask pytree, a callable returning
    one, or a key name); the others keep their meta values and get no inner
    gradient computed at all.
  * ``remat``: rematerialise each inner step in the backward pass
    (``jax.checkpoint``), trading compute for memory that no longer grows with
    the stored activations of every step.
  * ``unroll``: how many inner steps each iteration of the ``lax.scan`` runs (its
    ``unroll`` argument; ``True``: all of them, a straight-line program). For small,
    overhead-bound models on a CPU this lets XLA fuse across steps and drops the
    loop's per-iteration cost (``benchmarks/sinusoid_vs_peers.py``); it costs compile
    time and, for large models, nothing is gained. The result is the same.
  * ``backprop_steps``: truncated meta-gradients: only the last k steps are
    differentiated through; the earlier ones run under ``stop_gradient`` and count as
    the identity map in the backward pass (first-order MAML's approximation), so the
    initial parameters still get a gradient.
  * ``per_step``: per-step parameters (MAML++'s per-step batch-norm weights). Those
    leaves carry a leading ``[steps + 1]`` axis, and the model sees row ``k`` of it
    while the parameters have taken ``k`` inner steps: the support loss of step
    ``k + 1`` and any query loss after ``k`` steps. Rows past the last are clamped to
    it (evaluating with more steps than trained). The model itself needs no change:
    it is given ordinary parameters (:func:`select_step`).

Inner optimizers with meta-learned parts: :func:`per_parameter_sgd` (Meta-SGD),
:func:`per_step_sgd` (MAML++'s per-layer, per-step learning rates) and
:func:`with_hyperparams` (any ``optax.inject_hyperparams`` transformation whose
hyperparameters are set from meta-parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from metajax.losses import as_loss_with_aux
from metajax.tasks import Batch

Params = Any
AdaptSpec = Any  # None | str | mask pytree | Callable[[Params], mask pytree]


class InnerState(NamedTuple):
    """Carry of the inner loop.

    Attributes:
      adapted: the adapting parameters (frozen leaves are ``None``).
      frozen: the parameters that keep their meta values (adapting leaves ``None``).
      opt_state: the inner optimizer's state over ``adapted``.
      step: inner steps taken (an int32 scalar).
    """

    adapted: Params
    frozen: Params
    opt_state: optax.OptState
    step: jax.Array = 0


def _identity(state: InnerState) -> Params:
    return combine(state.adapted, state.frozen)


class InnerLoop(NamedTuple):
    """Pure functions of one inner loop (see the module docstring).

    ``params(state)`` is the carried parameters (per-step leaves with their
    ``[steps + 1]`` axis); ``view(state)`` is what the model sees at the state's step
    (the same tree without per-step parameters).
    """

    init: Callable[[Params], InnerState]
    step: Callable[[InnerState, Batch], tuple[InnerState, jax.Array]]
    params: Callable[[InnerState], Params]
    view: Callable[[InnerState], Params] = _identity


def select_step(params: Params, per_step: Params, step: ArrayLike) -> Params:
    """``params`` as the model sees them after ``step`` inner steps.

    Args:
      params: parameters whose ``per_step`` leaves have a leading ``[steps + 1]`` axis.
      per_step: boolean mask pytree (see :func:`adapt_mask`) of the per-step leaves.
      step: inner steps taken (traced is fine); clamped to the last row.

    Returns:
      ``params`` with each per-step leaf replaced by its row ``step``.
    """

    def leaf(is_per_step, p):
        if not is_per_step:
            return p
        row = jnp.minimum(jnp.asarray(step, jnp.int32), p.shape[0] - 1)
        return jax.lax.dynamic_index_in_dim(p, row, axis=0, keepdims=False)

    return jax.tree.map(leaf, per_step, params)


def _path_has_key(path, key: str) -> bool:
    for entry in path:
        name = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", None)))
        if name == key:
            return True
    return False


def adapt_mask(params: Params, adapt: AdaptSpec) -> Params:
    """Resolves an ``adapt`` specification into a boolean mask with ``params``' structure.

    Args:
      params: the parameter pytree.
      adapt: ``None`` (everything adapts), a string (leaves whose path contains
        that dict key or attribute adapt, e.g. ``"head"``), a callable
        ``params -> mask``, or a mask pytree of Python bools.

    Returns:
      A pytree of bools with the structure of ``params``.
    """
    if adapt is None:
        return jax.tree.map(lambda _: True, params)
    if isinstance(adapt, str):
        mask = jax.tree_util.tree_map_with_path(lambda path, _: _path_has_key(path, adapt), params)
        if not any(jax.tree.leaves(mask)):
            paths = [
                jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)
            ]
            raise ValueError(f"adapt={adapt!r} matches no parameter; parameter paths: {paths[:20]}")
        return mask
    mask = adapt(params) if callable(adapt) else adapt
    try:
        jax.tree.map(lambda m, p: None, mask, params)
    except ValueError as e:
        raise ValueError(
            "adapt mask must have the same tree structure as params; got mask "
            f"{jax.tree.structure(mask)} for params {jax.tree.structure(params)}."
        ) from e
    return jax.tree.map(bool, mask)


def partition(params: Params, mask: Params) -> tuple[Params, Params]:
    """Splits ``params`` into ``(adapted, frozen)`` trees with ``None`` holes."""
    adapted = jax.tree.map(lambda m, p: p if m else None, mask, params)
    frozen = jax.tree.map(lambda m, p: None if m else p, mask, params)
    return adapted, frozen


def combine(adapted: Params, frozen: Params) -> Params:
    """Inverse of :func:`partition`."""
    return jax.tree.map(
        lambda a, f: f if a is None else a, adapted, frozen, is_leaf=lambda x: x is None
    )


def make_inner_loop(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    first_order: bool = False,
    adapt: AdaptSpec = None,
    per_step: AdaptSpec | bool = False,
) -> InnerLoop:
    """Builds an inner loop that minimises ``loss_fn`` on a support batch.

    Args:
      loss_fn: ``(params, batch) -> scalar`` or ``(scalar, aux)``.
      optimizer: the inner optax transformation (e.g. ``optax.sgd(0.01)``).
      first_order: stop gradients through the inner gradients.
      adapt: which parameters adapt (see :func:`adapt_mask`).
      per_step: which parameters are per-step (a leading ``[steps + 1]`` axis; an
        ``adapt``-style specification; ``False``: none). See the module docstring.

    Returns:
      An :class:`InnerLoop`.
    """
    loss_fn = as_loss_with_aux(loss_fn)

    def view_of(full, step):
        if per_step is False:
            return full
        return select_step(full, adapt_mask(full, per_step), step)

    def init(params):
        adapted, frozen = partition(params, adapt_mask(params, adapt))
        return InnerState(adapted, frozen, optimizer.init(adapted), jnp.zeros((), jnp.int32))

    def step(state: InnerState, support: Batch):
        def adapted_loss(adapted):
            return loss_fn(view_of(combine(adapted, state.frozen), state.step), support)[0]

        loss, grads = jax.value_and_grad(adapted_loss)(state.adapted)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.adapted)
        adapted = optax.apply_updates(state.adapted, updates)
        return InnerState(adapted, state.frozen, opt_state, state.step + 1), loss

    def params(state: InnerState):
        return combine(state.adapted, state.frozen)

    def view(state: InnerState):
        return view_of(params(state), state.step)

    return InnerLoop(init, step, params, view)


class InnerResult(NamedTuple):
    """What :func:`adapt` returns besides the adapted parameters.

    Attributes:
      support_losses: ``[steps]`` support loss before each inner update.
      observations: ``observe(params)`` after 0, 1, ..., ``steps`` updates, each
        leaf stacked along a leading ``[steps + 1]`` axis (``None`` if no observer).
    """

    support_losses: jax.Array
    observations: Any = None


def adapt(
    inner: InnerLoop,
    params: Params,
    support: Batch,
    *,
    steps: int,
    remat: bool = False,
    backprop_steps: int | None = None,
    observe: Callable[[Params], Any] | None = None,
    unroll: int | bool = 1,
) -> tuple[Params, InnerResult]:
    """Runs ``steps`` inner updates with ``lax.scan``.

    Args:
      inner: the inner loop.
      params: the starting (meta) parameters.
      support: the support batch of one task.
      steps: number of inner updates (a static Python int, ``>= 0``).
      remat: rematerialise each step in the backward pass.
      backprop_steps: differentiate through only the last this-many steps
        (truncated meta-gradients); ``None`` means all of them. The earlier steps
        run under ``stop_gradient`` and their Jacobian is taken to be the identity
        (as first-order MAML does for every step): the initial parameters get the
        second-order gradient through the last ``backprop_steps`` steps and the
        first-order one through the rest, and nothing else (learning rates,
        observations) gets a gradient from the earlier steps. ``0`` is first-order
        MAML, ``steps`` is full second-order MAML.
      observe: optional function of the parameters as the model sees them
        (``inner.view``), evaluated after every step (and before the first), e.g. the
        query metrics of an eval step.
      unroll: inner steps per scan iteration (``lax.scan``'s ``unroll``; ``True``:
        all). The same function; a speed and compile-time trade-off.

    Returns:
      ``(adapted_params, InnerResult)``; the adapted parameters as the model sees them
      after the last step (``inner.view``: with per-step parameters, their last row).
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"inner steps must be a non-negative Python int, got {steps!r}.")
    if not isinstance(unroll, bool) and (not isinstance(unroll, int) or unroll < 1):
        raise ValueError(f"unroll must be a positive int or a bool, got {unroll!r}.")
    if backprop_steps is not None and not 0 <= backprop_steps <= steps:
        raise ValueError(f"backprop_steps must be in [0, steps={steps}], got {backprop_steps}.")

    def body(state, _):
        new_state, loss = inner.step(state, support)
        obs = observe(inner.view(new_state)) if observe is not None else None
        return new_state, (loss, obs)

    if remat:
        body = jax.checkpoint(body, prevent_cse=False)

    state = inner.init(params)
    initial_view = inner.view(state)
    truncated = steps - (steps if backprop_steps is None else backprop_steps)
    outputs = []
    if truncated:
        start = state
        state, out = jax.lax.stop_gradient(
            jax.lax.scan(body, jax.lax.stop_gradient(state), length=truncated, unroll=unroll)
        )
        state = _straight_through(state, start)
        outputs.append(out)
    if steps - truncated:
        state, out = jax.lax.scan(body, state, length=steps - truncated, unroll=unroll)
        outputs.append(out)
    if outputs:
        losses = jnp.concatenate([o[0] for o in outputs])
        later = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[o[1] for o in outputs])
    else:
        losses = jnp.zeros((0,), jnp.float32)
        later = None
    observations = None
    if observe is not None:
        first = jax.tree.map(lambda x: x[None], observe(initial_view))
        observations = (
            first
            if later is None
            else jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, later)
        )
    return inner.view(state), InnerResult(losses, observations)


def _straight_through(value, source):
    """``value`` in the forward pass; the identity from ``source`` in the backward pass.

    ``stop_gradient(v) + (s - stop_gradient(s))`` adds an exact zero, so the forward
    value is bitwise ``value``. Integer leaves (step counters) pass through unchanged.
    """

    def leaf(v, s):
        if not jnp.issubdtype(v.dtype, jnp.inexact):
            return v
        return jax.lax.stop_gradient(v) + (s - jax.lax.stop_gradient(s))

    return jax.tree.map(leaf, value, source)


def sgd(learning_rate: float | jax.Array) -> optax.GradientTransformation:
    """Plain gradient descent ``params - lr * grad``: the MAML inner optimizer."""
    return optax.sgd(learning_rate)


def adam(learning_rate: float | jax.Array, *, eps_root: float = 1e-12, **kwargs):
    """Adam for inner loops that are differentiated through.

    With ``eps_root=0`` the derivative of ``sqrt(v)`` is infinite where a gradient
    is exactly zero (a dead ReLU, say). Current JAX/optax keep the second-order
    meta-gradient finite there anyway (tested), but a tiny ``eps_root`` makes that
    independent of how a given version differentiates ``sqrt`` at 0, at no
    measurable change to the forward pass.
    """
    return optax.adam(learning_rate, eps_root=eps_root, **kwargs)


def per_parameter_sgd(learning_rates: Params) -> optax.GradientTransformation:
    """SGD with one learning rate per parameter entry (Meta-SGD's inner rule).

    Args:
      learning_rates: a pytree with the structure of the adapted parameters,
        broadcastable leaf by leaf; typically meta-parameters.
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(grads, state, params=None):
        del params
        updates = jax.tree.map(
            lambda lr, g: None if g is None else -lr * g,
            learning_rates,
            grads,
            is_leaf=lambda x: x is None,
        )
        return updates, state

    return optax.GradientTransformation(init, update)


class PerStepState(NamedTuple):
    """State of :func:`per_step_sgd`: how many updates were applied."""

    count: jax.Array


def per_step_sgd(learning_rates: Params) -> optax.GradientTransformation:
    """SGD with one learning rate per parameter leaf and per inner step (MAML++'s LSLR).

    Update ``k`` is ``-learning_rates[leaf][k] * grad[leaf]``; updates past the last
    entry reuse it (so evaluation may run more steps than training).

    Args:
      learning_rates: a pytree with the structure of the adapted parameters whose
        leaves have a leading ``[steps]`` axis (``[steps]`` for one rate per leaf,
        or ``[steps, *leaf.shape]`` for one per entry); typically meta-parameters.

    Reference: Antoniou, Edwards, Storkey, "How to train your MAML", ICLR 2019
    ("learning per-layer per-step learning rates").
    """

    def init(params):
        del params
        return PerStepState(jnp.zeros((), jnp.int32))

    def update(grads, state, params=None):
        del params

        def leaf(lr, g):
            if g is None:
                return None
            rate = lr[jnp.minimum(state.count, lr.shape[0] - 1)]
            return -rate.astype(g.dtype) * g

        updates = jax.tree.map(leaf, learning_rates, grads, is_leaf=lambda x: x is None)
        return updates, PerStepState(state.count + 1)

    return optax.GradientTransformation(init, update)


def with_hyperparams(
    optimizer: optax.GradientTransformation, hyperparams: dict[str, ArrayLike]
) -> optax.GradientTransformationExtraArgs:
    """Sets the numeric hyperparameters of an ``optax.inject_hyperparams`` optimizer.

    The values (e.g. meta-parameters) are written into the optimizer state at
    ``init`` and carried through every update, so gradients flow from the inner loop
    into them: the outer loop learns the inner learning rate, momentum, and so on.

    Args:
      optimizer: built with ``optax.inject_hyperparams``, e.g.
        ``optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)``.
      hyperparams: name -> scalar (or array) value; each name must be a numeric
        hyperparameter of ``optimizer`` (not a schedule).

    Returns:
      The optimizer with those hyperparameter values.

    Example:
      >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
      >>> inner = make_inner_loop(loss_fn, with_hyperparams(tx, meta["inner_hyperparams"]))
    """

    def init(params):
        state = optimizer.init(params)
        current = getattr(state, "hyperparams", None)
        if not isinstance(current, dict):
            raise TypeError(
                "with_hyperparams needs an optimizer built with optax.inject_hyperparams "
                f"(its state has a `hyperparams` dict); got state {type(state).__name__}."
            )
        unknown = sorted(set(hyperparams) - set(current))
        if unknown:
            raise ValueError(
                f"hyperparameters {unknown} are not numeric hyperparameters of the "
                f"optimizer; it has {sorted(current)}."
            )
        merged = dict(current)
        for name, value in hyperparams.items():
            merged[name] = jnp.asarray(value).astype(current[name].dtype)
        return state._replace(hyperparams=merged)

    return optax.GradientTransformationExtraArgs(init, optimizer.update)
