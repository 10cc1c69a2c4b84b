"""Containers for examples and tasks.

A :class:`Batch` holds ``inputs``, ``targets`` and per-example ``weights`` (``>= 0``;
0/1 is a mask). A :class:`Task` holds a ``support`` batch (what the inner loop adapts
on) and a ``query`` batch (what the adapted parameters are judged on). A batch of
tasks is a :class:`Task` whose leaves have a leading ``[tasks]`` axis, so ``jax.vmap``
maps over it directly.

Both are frozen dataclasses registered as pytrees: they pass through ``jit``,
``vmap``, ``lax.scan`` and ``jax.tree`` functions like tuples do.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Batch:
    """A batch of examples.

    Attributes:
      inputs: array (or pytree) with a leading example axis ``[N, ...]``.
      targets: array with a leading example axis ``[N, ...]``.
      weights: per-example weights ``[N]`` (or ``[N, T]`` per token for sequence
        losses), non-negative. ``None`` at construction means all ones over the
        leading axis of ``targets``.

    Example:
      >>> batch = Batch(jnp.zeros((10, 1)), jnp.zeros((10, 1)))
      >>> batch.weights.shape
      (10,)
    """

    inputs: Any
    targets: Any
    weights: Any = None

    def __post_init__(self):
        if self.weights is None and hasattr(self.targets, "shape"):
            if len(self.targets.shape) == 0:
                raise ValueError(
                    "Batch.targets must have a leading example axis, got a scalar "
                    f"of shape {self.targets.shape}."
                )
            weights = jnp.ones(self.targets.shape[:1], dtype=jnp.float32)
            object.__setattr__(self, "weights", weights)

    @property
    def num_examples(self) -> int:
        """Size of the leading (example) axis."""
        return jax.tree.leaves(self.targets)[0].shape[0]

    def replace(self, **changes) -> Batch:
        """Returns a copy with some fields replaced."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Task:
    """One few-shot task, or a batch of tasks with a leading ``[tasks]`` axis.

    Attributes:
      support: the examples the inner loop adapts on.
      query: the examples the adapted parameters are evaluated on.
    """

    support: Batch
    query: Batch

    def replace(self, **changes) -> Task:
        """Returns a copy with some fields replaced."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    Batch, data_fields=["inputs", "targets", "weights"], meta_fields=[]
)
jax.tree_util.register_dataclass(Task, data_fields=["support", "query"], meta_fields=[])


def num_tasks(tasks: Task) -> int:
    """Size of the leading task axis of a batch of tasks."""
    return jax.tree.leaves(tasks)[0].shape[0]
