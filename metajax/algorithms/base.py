"""The interface every meta-learning algorithm implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from metajax import inner as inner_lib
from metajax.tasks import Batch, Task

Params = Any
MetaParams = Any


class MetaLearner(NamedTuple):
    """A meta-learning algorithm as pure functions.

    Attributes:
      init: ``params -> meta_params`` (e.g. adds learned inner learning rates).
      loss: ``(meta_params, task, step=None) -> (meta_loss, aux)`` for one task;
        ``aux`` has ``query_loss`` (after adaptation), the task loss's own metrics
        prefixed ``query_``, and ``support_loss`` (before the first inner update)
        where there is one. ``step`` is the outer step (an int32 scalar, traced in a
        jitted train step; :func:`metajax.make_train_step` passes it) for options
        scheduled over training (MAML++'s multi-step-loss weights and
        derivative-order annealing); ``None`` means "after every schedule". Every
        built-in algorithm accepts it; those without schedules ignore it.
      adapt: ``(meta_params, support, *, steps=None, observe=None) ->
        (adapted_params, InnerResult)``; ``steps`` defaults to the training value.
      params: ``meta_params -> params``: the model parameters adaptation starts from,
        as the model sees them before any inner step (per-step parameters at row 0).
      loss_fn: the task loss ``(params, batch) -> (scalar, aux)``.
      inner_steps: number of inner steps used in training.
    """

    init: Callable[[Params], MetaParams]
    loss: Callable[..., tuple[jax.Array, dict]]
    adapt: Callable[..., tuple[Params, inner_lib.InnerResult]]
    params: Callable[[MetaParams], Params]
    loss_fn: Callable[[Params, Batch], tuple[jax.Array, dict]]
    inner_steps: int


def check_task(task: Task) -> None:
    """Raises a clear error when ``task`` is not one well-formed task."""
    if not isinstance(task, Task):
        raise TypeError(f"expected a metajax Task(support=Batch, query=Batch), got {type(task)}.")
    for name in ("support", "query"):
        batch = getattr(task, name)
        if not isinstance(batch, Batch):
            raise TypeError(f"task.{name} must be a metajax Batch, got {type(batch)}.")
        n = jax.tree.leaves(batch.targets)[0].shape[0] if jax.tree.leaves(batch.targets) else None
        for field in ("inputs", "weights"):
            for leaf in jax.tree.leaves(getattr(batch, field)):
                if leaf.ndim == 0 or leaf.shape[0] != n:
                    raise ValueError(
                        f"task.{name}.{field} has shape {leaf.shape} but task.{name}.targets "
                        f"has {n} examples; the leading (example) axes must agree. (For a "
                        "batch of tasks, vmap the per-task loss over the leading task axis.)"
                    )
