"""Checkpoints of the full training state (the only module that imports orbax).

Orbax writes each checkpoint into a temporary directory and renames it into
place when complete, so a run killed mid-write leaves the previous checkpoint
intact and never a half-written one. Typed PRNG keys are stored as their raw key
data and re-wrapped on restore, so a restored state is bitwise identical.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


def _is_typed_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def _from_storable(stored: Any, template: Any) -> Any:
    return jax.tree.map(
        lambda s, t: (
            jax.random.wrap_key_data(s, impl=jax.random.key_impl(t)) if _is_typed_key(t) else s
        ),
        stored,
        template,
    )


class Checkpointer:
    """Saves and restores a pytree state in ``<workdir>/checkpoints/<step>``.

    Args:
      workdir: the run's work directory.
      max_to_keep: how many recent checkpoints to keep.

    Example:
      >>> ckpt = Checkpointer("runs/sinusoid")
      >>> state = ckpt.restore_latest(state)   # unchanged if there is none
      >>> ckpt.save(int(state.step), state)
    """

    def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int = 3):
        self.directory = os.path.abspath(os.path.join(os.fspath(workdir), "checkpoints"))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                # Synchronous saves: a checkpoint reported as written is on disk.
                enable_async_checkpointing=False,
            ),
        )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or ``None``."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, *, force: bool = True) -> None:
        """Writes ``state`` as checkpoint ``step`` (atomically)."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.StandardSave(_to_storable(state)), force=force)
        self._manager.wait_until_finished()

    def restore(self, step: int, template: Any) -> Any:
        """Restores checkpoint ``step`` into the structure, dtypes and shardings of ``template``."""
        storable = _to_storable(template)
        abstract = jax.tree.map(
            lambda x: (
                jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))
                if hasattr(x, "dtype")
                else x
            ),
            storable,
        )
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return _from_storable(restored, template)

    def restore_latest(self, template: Any) -> Any:
        """Restores the newest checkpoint, or returns ``template`` if there is none."""
        step = self.latest_step()
        return template if step is None else self.restore(step, template)

    def close(self) -> None:
        self._manager.close()
