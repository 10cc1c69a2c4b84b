"""Running statistics: model state that meta-training keeps up to date without gradients.

Batch norm's running mean and variance are the example. They live in the model
parameters (``conv4.init(..., running_stats=True)`` adds ``bn*/mean`` and ``bn*/var``
leaves), so they are checkpointed, sharded and per-step exactly like the parameters
around them, but the model stops their gradient: the inner loop and the outer
optimizer leave them unchanged (a zero gradient is a zero update for SGD and Adam).
The train step moves them instead: ``make_train_step(..., running_stats=...)`` calls
``statistics(meta_params, task)`` for every task of the meta-batch (inside the same
``vmap``/``lax.map`` as the meta-gradient), averages the results with the task
weights, and hands the average to ``update(meta_params, stats)`` after the outer
update.

For the MAML family, :func:`per_step_statistics` records what each forward pass of
the inner loop normalises with: row ``k < K`` is the support batch after ``k`` inner
steps (the pass that computes inner gradient ``k + 1``), row ``K`` the query batch
after the last step. With MAML++'s per-step batch norm those rows are kept apart, one
set of running statistics per inner step (BNRS); otherwise they are averaged into one.
It runs the task's inner loop a second time, without second-order terms, to observe
those passes (the meta-loss's own inner loop does not return its support passes'
intermediate values): about one first-order adaptation and ``K + 1`` forward passes
more per task.

Training still normalises with each batch's own statistics (PyTorch's training mode,
and MAML++'s reference code, which calls ``F.batch_norm(..., training=True)`` at every
step, so its running statistics never change its outputs); the running statistics are
what non-transductive evaluation normalises with (``conv4.apply(..., running=True)``).

Example:
  >>> params = conv4.init(key, ways=5, running_stats=True)
  >>> stats = lambda p, b: conv4.batch_statistics(p, b.inputs, example_mask=b.weights > 0)
  >>> tracker = running_stats.track(learner, stats, conv4.update_running_stats)
  >>> step = make_train_step(learner, optax.adam(1e-3), running_stats=tracker)

Reference: Ioffe & Szegedy, "Batch Normalization", ICML 2015 (running averages for
inference); Antoniou, Edwards, Storkey, "How to train your MAML", ICLR 2019, sec. 4
(per-step batch normalisation running statistics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metajax.algorithms.base import MetaLearner
from metajax.tasks import Batch, Task

MetaParams = Any
Stats = Any


class RunningStats(NamedTuple):
    """How a train step keeps running statistics (see the module docstring).

    Attributes:
      statistics: ``(meta_params, task) -> stats`` for one task (no gradient flows
        through it); the train step averages it over the meta-batch's tasks.
      update: ``(meta_params, mean_stats) -> meta_params``: writes the new running
        statistics after the outer update.
    """

    statistics: Callable[[MetaParams, Task], Stats]
    update: Callable[[MetaParams, Stats], MetaParams]


def map_model_params(meta_params: MetaParams, fn: Callable[[Any], Any]) -> MetaParams:
    """Applies ``fn`` to the model parameters inside ``meta_params``.

    The MAML family's meta-parameters are the model parameters, or
    ``{"params": theta, ...}`` when more is learned (inner learning rates,
    hyperparameters; :func:`metajax.maml`).
    """
    if isinstance(meta_params, dict) and "params" in meta_params:
        return {**meta_params, "params": fn(meta_params["params"])}
    return fn(meta_params)


def per_step_statistics(
    learner: MetaLearner, statistics: Callable[[Any, Batch], Stats]
) -> Callable[[MetaParams, Task], Stats]:
    """What each forward pass of a task's inner loop normalises with, one row per pass.

    Args:
      learner: a gradient-based :class:`~metajax.MetaLearner` (its ``adapt`` runs the
        inner loop; the per-step parameters are shown to the model as in training).
      statistics: ``(params, batch) -> stats`` of one forward pass, e.g.
        :func:`metajax.models.conv4.batch_statistics`.

    Returns:
      ``(meta_params, task) -> stats`` with a leading ``[inner_steps + 1]`` axis: row
      ``k < K`` from the support batch after ``k`` inner steps, row ``K`` from the
      query batch after the last one. Nothing is differentiated.
    """
    steps = learner.inner_steps

    def fn(meta_params, task: Task):
        meta_params = jax.lax.stop_gradient(meta_params)
        _, result = learner.adapt(
            meta_params,
            task.support,
            observe=lambda p: (statistics(p, task.support), statistics(p, task.query)),
        )
        support, query = result.observations  # each leaf [steps + 1, ...]
        return jax.tree.map(lambda s, q: jnp.concatenate([s[:steps], q[steps:]]), support, query)

    return fn


def track(
    learner: MetaLearner,
    statistics: Callable[[Any, Batch], Stats],
    update: Callable[[Any, Stats, float], Any],
    *,
    momentum: float = 0.1,
) -> RunningStats:
    """Running statistics of a MAML-family learner, one row per inner step.

    Args:
      learner: a gradient-based learner (see :func:`per_step_statistics`).
      statistics: ``(params, batch) -> stats`` of one forward pass (for conv4:
        ``lambda p, b: conv4.batch_statistics(p, b.inputs, example_mask=b.weights > 0)``).
      update: ``(model_params, stats, momentum) -> model_params`` (for conv4:
        :func:`metajax.models.conv4.update_running_stats`); ``stats`` has the leading
        ``[inner_steps + 1]`` axis.
      momentum: weight of each meta-step's statistics (PyTorch's default 0.1).

    Returns:
      A :class:`RunningStats` for ``make_train_step(..., running_stats=...)``.
    """
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"momentum must be in (0, 1]; got {momentum}.")

    def write(meta_params, stats):
        return map_model_params(meta_params, lambda p: update(p, stats, momentum))

    return RunningStats(per_step_statistics(learner, statistics), write)
