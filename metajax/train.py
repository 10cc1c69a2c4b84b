"""The meta-training step: pure, un-jitted, vectorised over tasks.

``make_train_step(algorithm, outer_optimizer)`` returns
``step(state, tasks, task_weights=None) -> (state, metrics)``: the per-task
meta-loss and meta-gradient are computed for every task of the batch (``vmap``,
``lax.map`` or chunks of both), averaged with optional task weights, and one
optax update is applied. With ``sample_tasks=`` the step draws its own batch of
tasks on the device from ``fold_in(state.rng, state.step)``, so a resumed run
replays exactly the same tasks.

``jit_train_step`` adds ``jax.jit`` with the state donated; it is the one place
where compilation options are chosen (the sharded variant lives in
:mod:`metajax.parallel`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metajax.algorithms.base import MetaLearner
from metajax.losses import weighted_mean
from metajax.parallel import TASK_AXIS, shard_tasks, task_axis_size
from metajax.running_stats import RunningStats
from metajax.tasks import Task

TaskSampler = Callable[[jax.Array], Task]


@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a meta-training run needs to continue exactly.

    Attributes:
      step: int32 scalar, number of meta-updates done.
      meta_params: the meta-parameters (e.g. the MAML initialisation).
      opt_state: the outer optimizer's state.
      rng: a typed PRNG key; the tasks of step ``s`` come from ``fold_in(rng, s)``.
    """

    step: jax.Array
    meta_params: Any
    opt_state: Any
    rng: jax.Array

    def replace(self, **changes) -> TrainState:
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    TrainState, data_fields=["step", "meta_params", "opt_state", "rng"], meta_fields=[]
)


def init_train_state(
    algorithm: MetaLearner,
    params: Any,
    outer_optimizer: optax.GradientTransformation,
    key: jax.Array,
) -> TrainState:
    """Creates the initial :class:`TrainState` from model parameters.

    Args:
      algorithm: the meta-learner (its ``init`` turns params into meta-params).
      params: initial model parameters.
      outer_optimizer: the outer optax transformation.
      key: a typed PRNG key (``jax.random.key(seed)``) for task sampling.
    """
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise TypeError(
            "key must be a typed PRNG key from jax.random.key(seed); got dtype "
            f"{key.dtype}. (Legacy uint32 keys from jax.random.PRNGKey are not accepted.)"
        )
    meta_params = algorithm.init(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        meta_params=meta_params,
        opt_state=outer_optimizer.init(meta_params),
        rng=key,
    )


#: ``task_parallel="auto"`` on CPU: the largest array one chunk of tasks may create.
#: The L2 cache per core of the 2-core Xeon it was first measured on; on a 2-core AMD
#: EPYC (512 KiB L2 per core, 32 MiB L3) it still picks the fastest mode within noise.
AUTO_CPU_CHUNK_BYTES = 2 * 2**20


def _largest_array_bytes(jaxpr) -> int:
    """Bytes of the largest value any equation of ``jaxpr`` (or of its sub-jaxprs) creates."""
    largest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            aval = getattr(var, "aval", None)
            try:
                largest = max(largest, int(aval.size) * aval.dtype.itemsize)
            except (AttributeError, TypeError):  # tokens, key types without a size
                pass
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    largest = max(largest, _largest_array_bytes(sub))
    return largest


def resolve_task_parallel(mode: str | int, fn: Callable, tasks: Any) -> str | int:
    """The task-parallel mode ``"auto"`` stands for; other modes are returned unchanged.

    The rule, from ``benchmarks/task_parallel.py`` (every mode compiled in one process
    and timed in alternating rounds; ``benchmarks/results/task_parallel*.md``):

    * GPU and TPU: ``"vmap"``. One batched program keeps the device busy; ``lax.map``
      runs every task's small kernels one after the other. Measured on an H200 (W1
      with ``"xla"`` convolutions, ``benchmarks/results/gpu/task_parallel_gpu.md``):
      vmap 14.3 ms per meta-step, chunks of 4 tasks 20.9 ms, ``lax.map`` 40.5 ms.
      (TPU not measured.)
    * Tasks sharded over several devices (a mesh with a ``"tasks"`` axis in context,
      :mod:`metajax.parallel`): the same rule, applied to each device's share of the
      tasks (:func:`map_tasks` loops over a device's own tasks only).
    * CPU: the per-task function is traced once more (no compilation; about 1-3 s for
      second-order MAML on conv4) to find the largest array it creates, ``b`` bytes;
      chunks of ``c = AUTO_CPU_CHUNK_BYTES // b`` tasks are vmapped: ``"vmap"`` if ``c``
      covers every task, ``"map"`` if ``c <= 1``. The likely cause (not profiled):
      elementwise work (batch norm, ReLU, pooling, the im2col patch copies) streams
      these arrays through memory, and batched over many tasks they outgrow the cache.

    Measured on 2026-12-07 on a 2-core AMD EPYC (512 KiB L2 per core, 32 MiB L3) with
    the current conv4 (Winograd convolutions), host allocator tuned as the CLI does
    (:func:`metajax.tune_host_allocator`), seconds per meta-step, second-order MAML
    (load average 1.6-1.8, ``benchmarks/results/task_parallel_2026-12-07.md`` and, for
    meta-batch 8, ``task_parallel_mb8_2026-12-07.md``):

    =====================================  =======  =======  ======  ======  ======
    workload (largest per-task array)      vmap     map      2       4       8
    =====================================  =======  =======  ======  ======  ======
    conv4-64, W1, meta-batch 32 (2.3 MB)   0.849    0.541    0.521   0.552   0.580
    conv4-32, meta-batch 16 (1.1 MB)       0.128    0.092    0.098   0.090   0.094
    conv4-32, meta-batch 8 (1.1 MB)        0.049    0.054    0.054   0.048
    MLP 1-40-40-1, mb 25, 1 step (6 kB)    0.0009   0.0012   0.0011  0.0010  0.0009
    MLP, mb 25, 5 inner steps (32 kB)      0.0029   0.0062   0.0044  0.0031  0.0031
    =====================================  =======  =======  ======  ======  ======

    ``"auto"`` picked ``"map"`` for the three conv4 rows and ``"vmap"`` for the MLP
    (0.587 s, 0.103 s, 0.052 s, 0.91 ms, 2.87 ms in the same runs: ``"auto"`` is the
    same program as the mode it picks, so these differences are the runs' noise, 5-10%).
    At meta-batch 8 every mode is within that noise; from 16 tasks on, ``lax.map`` is
    0.64-0.71x ``vmap``'s time. The first measurement (2026-11-29, a 2-core Xeon with
    2 MiB L2 per core, before the Winograd convolutions, load average 2.7-3.9,
    ``task_parallel.md``) picked the same way:
    W1 1.79 s with ``vmap`` against 1.27 s with ``lax.map``. ``lax.map`` also needs the
    least memory (W1: 30 MB of program memory against 428 MB for ``vmap``). Without the
    allocator tuning ``vmap`` suffers most, as its large temporaries are page-faulted
    afresh on every call: W1 6.5 s with ``vmap`` against 2.7 s with ``lax.map`` (load
    average 4.5-12; ``benchmarks/results/task_parallel_untuned_allocator.md``).

    Args:
      mode: ``"auto"``, ``"vmap"``, ``"map"`` or a chunk size.
      fn: the per-task function.
      tasks: the batch of tasks (arrays or tracers) with a leading ``[tasks]`` axis.

    Returns:
      ``"vmap"``, ``"map"`` or a chunk size.
    """
    if mode != "auto":
        return mode
    if jax.default_backend() != "cpu":
        return "vmap"
    leaves = jax.tree.leaves(tasks)
    n_tasks = (leaves[0].shape[0] if leaves else 1) // _task_devices()  # each device's share
    one_task = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tasks)
    largest = _largest_array_bytes(jax.make_jaxpr(fn)(one_task).jaxpr)
    chunk = AUTO_CPU_CHUNK_BYTES // max(largest, 1)
    if chunk >= n_tasks:
        return "vmap"
    return "map" if chunk <= 1 else int(chunk)


def map_tasks(fn: Callable, tasks: Any, mode: str | int = "vmap") -> Any:
    """Applies a per-task function over the leading task axis.

    Args:
      fn: function of one task (any pytree slice).
      tasks: pytree with a leading ``[tasks]`` axis.
      mode: ``"vmap"`` (one batched program), ``"map"`` (``lax.map``: one task at a
        time inside the compiled program, least memory), an int ``c``: chunks of
        ``c`` tasks vmapped, ``lax.map`` across chunks, or ``"auto"``: one of those
        by the rule of :func:`resolve_task_parallel`.

    Under a mesh with a ``"tasks"`` axis of several devices (as
    :func:`metajax.parallel.shard_train_step` traces the step), ``"map"`` and chunks
    run in a ``jax.shard_map`` over that axis: each device loops over its own tasks,
    whose number must divide evenly (the train step pads its batch to make it so).
    A loop over the sharded axis itself would make XLA gather the tasks, and every
    device would compute every task (W1 before this was done: 1.65 s per meta-step on 2
    simulated CPU devices and 6.52 s on 8, against 0.82 s on one;
    ``benchmarks/results/sharded_task_loop.md``). ``"vmap"`` needs no such help: XLA shards the
    batched program along the task axis. (JAX 0.10 cannot transpose such a loop: a
    gradient taken through ``map_tasks`` from outside, under the mesh, raises; the
    train step differentiates inside each task only.)

    Returns:
      ``fn``'s outputs stacked along a leading task axis.
    """
    mode = resolve_task_parallel(mode, fn, tasks)
    if mode == "vmap":
        return jax.vmap(fn)(tasks)
    if mode == "map":
        loop = lambda local: jax.lax.map(fn, local)
    elif isinstance(mode, int) and not isinstance(mode, bool) and mode >= 1:
        loop = lambda local: jax.lax.map(fn, local, batch_size=mode)
    else:
        raise ValueError(
            f"task_parallel must be 'auto', 'vmap', 'map' or a positive chunk size; got {mode!r}."
        )
    devices = _task_devices()
    if devices == 1:
        return loop(tasks)
    leaves = jax.tree.leaves(tasks)
    n_tasks = leaves[0].shape[0] if leaves else 0
    if n_tasks % devices:
        raise ValueError(
            f"map_tasks: {n_tasks} tasks do not divide the mesh's {devices} {TASK_AXIS!r} "
            "devices; pad them first (metajax.parallel.pad_tasks gives the padding zero weight)."
        )
    spec = jax.sharding.PartitionSpec(TASK_AXIS)
    # check_vma=False: fn differentiates with respect to values it closes over (the
    # meta-parameters, replicated). With the check, JAX would treat them as
    # device-invariant and sum each task's gradient over the devices.
    return jax.shard_map(loop, in_specs=spec, out_specs=spec, check_vma=False)(tasks)


def _task_devices() -> int:
    """Devices of the ``"tasks"`` axis of the mesh in context (1 without one)."""
    return task_axis_size(jax.sharding.get_abstract_mesh())


def make_train_step(
    algorithm: MetaLearner,
    outer_optimizer: optax.GradientTransformation,
    *,
    sample_tasks: TaskSampler | None = None,
    meta_batch: int | None = None,
    task_parallel: str | int = "auto",
    pre_adaptation_metrics: bool = True,
    running_stats: RunningStats | None = None,
) -> Callable:
    """Returns a pure meta-training step.

    Args:
      algorithm: a :class:`MetaLearner` (``mj.maml(...)`` etc.).
      outer_optimizer: the optax transformation applied to the meta-gradient.
      sample_tasks: optional ``(key, *sampler_args) -> Task`` sampler of one task;
        then the step is ``step(state, *sampler_args)`` and draws ``meta_batch``
        tasks on the device. Pass large data (a whole image split) as a sampler
        argument rather than closing over it, so it is not baked into the program.
      meta_batch: tasks per step when ``sample_tasks`` is given.
      task_parallel: how tasks run (see :func:`map_tasks`); results are the same.
        The default, ``"auto"``, is ``"vmap"`` on GPU/TPU and, on CPU, chunks sized
        to the model (:func:`resolve_task_parallel`).
      pre_adaptation_metrics: also report the query loss (and metrics) at the
        un-adapted parameters (one extra forward pass per task).
      running_stats: keep running statistics held in the meta-parameters (batch
        norm's; :mod:`metajax.running_stats`): each task's statistics are computed at
        the meta-parameters the step starts from, averaged with the task weights and
        written after the outer update.

    Returns:
      ``step(state, tasks, task_weights=None) -> (state, metrics)`` (or
      ``step(state, *sampler_args, task_weights=None)`` with a sampler). ``metrics`` holds
      ``meta_loss``, ``query_loss`` (after adaptation), ``query_loss_pre``
      (before), the same for every metric of the task loss (e.g.
      ``query_accuracy``), ``support_loss`` and ``grad_norm``; all are
      task-weighted means. Traced under a mesh with a ``"tasks"`` axis
      (:func:`metajax.parallel.shard_train_step`), the step shards the task axis
      over it, padding the batch with weightless tasks to a multiple of its size.

    Example:
      >>> step = jax.jit(make_train_step(mj.maml(loss_fn), optax.adam(1e-3)), donate_argnums=0)
      >>> state, metrics = step(state, tasks)
    """
    if sample_tasks is not None and (meta_batch is None or meta_batch < 1):
        raise ValueError("make_train_step(sample_tasks=...) needs meta_batch >= 1.")
    map_tasks(lambda x: x, jnp.zeros((1,)), task_parallel)  # validates the mode early

    def per_task(meta_params, task, step):
        (loss, aux), grads = jax.value_and_grad(algorithm.loss, has_aux=True)(
            meta_params, task, step=step
        )
        aux = dict(aux)
        if pre_adaptation_metrics:
            pre_loss, pre_aux = algorithm.loss_fn(
                jax.lax.stop_gradient(algorithm.params(meta_params)), task.query
            )
            aux["query_loss_pre"] = pre_loss
            aux.update({f"query_{k}_pre": v for k, v in pre_aux.items()})
        stats = None if running_stats is None else running_stats.statistics(meta_params, task)
        return loss, aux, grads, stats

    def update(state: TrainState, tasks: Task, task_weights=None):
        leaves = jax.tree.leaves(tasks)
        if not leaves or leaves[0].ndim < 1:
            raise ValueError("tasks must have a leading [tasks] axis.")
        n_tasks = leaves[0].shape[0]
        if task_weights is None:
            task_weights = jnp.ones((n_tasks,), jnp.float32)
        elif task_weights.shape != (n_tasks,):
            raise ValueError(
                f"task_weights must have shape [tasks] = ({n_tasks},); got {task_weights.shape}."
            )
        # Under a mesh with a "tasks" axis: pad with weightless tasks and shard (parallel.py).
        tasks, task_weights = shard_tasks(tasks, task_weights)
        losses, aux, grads, stats = map_tasks(
            lambda task: per_task(state.meta_params, task, state.step), tasks, task_parallel
        )
        # Normalised task weights (0 everywhere if every task has weight 0).
        total = jnp.sum(task_weights)
        norm_weights = jnp.where(total > 0, task_weights / jnp.where(total > 0, total, 1.0), 0.0)
        meta_grad = jax.tree.map(
            lambda g: jnp.tensordot(norm_weights.astype(g.dtype), g, axes=1), grads
        )
        updates, opt_state = outer_optimizer.update(meta_grad, state.opt_state, state.meta_params)
        meta_params = optax.apply_updates(state.meta_params, updates)
        if running_stats is not None:
            mean_stats = jax.tree.map(
                lambda x: jnp.tensordot(norm_weights.astype(x.dtype), x, axes=1), stats
            )
            meta_params = running_stats.update(meta_params, mean_stats)
        metrics = {"meta_loss": weighted_mean(losses, task_weights)}
        metrics.update({k: weighted_mean(v, task_weights) for k, v in aux.items()})
        metrics["grad_norm"] = optax.tree.norm(meta_grad)
        new_state = state.replace(step=state.step + 1, meta_params=meta_params, opt_state=opt_state)
        return new_state, metrics

    if sample_tasks is None:
        return update

    def sampled_step(state: TrainState, *sampler_args, task_weights=None):
        keys = jax.random.split(jax.random.fold_in(state.rng, state.step), meta_batch)
        if task_weights is None:
            task_weights = jnp.ones((meta_batch,), jnp.float32)
        # Sharding the keys makes each device draw only its own tasks.
        keys, task_weights = shard_tasks(keys, task_weights)
        tasks = jax.vmap(lambda key: sample_tasks(key, *sampler_args))(keys)
        return update(state, tasks, task_weights)

    return sampled_step


def repeat_step(step: Callable, num_steps: int) -> Callable:
    """Fuses ``num_steps`` calls of a sampling train step into one (``lax.scan``).

    For small models the per-call overhead of dispatching a jitted step from
    Python dominates; running several meta-steps per compiled call removes it.
    The result is identical to calling ``step`` ``num_steps`` times.

    Args:
      step: ``step(state, *sampler_args) -> (state, metrics)`` (a step with
        ``sample_tasks``).
      num_steps: steps per call.

    Returns:
      ``multi_step(state, *sampler_args) -> (state, metrics)`` whose metrics have a
      leading ``[num_steps]`` axis.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")

    def multi_step(state, *sampler_args):
        return jax.lax.scan(lambda s, _: step(s, *sampler_args), state, length=num_steps)

    return multi_step


def jit_train_step(step: Callable, *, donate: bool = True) -> Callable:
    """``jax.jit`` of a train step with the state (argument 0) donated."""
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_eval_step(
    algorithm: MetaLearner, *, inner_steps: int | None = None, task_parallel: str | int = "vmap"
) -> Callable:
    """Returns ``eval_step(meta_params, tasks) -> metrics`` (pure, un-jitted).

    Each task adapts for ``inner_steps`` steps (default: the training value) and
    its query loss and metrics are recorded before adaptation and after every
    step. Every metric has shape ``[tasks, inner_steps + 1]``; index ``k`` is
    "after k steps".
    """
    steps = algorithm.inner_steps if inner_steps is None else inner_steps

    def per_task(meta_params, task: Task):
        def observe(params):
            loss, aux = algorithm.loss_fn(params, task.query)
            return {"query_loss": loss, **{f"query_{k}": v for k, v in aux.items()}}

        _, result = algorithm.adapt(meta_params, task.support, steps=steps, observe=observe)
        return result.observations

    def eval_step(meta_params, tasks: Task):
        return map_tasks(lambda task: per_task(meta_params, task), tasks, task_parallel)

    return eval_step
