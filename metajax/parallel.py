"""Task-parallel meta-training over several devices and hosts.

One mesh axis, ``"tasks"``, spans every device. The task axis of a batch of tasks is
sharded over it; the train state (meta-parameters, optimizer state, step, key) is
replicated. Each device adapts its own tasks; the task-weighted mean of the
meta-gradients becomes an all-reduce that XLA inserts, and every device applies the
same optax update. This is data parallelism over tasks, written with the modern
sharding API (``jax.make_mesh``, ``NamedSharding``, ``jax.jit`` with shardings); it
does not use ``pmap``.

A meta-batch that does not divide the number of devices is **padded**: the batch is
extended to the next multiple of the device count with copies of its first tasks,
and the copies get task weight 0, so they change neither the meta-gradient nor any
metric (the train step already takes ``task_weights``). A meta-batch of 25 on 8
devices runs 32 tasks, 7 of them weightless; choose a multiple of the device count
to waste nothing.

Several hosts use JAX's multi-controller runtime: every process runs the same
program (:func:`initialize_distributed` first), the mesh spans the devices of all
processes, and in the explicit-batch case each process provides only its share of
the tasks (:func:`process_tasks`, :func:`global_task_batch`). Steps that sample
their own tasks need nothing extra: each device draws only its own tasks.

Example (one host, all its devices):
  >>> mesh = parallel.make_mesh()
  >>> step = mj.make_train_step(maml, outer, sample_tasks=sample, meta_batch=32)
  >>> step = parallel.shard_train_step(mj.repeat_step(step, 100), mesh)
  >>> state = parallel.replicate(state, mesh)
  >>> state, metrics = step(state)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

TASK_AXIS = "tasks"


def make_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh ``("tasks",)`` over the given devices.

    Args:
      devices: ``None`` for every device of every process, an int ``n`` for the first
        ``n`` of ``jax.devices()``, or a sequence of devices.

    Returns:
      A :class:`jax.sharding.Mesh` whose axis is of type ``Auto``: shardings of the
      inputs and of the sampled tasks are given and XLA propagates the rest; the loops
      of ``lax.map`` and chunks run per device in a ``jax.shard_map``
      (:func:`metajax.train.map_tasks`).
    """
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, int):
        available = jax.devices()
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={devices}, but there are {len(available)} devices.")
        devices = available[:devices]
    devices = list(devices)
    return jax.make_mesh((len(devices),), (TASK_AXIS,), (AxisType.Auto,), devices=devices)


def task_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch of tasks: leading axis over ``"tasks"``."""
    return NamedSharding(mesh, PartitionSpec(TASK_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of the train state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def _is_typed_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    """Places one leaf; across processes, each process must hold the same value."""
    if _is_typed_key(x):
        data = _put(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copies every array of ``tree`` (typed PRNG keys included) onto every device of ``mesh``.

    In a multi-process run every process must pass the same values (e.g. a state
    built from the same seed); the result is one global array per leaf.
    """
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: _put(x, sharding), tree)


def task_axis_size(mesh: Any) -> int:
    """Devices on ``mesh``'s ``"tasks"`` axis; 1 for ``None``, empty, or no such axis."""
    if mesh is None or mesh.empty or TASK_AXIS not in mesh.axis_names:
        return 1
    return dict(zip(mesh.axis_names, mesh.axis_sizes))[TASK_AXIS]


def padded_size(num_tasks: int, num_devices: int) -> int:
    """The smallest multiple of ``num_devices`` that holds ``num_tasks`` tasks."""
    return math.ceil(num_tasks / num_devices) * num_devices


def pad_tasks(tasks: Any, task_weights: Any = None, *, multiple: int) -> tuple[Any, jax.Array]:
    """Pads the leading task axis to a multiple of ``multiple`` with weightless tasks.

    The padding repeats the first tasks (real, finite tasks) with task weight 0, so
    the train step's weighted means, and hence its meta-gradient and metrics, are
    those of the unpadded batch.

    Args:
      tasks: pytree with a leading ``[tasks]`` axis.
      task_weights: ``[tasks]`` weights, or ``None`` for all ones.
      multiple: the padded size is a multiple of this (the device count).

    Returns:
      ``(tasks, task_weights)`` with ``padded_size(tasks, multiple)`` tasks.
    """
    leaves = jax.tree.leaves(tasks)
    if not leaves or np.ndim(leaves[0]) < 1:
        raise ValueError("tasks must have a leading [tasks] axis.")
    num_tasks = leaves[0].shape[0]
    if task_weights is None:
        task_weights = jnp.ones((num_tasks,), jnp.float32)
    elif jnp.shape(task_weights) != (num_tasks,):
        raise ValueError(
            f"task_weights must have shape [tasks] = ({num_tasks},); got {task_weights.shape}."
        )
    size = padded_size(num_tasks, multiple)
    if size == num_tasks:
        return tasks, task_weights
    index = np.arange(size) % num_tasks  # static: the first tasks again, cyclically
    tasks = jax.tree.map(lambda x: x[index], tasks)
    task_weights = jnp.asarray(task_weights)
    task_weights = jnp.concatenate(
        [task_weights, jnp.zeros((size - num_tasks,), task_weights.dtype)]
    )
    return tasks, task_weights


def shard_tasks(tasks: Any, task_weights: Any = None) -> tuple[Any, Any]:
    """Inside a traced step: pads and shards the task axis over the current mesh.

    With a mesh that has a ``"tasks"`` axis in context (``jax.set_mesh(mesh)``, as
    :func:`shard_train_step` sets while it traces), the batch is padded to a multiple
    of that axis (:func:`pad_tasks`) and constrained to be sharded over it, so that
    each device computes (and, for sampled tasks, draws) only its own tasks. Without
    such a mesh it returns its arguments unchanged. :func:`metajax.train.make_train_step`
    calls it on every batch of tasks, and on the keys of sampled ones.

    Returns:
      ``(tasks, task_weights)``; ``task_weights`` is ``None`` only if it was ``None``
      and nothing was padded.
    """
    mesh = jax.sharding.get_abstract_mesh()
    num_devices = task_axis_size(mesh)
    if num_devices == 1:
        return tasks, task_weights
    tasks, task_weights = pad_tasks(tasks, task_weights, multiple=num_devices)
    _check_auto(mesh)
    constrain = lambda x: jax.lax.with_sharding_constraint(x, PartitionSpec(TASK_AXIS))
    return jax.tree.map(constrain, tasks), constrain(task_weights)


def _check_auto(mesh: Any) -> None:
    axis_type = dict(zip(mesh.axis_names, mesh.axis_types))[TASK_AXIS]
    if axis_type != AxisType.Auto:
        # With Explicit axes every op must be told how to shard its output (e.g. the
        # task-weighted mean contracts the sharded task axis); the step does not do that.
        raise ValueError(
            f"the mesh's {TASK_AXIS!r} axis is of type {axis_type}; metajax's sharded steps "
            "need AxisType.Auto (jax.make_mesh defaults to Explicit): build the mesh with "
            "metajax.parallel.make_mesh."
        )


def shard_batch(tasks: Any, mesh: Mesh, task_weights: Any = None) -> tuple[Any, jax.Array]:
    """Places a batch of tasks on ``mesh``, task axis sharded, padded if it must be.

    Args:
      tasks: host or device arrays with a leading ``[tasks]`` axis, or global arrays
        (from :func:`global_task_batch`), which are returned as they are.
      mesh: the mesh from :func:`make_mesh`.
      task_weights: ``[tasks]`` weights or ``None`` (all ones).

    Returns:
      ``(tasks, task_weights)`` sharded with :func:`task_sharding` (``task_weights``
      stays ``None`` for a global batch given without weights).
    """
    leaves = jax.tree.leaves(tasks)
    num_devices = task_axis_size(mesh)
    if leaves and isinstance(leaves[0], jax.Array) and not leaves[0].is_fully_addressable:
        if leaves[0].shape[0] % num_devices:
            raise ValueError(
                f"a global batch of {leaves[0].shape[0]} tasks does not divide the "
                f"{num_devices} devices; build it with global_task_batch (which pads)."
            )
        return tasks, task_weights
    tasks, task_weights = pad_tasks(tasks, task_weights, multiple=num_devices)
    sharding = task_sharding(mesh)
    return jax.tree.map(lambda x: _put(x, sharding), (tasks, task_weights))


def shard_train_step(
    step: Callable, mesh: Mesh, *, task_batch: bool = False, donate: bool = True
) -> Callable:
    """``jax.jit`` of a train step over ``mesh``: tasks sharded, state replicated.

    Works for both kinds of step of :func:`metajax.train.make_train_step`:

    - ``task_batch=True``: ``step(state, tasks, task_weights=None)``. The tasks are
      placed with their task axis sharded (:func:`shard_batch`; padded with weightless
      tasks when the batch does not divide the device count).
    - ``task_batch=False``: a sampling step ``step(state, *sampler_args,
      task_weights=None)`` (also fused by :func:`~metajax.train.repeat_step`). The
      sampler arguments (e.g. a whole image split) are replicated; the step draws its
      ``meta_batch`` tasks on the devices, each device only its share, since the
      task keys and the sampled tasks are constrained to the task sharding.

    The state must be replicated (:func:`replicate`, once); the new state and the
    metrics come back replicated, so the host can read the metrics on any process.

    Args:
      step: a pure, un-jitted train step.
      mesh: the mesh from :func:`make_mesh`.
      task_batch: whether the argument after the state is a batch of tasks.
      donate: donate the input state's buffers.

    Returns:
      ``sharded_step(state, *args, task_weights=None) -> (state, metrics)``.
    """
    _check_auto(mesh)
    state_sharding = replicated(mesh)
    weights_sharding = task_sharding(mesh) if task_batch else state_sharding
    jitted: dict[int, Callable] = {}  # one jit per number of positional arguments

    def positional(state, *args_and_weights):
        # in_shardings covers positional arguments only, so the weights go last.
        *args, task_weights = args_and_weights
        if task_weights is None:  # e.g. repeat_step's steps take no weights
            return step(state, *args)
        return step(state, *args, task_weights=task_weights)

    def sharded_step(state, *args, task_weights=None):
        if task_batch:
            if not args:
                raise TypeError("shard_train_step(task_batch=True): call step(state, tasks).")
            tasks, task_weights = shard_batch(args[0], mesh, task_weights)
            args = (tasks, *args[1:])
        if len(args) not in jitted:
            args_shardings = [state_sharding] * len(args)
            if task_batch:
                args_shardings[0] = task_sharding(mesh)
            jitted[len(args)] = jax.jit(
                positional,
                in_shardings=(state_sharding, *args_shardings, weights_sharding),
                out_shardings=state_sharding,
                donate_argnums=(0,) if donate else (),
            )
        # The mesh in context lets the step's shard_tasks constrain the sampled tasks.
        with jax.set_mesh(mesh):
            return jitted[len(args)](state, *args, task_weights)

    return sharded_step


# --- several processes ------------------------------------------------------------


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs,
) -> None:
    """Starts JAX's multi-controller runtime (``jax.distributed.initialize``).

    Call it first, in every process, before anything else touches JAX. On Cloud TPU,
    SLURM, Open MPI or Kubernetes the arguments may be omitted (JAX detects them).
    On CPU the processes exchange data through gloo collectives, the default of
    ``jax_cpu_collectives_implementation`` in current JAX.

    Args:
      coordinator_address: ``host:port`` of process 0, reachable from every process.
      num_processes: number of processes.
      process_id: this process's index, ``0 <= process_id < num_processes``.
      **kwargs: passed to ``jax.distributed.initialize`` (e.g. ``local_device_ids``).

    Example (two processes on one machine, each running):
      >>> parallel.initialize_distributed("localhost:12355", num_processes=2, process_id=i)
    """
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **kwargs,
    )


def process_tasks(meta_batch: int, mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Which tasks of a meta-batch this process provides, and their weights.

    The meta-batch is padded to a multiple of the device count as in
    :func:`pad_tasks`; this process provides the slice of the padded batch that lives
    on its devices.

    Args:
      meta_batch: tasks per meta-step (over all processes).
      mesh: the mesh from :func:`make_mesh`.

    Returns:
      ``(indices, weights)``: indices into the meta-batch (e.g. into
      ``jax.random.split(key, meta_batch)``) of this process's tasks, and their task
      weights (0 for padding). Pass both, after sampling, to :func:`global_task_batch`.
    """
    size = padded_size(meta_batch, task_axis_size(mesh))
    index_map = task_sharding(mesh).addressable_devices_indices_map((size,))
    slices = sorted(
        {(s[0].start or 0, size if s[0].stop is None else s[0].stop) for s in index_map.values()}
    )
    rows = np.concatenate([np.arange(start, stop) for start, stop in slices])
    return rows % meta_batch, (rows < meta_batch).astype(np.float32)


def global_task_batch(
    local_tasks: Any, mesh: Mesh, local_task_weights: Any = None
) -> tuple[Any, jax.Array]:
    """Global task-sharded arrays from each process's share of a meta-batch.

    Every process calls it with its own tasks (those :func:`process_tasks` names), in
    the order of its devices; the result is one global batch whose task axis is
    sharded over the devices of all processes
    (``jax.make_array_from_process_local_data``), ready for a step from
    :func:`shard_train_step` with ``task_batch=True``.

    Args:
      local_tasks: this process's tasks, leading ``[local tasks]`` axis (a multiple of
        the number of local devices).
      mesh: the mesh from :func:`make_mesh`.
      local_task_weights: their task weights, or ``None`` for all ones.

    Returns:
      ``(tasks, task_weights)`` as global arrays.
    """
    leaves = jax.tree.leaves(local_tasks)
    num_local = leaves[0].shape[0]
    if local_task_weights is None:
        local_task_weights = np.ones((num_local,), np.float32)
    sharding = task_sharding(mesh)
    local_devices = len(sharding.addressable_devices)
    if num_local % local_devices:
        raise ValueError(
            f"this process provides {num_local} tasks for its {local_devices} devices; "
            "use process_tasks(meta_batch, mesh) to choose them (it pads)."
        )
    make = lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x))
    return jax.tree.map(make, local_tasks), make(local_task_weights)


__all__ = [
    "TASK_AXIS",
    "global_task_batch",
    "initialize_distributed",
    "make_mesh",
    "pad_tasks",
    "padded_size",
    "process_tasks",
    "replicate",
    "replicated",
    "shard_batch",
    "shard_tasks",
    "shard_train_step",
    "task_axis_size",
    "task_sharding",
]
