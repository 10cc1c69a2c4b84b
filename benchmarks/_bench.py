"""Shared pieces of the metajax benchmarks: workloads, timing, FLOPs, machine facts.

Not a public module: the scripts in ``benchmarks/`` put this directory on
``sys.path`` and import it.

* :class:`StepConfig` and :func:`make_step` build a meta-training step with the
  tasks drawn on the device inside the step, on two models: the MAML sinusoid MLP
  (1-40-40-1, K support and K query points) and conv4 on Omniglot-shaped random
  images (N-way 1-shot, ``queries`` per class).
* :func:`time_interleaved` times several compiled steps in rounds, one after the
  other inside each round, so that a change in the machine's load hits them all.
* :func:`model_flops` counts the FLOPs of one meta-step with XLA's cost analysis of
  the same step traced with every ``lax.scan`` unrolled: XLA counts the body of a
  while loop once, whatever its trip count, so the compiled program's own figure
  leaves out all inner steps but one (and, under ``lax.map``, all tasks but one).
* :func:`matmul_peak_gflops` measures the machine's float32 matmul rate in the
  calling process.
* :func:`add_output_args`, :func:`append_jsonl` and :func:`write_table`: the
  ``--no-tune-allocator/--out/--md`` options every script takes and what they write.
* :func:`random_omniglot_tasks`: a fixed batch of Omniglot-shaped tasks of random
  images, for the scripts that time a step on explicit tasks;
  :func:`omniglot_workload` builds a W1/W2 workload's tasks, learner and state.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence

import _host  # this directory is on sys.path wherever _bench is imported
import jax
import jax.numpy as jnp
import numpy as np
import optax

import metajax as mj
from metajax import train as mj_train
from metajax.data.sinusoid import SinusoidDistribution
from metajax.models import conv4
from metajax.models.mlp import MLP


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """One meta-training step to measure.

    Attributes:
      model: ``"mlp"`` (sinusoid regression) or ``"conv4"`` (Omniglot-shaped
        classification on random images).
      meta_batch: tasks per meta-step.
      inner_steps: inner SGD steps.
      first_order: first-order MAML.
      remat: rematerialise each inner step in the backward pass.
      task_parallel: ``"vmap"``, ``"map"`` or a chunk size (``make_train_step``).
      steps_per_call: meta-steps fused per compiled call (``mj.repeat_step``).
      channels: conv4 filters.
      ways: conv4 classes per task.
      queries: conv4 query examples per class.
      points: sinusoid support (and query) points per task.
      conv: conv4's convolution formulation (``models.conv4``; ``"auto"``: im2col on
        CPU and GPU, xla on TPU).
    """

    model: str = "mlp"
    meta_batch: int = 25
    inner_steps: int = 1
    first_order: bool = False
    remat: bool = False
    task_parallel: str | int = "vmap"
    steps_per_call: int = 1
    channels: int = 64
    ways: int = 5
    queries: int = 1
    points: int = 10
    conv: str = "auto"

    def label(self) -> str:
        order = "fo" if self.first_order else "so"
        model = (
            self.model
            if self.model == "mlp"
            else f"conv4-{self.channels}-{conv4.resolve_conv(self.conv)}"
        )
        return (
            f"{model} mb={self.meta_batch} k={self.inner_steps} {order} "
            f"tp={self.task_parallel}{' remat' if self.remat else ''} spc={self.steps_per_call}"
        )


def _learner_and_sampler(cfg: StepConfig):
    if cfg.model == "mlp":
        model = MLP(hidden=(40, 40), outputs=1)
        loss_fn = mj.make_loss(model.apply, mj.squared_error)
        params = model.init(jax.random.key(0), jnp.zeros((1, 1)))
        dist = SinusoidDistribution()
        inner_lr = 0.01

        def sample(key):
            return dist.sample_task(key, shots=cfg.points, queries=cfg.points)

    elif cfg.model == "conv4":
        from metajax.recipes.omniglot import classifier_loss

        loss_fn = classifier_loss(cfg.conv)
        params = conv4.init(jax.random.key(0), ways=cfg.ways, channels=cfg.channels)
        inner_lr = 0.4

        def batch(key, per_class):
            n = cfg.ways * per_class
            images = jax.random.normal(key, (n, 28, 28, 1), jnp.float32)
            labels = jnp.tile(jnp.arange(cfg.ways, dtype=jnp.int32), per_class)
            return mj.Batch(images, labels, jnp.ones((n,), jnp.float32))

        def sample(key):
            support_key, query_key = jax.random.split(key)
            return mj.Task(batch(support_key, 1), batch(query_key, cfg.queries))

    else:
        raise ValueError(f"model must be 'mlp' or 'conv4', got {cfg.model!r}")
    learner = mj.maml(
        loss_fn,
        inner_lr=inner_lr,
        inner_steps=cfg.inner_steps,
        first_order=cfg.first_order,
        remat=cfg.remat,
    )
    return learner, params, sample


def make_step(cfg: StepConfig) -> tuple[Callable, mj.TrainState]:
    """The un-jitted step ``step(state) -> (state, metrics)`` and its initial state."""
    learner, params, sample = _learner_and_sampler(cfg)
    outer = optax.adam(1e-3)
    state = mj.init_train_state(learner, params, outer, jax.random.key(1))
    step = mj.make_train_step(
        learner,
        outer,
        sample_tasks=sample,
        meta_batch=cfg.meta_batch,
        task_parallel=cfg.task_parallel,
        pre_adaptation_metrics=False,
    )
    if cfg.steps_per_call > 1:
        step = mj.repeat_step(step, cfg.steps_per_call)
    return step, state


@dataclasses.dataclass
class Compiled:
    """A compiled step with its state, compile time and memory figures."""

    cfg: StepConfig
    fn: Callable
    state: mj.TrainState
    compile_s: float
    memory: dict
    xla_flops: float
    resolved_task_parallel: str


@contextlib.contextmanager
def _record_task_parallel(record: list):
    """Records what ``metajax.train.resolve_task_parallel`` returns inside the block."""
    original = mj_train.resolve_task_parallel

    def spy(mode, fn, tasks):
        resolved = original(mode, fn, tasks)
        record.append(resolved)
        return resolved

    mj_train.resolve_task_parallel = spy
    try:
        yield
    finally:
        mj_train.resolve_task_parallel = original


def compile_step(cfg: StepConfig) -> Compiled:
    """Builds, jits (state donated) and compiles the step; records compile time and memory.

    Compile time includes tracing and lowering (``jit(...).lower(...).compile()``).
    """
    step, state = make_step(cfg)
    jitted = jax.jit(step, donate_argnums=0)
    resolved: list = []
    t0 = time.perf_counter()
    with _record_task_parallel(resolved):
        compiled = jitted.lower(state).compile()
    compile_s = time.perf_counter() - t0
    return Compiled(
        cfg,
        compiled,
        state,
        compile_s,
        memory_mb(compiled),
        xla_flops(compiled),
        str(resolved[-1]) if resolved else str(cfg.task_parallel),
    )


def memory_mb(compiled) -> dict:
    """The compiled program's memory analysis, in MB (``exec`` = temp + argument + output)."""
    mem = compiled.memory_analysis()
    if mem is None:
        return {}
    arg, out, tmp = mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes
    return {
        "argument_mb": arg / 2**20,
        "output_mb": out / 2**20,
        "temp_mb": tmp / 2**20,
        "alias_mb": mem.alias_size_in_bytes / 2**20,
        "exec_mb": (arg + out + tmp) / 2**20,
    }


def xla_flops(compiled_or_lowered) -> float:
    cost = compiled_or_lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", float("nan")))


@contextlib.contextmanager
def _unrolled_scans():
    """Within the block, every ``jax.lax.scan`` called through ``jax.lax`` is unrolled."""
    original = jax.lax.scan

    def scan(*args, **kwargs):
        kwargs["unroll"] = True
        return original(*args, **kwargs)

    jax.lax.scan = scan
    try:
        yield
    finally:
        jax.lax.scan = original


def model_flops(cfg: StepConfig) -> float:
    """FLOPs of one meta-step: XLA's cost analysis of the step with its loops unrolled.

    Counted on the ``vmap`` formulation, one step per call and without remat, so the
    figure is the work the step has to do, whatever the mode (remat's recomputation
    is not counted as useful work). Uses the lowered (unoptimised) program: no
    compilation, so it is cheap even for long unrolls.
    """
    counting = dataclasses.replace(cfg, task_parallel="vmap", steps_per_call=1, remat=False)
    step, state = make_step(counting)
    with _unrolled_scans():
        lowered = jax.jit(step).lower(state)
    return xla_flops(lowered)


def time_interleaved(
    compiled: Sequence[Compiled], *, rounds: int, calls_per_round: int, warmup: int = 2
) -> list[list[float]]:
    """Seconds per call of each compiled step, timed in alternating rounds.

    Each call is ended by ``jax.block_until_ready`` on the whole output. Returns one
    list of call times per step.
    """
    for c in compiled:
        for _ in range(warmup):
            c.state, metrics = c.fn(c.state)
        jax.block_until_ready((c.state, metrics))
    times: list[list[float]] = [[] for _ in compiled]
    for _ in range(rounds):
        for i, c in enumerate(compiled):
            for _ in range(calls_per_round):
                t0 = time.perf_counter()
                c.state, metrics = c.fn(c.state)
                jax.block_until_ready((c.state, metrics))
                times[i].append(time.perf_counter() - t0)
    return times


def summarize(times: Sequence[float]) -> dict:
    q25, med, q75 = np.percentile(times, [25, 50, 75])
    return {
        "sec_per_call_median": float(med),
        "sec_per_call_iqr": float(q75 - q25),
        "calls": len(times),
    }


def matmul_peak_gflops(n: int | None = None, repeats: int = 10) -> dict:
    """float32 ``[n, n] @ [n, n]`` rate of a jitted ``jnp.dot`` in this process (GFLOP/s).

    At JAX's default precision, as the benchmarked steps run (on a GPU that may mean
    TF32 tensor cores). ``n`` defaults to 2048 on the CPU and 8192 on accelerators,
    where a smaller product would time the launch rather than the arithmetic.
    """
    if n is None:
        n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(dot(a, b))
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"median": float(np.median(rates)), "best": float(np.max(rates)), "n": n}


def source_state() -> dict:
    """The commit measured, and which library files differed from it (uncommitted work)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_library_files": git("diff", "--name-only", "HEAD", "--", "metajax").split(),
    }


def setup_host(tune_allocator: bool = True) -> bool:
    """Applies :func:`metajax.tune_host_allocator` (as the CLI does) unless told not to.

    glibc otherwise returns every freed buffer above 32 MB to the kernel, so a step with
    large temporaries page-faults them afresh on every call (see :mod:`metajax.runtime`).
    Returns whether the tuning is in effect.
    """
    return mj.tune_host_allocator() if tune_allocator else False


def machine() -> dict:
    """Facts recorded with every figure."""
    return {
        **source_state(),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        **_host.cpu_facts(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def add_output_args(parser: argparse.ArgumentParser, *, md: bool = True) -> None:
    """``--no-tune-allocator``, ``--out`` (JSON lines) and, with ``md``, ``--md``."""
    parser.add_argument(
        "--no-tune-allocator",
        action="store_true",
        help="leave glibc's malloc as it is (metajax.tune_host_allocator is applied by default)",
    )
    parser.add_argument("--out", default=None, help="append JSON lines here")
    if md:
        parser.add_argument("--md", default=None, help="write the markdown table here")


def append_jsonl(path: str | None, records) -> None:
    """Appends one JSON line per record to ``path`` (nothing if ``path`` is None)."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def write_table(table: str, path: str | None) -> None:
    """Prints a markdown table and writes it to ``path`` if given."""
    print(table)
    if path:
        with open(path, "w") as f:
            f.write(table)


def random_omniglot_tasks(
    rng: np.random.Generator,
    *,
    tasks: int,
    ways: int,
    shots: int,
    queries: int,
    normal: bool = False,
) -> mj.Task:
    """``tasks`` N-way tasks of random 28x28 images (uniform, or standard normal)."""

    def batch(per_class):
        n = ways * per_class
        shape = (tasks, n, 28, 28, 1)
        images = rng.standard_normal(shape) if normal else rng.random(shape)
        return mj.Batch(
            jnp.asarray(images, jnp.float32),
            jnp.asarray(np.tile(np.tile(np.arange(ways), per_class), (tasks, 1)), jnp.int32),
            jnp.ones((tasks, n), jnp.float32),
        )

    return mj.Task(batch(shots), batch(queries))


def omniglot_workload(w: dict, conv: str):
    """A W1/W2 workload (``torch_peers.get_workload``) as ``(tasks, learner, outer, state)``.

    Fixed random tasks (seed 0), second- or first-order MAML on conv4 with the
    workload's inner and outer settings, and the initial train state.
    """
    from metajax.recipes.omniglot import classifier_loss

    tasks = random_omniglot_tasks(
        np.random.default_rng(0),
        tasks=w["meta_batch"],
        ways=w["ways"],
        shots=w["shots"],
        queries=w["queries"],
    )
    learner = mj.maml(
        classifier_loss(conv),
        inner_lr=w["inner_lr"],
        inner_steps=w["inner_steps"],
        first_order=w["first_order"],
    )
    outer = optax.adam(w["outer_lr"])
    state = mj.init_train_state(
        learner, conv4.init(jax.random.key(0), ways=w["ways"]), outer, jax.random.key(1)
    )
    return tasks, learner, outer, state


def sharded_task_batch_step(step: Callable, state, tasks, *, donate: bool = True):
    """``step(state, tasks)`` sharded over every device, as the CLI's recipes run it.

    The mesh of :func:`metajax.parallel.make_mesh`, the task axis sharded, the state
    replicated (:func:`metajax.parallel.shard_train_step`).

    Returns:
      ``(fn, state, hlo)``: ``fn(state, tasks) -> (state, metrics)``, the replicated
      state, and a function returning the compiled program's HLO text (it compiles the
      same program once more, through ``jax.jit`` under the mesh).
    """
    from metajax import parallel

    mesh = parallel.make_mesh()
    fn = parallel.shard_train_step(step, mesh, task_batch=True, donate=donate)
    state = parallel.replicate(state, mesh)
    # Shapes and shardings only: fn donates the state's buffers.
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )

    def hlo() -> str:
        placed, weights = parallel.shard_batch(tasks, mesh)
        with jax.set_mesh(mesh):
            jitted = jax.jit(lambda s, t, w: step(s, t, task_weights=w))
            return jitted.lower(abstract, placed, weights).compile().as_text()

    return fn, state, hlo
