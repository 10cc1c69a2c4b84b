"""The host-side training loop: progress, metrics files, evaluation, checkpoints.

Everything numerical happens in the jitted step; this loop only dispatches it,
pulls metrics back every ``log_every`` steps (never every step: that would block
the host on the device), writes them as JSON lines, evaluates, checkpoints and
resumes. Rerunning the same command in the same work directory continues from the
newest checkpoint and produces exactly the run an uninterrupted one would.

SIGTERM (a scheduler's or a preemptible VM's notice, ``timeout -s TERM``) and the
first SIGINT (Ctrl-C) stop the run gracefully: after the step in flight, pending
metrics are written, a checkpoint is saved at that step, and :class:`Interrupted` is
raised (the CLI exits with ``128 + signal``). A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from metajax import parallel
from metajax.checkpoint import Checkpointer

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
BEST_DIR = "best"  # <workdir>/best: a run directory holding the best checkpoint (keep_best)
BEST_FILE = "best.json"
# Config keys that may change between a run and its resumption (they do not change
# the numbers the run produces).
OPERATIONAL_KEYS = frozenset(
    {
        "steps",
        "workdir",
        "progress",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "steps_per_call",
        "keep_best",  # which checkpoint is also kept, not what is trained
        "data_dir",
        "val_episodes",  # changes what validation reports, not the training trajectory
        # Numerically equivalent formulations (same function, different programs).
        "conv",
        "task_parallel",
        "devices",
    }
)


def _to_python(tree: Any) -> Any:
    def convert(x):
        x = np.asarray(x)
        return x.item() if x.ndim == 0 else x.tolist()

    return jax.tree.map(convert, jax.device_get(tree))


def _truncate_jsonl(path: str, max_step: int) -> None:
    """Drops records past ``max_step`` (written after the checkpoint we resume from)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= max_step]
    if len(kept) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)


def _append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _commit_to_devices(tree: Any) -> Any:
    """Commits each single-device array to its device (sharded ones already are)."""

    def commit(x):
        if isinstance(x, jax.Array) and len(x.sharding.device_set) == 1:
            return jax.device_put(x, x.sharding)
        return x

    return jax.tree.map(commit, tree)


class Interrupted(Exception):
    """A run stopped by a signal after checkpointing; the same command resumes it."""

    def __init__(self, signum: int, step: int, workdir: str):
        self.signum, self.step, self.workdir = signum, step, workdir
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at step {step}; checkpoint saved in {workdir}. "
            "Run the same command again to resume."
        )


class _StopOnSignal:
    """Records SIGTERM/SIGINT while installed (main thread only); a second SIGINT raises."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self, step: int, every: int) -> int | None:
        """The signal to stop on, agreed by every process (checked each ``every`` steps there)."""
        if jax.process_count() == 1:
            return self.signum
        if step % every:
            return None
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
        return int(np.max(flags)) or None


def is_main_process() -> bool:
    """Only process 0 writes logs and metrics files in a multi-host run."""
    return jax.process_index() == 0


def jit_on_devices(step: Callable, devices: int, meta_batch: int, *placed: Any) -> tuple:
    """A recipe's sampling train step, jitted for ``devices`` devices (0: all of them).

    With more than one device: a mesh over them (:func:`metajax.parallel.make_mesh`),
    the step sharded over its task axis (:func:`metajax.parallel.shard_train_step`:
    each device draws and adapts its own tasks) and ``placed`` (the state and any
    sampler arguments, e.g. an image split) replicated. A meta-batch that does not
    divide the device count is padded with weightless tasks; process 0 says so. With
    one device: ``jax.jit`` with the state donated, ``placed`` unchanged.

    Returns:
      ``(train_step, *placed)``.
    """
    num_devices = jax.device_count() if devices == 0 else devices
    if num_devices <= 1:
        return (jax.jit(step, donate_argnums=0), *placed)
    mesh = parallel.make_mesh(num_devices)
    padded = parallel.padded_size(meta_batch, num_devices)
    if padded != meta_batch and is_main_process():
        print(
            f"meta_batch {meta_batch} on {num_devices} devices: padded to {padded} "
            f"tasks, {padded - meta_batch} of them with weight 0.",
            flush=True,
        )
    return (parallel.shard_train_step(step, mesh), *parallel.replicate(placed, mesh))


class _BestKeeper:
    """Keeps the checkpoint with the best value of one metric in ``<workdir>/best``.

    ``<workdir>/best`` is itself a run directory (``config.json`` and
    ``checkpoints/<step>``, one checkpoint), so anything that reads a run reads the
    best one (``metajax eval ... --workdirs <workdir>/best``); ``best.json`` there says
    which metric, value and step it holds. ``metric`` names a training metric or,
    where none has that name, an ``eval_fn`` result of the same step; a leading ``-``
    keeps the smallest value instead of the largest.
    """

    def __init__(self, workdir: str, metric: str, main: bool):
        self.name = metric.removeprefix("-")
        self.sign = -1.0 if metric.startswith("-") else 1.0
        self.metric, self.main = metric, main
        self.directory = os.path.join(workdir, BEST_DIR)
        self.ckpt = Checkpointer(self.directory, max_to_keep=1)
        self.best = -math.inf  # sign * value of the kept checkpoint
        kept = self.ckpt.latest_step()
        path = os.path.join(self.directory, BEST_FILE)
        if kept is not None and os.path.exists(path):
            with open(path) as f:
                info = json.load(f)
            # A crash between the checkpoint and this file leaves them disagreeing:
            # the kept checkpoint is then replaced at the next checkpoint step.
            if info.get("step") == kept and info.get("metric") == metric:
                self.best = self.sign * float(info["value"])

    def offer(self, step: int, state: Any, metrics: dict, evaluated: dict | None, config_path: str):
        """Saves ``state`` as the best checkpoint if its metric beats the kept one's."""
        source = metrics if self.name in metrics else (evaluated or {})
        if self.name not in source:
            raise ValueError(
                f"keep_best={self.metric!r}: no metric {self.name!r} at step {step}. Training "
                f"metrics: {sorted(metrics)}; evaluation metrics this step: "
                f"{sorted(evaluated or {})}."
            )
        value = float(np.asarray(source[self.name]).reshape(-1)[-1])
        if not math.isfinite(value) or self.sign * value <= self.best:
            return
        self.best = self.sign * value
        if self.main and os.path.exists(config_path):
            tmp = os.path.join(self.directory, "config.json.tmp")
            shutil.copyfile(config_path, tmp)
            os.replace(tmp, os.path.join(self.directory, "config.json"))
        self.ckpt.save(step, state)
        if self.main:
            path = os.path.join(self.directory, BEST_FILE)
            with open(path + ".tmp", "w") as f:
                json.dump({"metric": self.metric, "value": value, "step": step}, f)
            os.replace(path + ".tmp", path)

    def close(self):
        self.ckpt.close()


def run_training(
    *,
    workdir: str,
    state: Any,
    train_step: Callable[[Any], tuple[Any, dict]],
    num_steps: int,
    steps_per_call: int = 1,
    log_every: int = 100,
    eval_every: int = 0,
    eval_fn: Callable[[Any], dict] | None = None,
    checkpoint_every: int = 1000,
    config: dict | None = None,
    progress: bool = True,
    plot: bool = True,
    description: str = "meta-train",
    legacy_defaults: dict | None = None,
    keep_best: str | None = None,
) -> Any:
    """Runs (or resumes) meta-training until ``state.step == num_steps``.

    Args:
      workdir: where ``config.json``, ``metrics.jsonl``, ``eval.jsonl`` and
        ``checkpoints/`` live.
      state: the initial train state (used as the template when resuming).
      train_step: jitted ``state -> (state, metrics)``; if it runs several steps per
        call (``steps_per_call > 1``), metrics carry a leading ``[steps]`` axis.
      num_steps: total meta-steps of the run.
      steps_per_call: meta-steps done by one call of ``train_step``.
      log_every: write metrics every this many steps (a multiple of ``steps_per_call``).
      eval_every: call ``eval_fn(state)`` every this many steps (0: never).
      eval_fn: returns a dict of scalars logged to ``eval.jsonl``.
      checkpoint_every: checkpoint period in steps; a final checkpoint is always written.
      config: saved to ``config.json`` (and checked on resume).
      progress: show a tqdm progress bar.
      plot: redraw ``learning_curve.png`` at every checkpoint.
      legacy_defaults: for config keys missing from an existing run's
        ``config.json``, the value that run had (see :func:`with_legacy_defaults`);
        other missing keys are taken to have had the value now given.
      keep_best: a metric name (a leading ``-`` to minimise it): at every checkpoint
        step, the state is also saved in ``<workdir>/best`` if that step's value beats
        the kept one (training metrics of the step's call, else its ``eval_fn``
        result). ``<workdir>/best`` is a run directory of its own (the paper
        protocol of picking the iterate with the best training return, say).

    Returns:
      The final train state.

    Raises:
      FloatingPointError: when the meta-loss becomes NaN or infinite; the last
        good checkpoint is kept.
      Interrupted: after SIGTERM or SIGINT, once the state at the step reached is
        checkpointed (in multi-process runs the processes agree on stopping every
        ``log_every`` steps).
    """
    for name, every in (
        ("log_every", log_every),
        ("checkpoint_every", checkpoint_every),
        ("eval_every", eval_every),
        ("num_steps", num_steps),
    ):
        if every % steps_per_call:
            raise ValueError(
                f"{name}={every} must be a multiple of steps_per_call={steps_per_call}."
            )
    os.makedirs(workdir, exist_ok=True)
    main = is_main_process()
    config_path = os.path.join(workdir, "config.json")
    if config is not None and main:
        if os.path.exists(config_path):
            with open(config_path) as f:
                old = json.load(f)
            new = json.loads(json.dumps(config))  # tuples -> lists, as stored
            # Options newer than the run's config.json: the run had their legacy
            # value if one is declared; otherwise they are not compared.
            legacy = json.loads(json.dumps(legacy_defaults or {}))
            old = {**{k: v for k, v in legacy.items() if k not in old}, **old}
            changed = {
                k: (old[k], v)
                for k, v in new.items()
                if k not in OPERATIONAL_KEYS and k in old and old[k] != v
            }
            if changed:
                raise ValueError(
                    f"{workdir} holds a run with a different config ({changed}); resuming it "
                    "would not continue the same run. Use a new --workdir."
                )
        with open(config_path + ".tmp", "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        os.replace(config_path + ".tmp", config_path)

    ckpt = Checkpointer(workdir)
    keeper = _BestKeeper(workdir, keep_best, main) if keep_best else None
    # A restored state is committed to its device and a fresh one is not, and jit
    # compiles the two as different programs; committing both lets a resumed run
    # reuse the first run's compiled step (from the persistent compilation cache).
    state = _commit_to_devices(ckpt.restore_latest(state))
    start = int(jax.device_get(state.step))
    metrics_path = os.path.join(workdir, METRICS_FILE)
    eval_path = os.path.join(workdir, EVAL_FILE)
    if main:
        _truncate_jsonl(metrics_path, start)
        _truncate_jsonl(eval_path, start)
        if start:
            print(f"resumed from checkpoint at step {start} in {workdir}", flush=True)
    if start % steps_per_call:
        raise ValueError(f"checkpoint step {start} is not a multiple of steps_per_call.")

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=num_steps, initial=start, desc=description, dynamic_ncols=True, mininterval=1.0
        )
    pending = None  # metrics of the last logged call, read one call later (no host stall)
    t_last, step_last = time.perf_counter(), start

    # When each logged call was seen to finish (at the next call's in-flight wait): the
    # time per step is measured between those moments, not between flushes, which lag
    # one log period behind and come twice in a row at a checkpoint.
    finished: dict[int, float] = {}

    def flush(pending_metrics, at_step):
        nonlocal t_last, step_last
        metrics = _to_python(pending_metrics)  # blocks until that call has finished
        if steps_per_call > 1:
            metrics = {k: v[-1] for k, v in metrics.items()}
        loss = metrics.get("meta_loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(
                f"meta_loss is {loss} at step {at_step}; stopping. The last good checkpoint "
                f"is in {ckpt.directory}. Common causes: a learning rate too high, labels "
                "out of range (NaN per-example loss), or NaN/inf in the input data."
            )
        done = finished.pop(at_step, None)
        if done is None:  # flushed before the next call's wait: it has just finished
            done = time.perf_counter()
        record = {
            "step": at_step,
            **metrics,
            "sec_per_step": (done - t_last) / max(at_step - step_last, 1),
        }
        t_last, step_last = done, at_step
        if main:
            _append_jsonl(metrics_path, record)
            if bar is not None:
                bar.set_postfix(
                    {
                        k: f"{v:.4g}"
                        for k, v in metrics.items()
                        if k in ("meta_loss", "query_loss", "query_accuracy")
                    }
                )

    step = start
    stop = _StopOnSignal()
    stop.install()
    in_flight = None  # the previous call's metrics
    try:
        while step < num_steps:
            state, metrics = train_step(state)
            # JAX dispatches asynchronously, so without a bound the host would run
            # log_every calls ahead of the device: a stop signal would then wait for all
            # of them, and the progress bar and sec_per_step would time the host. Waiting
            # for the previous call while this one is queued keeps the device busy.
            if in_flight is not None:
                jax.block_until_ready(in_flight)
                if pending is not None and pending[1] == step:
                    finished[step] = time.perf_counter()
            in_flight = metrics
            step += steps_per_call
            if bar is not None:
                bar.update(steps_per_call)
            if step % log_every == 0 or step == num_steps:
                if pending is not None:
                    flush(*pending)
                pending = (metrics, step)
            signum = stop.requested(step, log_every)
            if signum is not None and step < num_steps:
                if pending is not None:
                    flush(*pending)  # as at a checkpoint: the records up to this step
                    pending = None
                ckpt.save(step, state)
                raise Interrupted(signum, step, workdir)
            result = None
            if eval_fn is not None and eval_every and step % eval_every == 0:
                result = _to_python(eval_fn(state))
                if main:
                    _append_jsonl(eval_path, {"step": step, **result})
                    print(f"step {step}: eval {result}", flush=True)
            if step % checkpoint_every == 0 or step == num_steps:
                if pending is not None:
                    flush(*pending)  # never checkpoint a state whose loss is NaN
                    pending = None
                ckpt.save(step, state)
                if keeper is not None:  # (a crash right here loses this one candidate)
                    keeper.offer(step, state, _to_python(metrics), result, config_path)
                if main and plot:
                    from metajax.plots import plot_learning_curve  # plots imports runner

                    plot_learning_curve(workdir)
        if pending is not None:
            flush(*pending)
    finally:
        stop.uninstall()
        if bar is not None:
            bar.close()
        ckpt.close()
        if keeper is not None:
            keeper.close()
    return state


def with_legacy_defaults(config: Any, workdir: str) -> Any:
    """``config`` as it applies to the run already in ``workdir``, if there is one.

    A config dataclass may declare ``LEGACY_DEFAULTS``: for options added after a run
    started, the value that reproduces that run's behaviour. Where the run's
    ``config.json`` lacks such a key and ``config`` leaves the option at its field
    default, the legacy value is used, so resuming rebuilds the same model. (An
    explicitly different value is then refused by :func:`run_training`.)
    """
    legacy = getattr(type(config), "LEGACY_DEFAULTS", {})
    path = os.path.join(workdir, "config.json")
    if not legacy or not os.path.exists(path):
        return config
    with open(path) as f:
        old = json.load(f)
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    changes = {
        k: v
        for k, v in legacy.items()
        if k not in old and k in defaults and getattr(config, k) == defaults[k]
    }
    return dataclasses.replace(config, **changes) if changes else config


def restore_run(workdir: str, config_cls: type, make_template: Callable[[Any], Any]):
    """Reads a run's ``config.json`` into ``config_cls`` and restores its newest checkpoint.

    Args:
      workdir: the run directory.
      config_cls: the run's config dataclass; unknown keys in the file are ignored,
        JSON lists become tuples where the field's default is a tuple, and keys
        missing from the file take the class's ``LEGACY_DEFAULTS`` (if any), else
        the field defaults.
      make_template: ``config -> state`` building a state of the right structure.

    Returns:
      ``(config, state)``.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config.json in {workdir}: is it a metajax run directory?")
    with open(path) as f:
        raw = json.load(f)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    kwargs = {}
    for key, value in raw.items():
        if key in fields:
            is_tuple = isinstance(fields[key].default, tuple)
            kwargs[key] = tuple(value) if is_tuple and isinstance(value, list) else value
    for key, value in getattr(config_cls, "LEGACY_DEFAULTS", {}).items():
        if key in fields and key not in raw:
            kwargs[key] = value
    config = config_cls(**kwargs)
    ckpt = Checkpointer(workdir)
    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first.")
        state = ckpt.restore_latest(make_template(config))
    finally:
        ckpt.close()
    return config, state


def read_jsonl(path: str) -> list[dict]:
    """Reads a metrics/eval JSON-lines file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
