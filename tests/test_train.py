"""The train step, eval step, run loop, checkpoints and exact resumption."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import signal
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax as mj

from conftest import init_tanh, regression_task, tanh_apply, task_batch

LOSS_FN = mj.make_loss(tanh_apply, mj.squared_error)


def _setup(meta_batch=4, **kwargs):
    learner = mj.maml(LOSS_FN, inner_lr=0.1, inner_steps=2)
    outer = optax.adam(1e-2)
    state = mj.init_train_state(learner, init_tanh(jax.random.key(0)), outer, jax.random.key(1))
    step = mj.make_train_step(
        learner, outer, sample_tasks=regression_task, meta_batch=meta_batch, **kwargs
    )
    return learner, outer, state, step


def test_task_parallel_modes_agree():
    learner, outer, state, _ = _setup()
    tasks = task_batch(jax.random.key(2), n_tasks=6)
    results = {}
    for mode in ("vmap", "map", 2, 4):
        step = jax.jit(mj.make_train_step(learner, outer, task_parallel=mode))
        new_state, metrics = step(state, tasks)
        results[mode] = (new_state.meta_params, new_state.opt_state, metrics)
    for mode in ("map", 2, 4):
        chex.assert_trees_all_close(results[mode], results["vmap"], rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match="task_parallel"):
        mj.make_train_step(learner, outer, task_parallel="pmap")


def test_task_parallel_auto_matches_vmap(monkeypatch):
    learner, outer, state, _ = _setup()
    tasks = task_batch(jax.random.key(5), n_tasks=5)
    assert inspect.signature(mj.make_train_step).parameters["task_parallel"].default == "auto"

    def run(mode):
        new_state, metrics = jax.jit(mj.make_train_step(learner, outer, task_parallel=mode))(
            state, tasks
        )
        return new_state.meta_params, new_state.opt_state, metrics

    per_task = lambda task: learner.loss(state.meta_params, task)
    vmap = run("vmap")
    # A tiny model: every task fits the CPU chunk budget, so "auto" is "vmap" everywhere.
    assert mj.train.resolve_task_parallel("auto", per_task, tasks) == "vmap"
    chex.assert_trees_all_close(run("auto"), vmap, rtol=2e-5, atol=1e-6)
    if jax.default_backend() != "cpu":
        return
    # A budget of two of its largest arrays: chunks of 2 tasks (then of 1: lax.map).
    one_task = jax.tree.map(lambda x: x[0], tasks)
    largest = mj.train._largest_array_bytes(jax.make_jaxpr(per_task)(one_task).jaxpr)
    for budget, expected in ((2 * largest, 2), (largest, "map")):
        monkeypatch.setattr(mj.train, "AUTO_CPU_CHUNK_BYTES", budget)
        assert mj.train.resolve_task_parallel("auto", per_task, tasks) == expected
        chex.assert_trees_all_close(run("auto"), vmap, rtol=2e-5, atol=1e-6)


def test_task_weights_zero_equals_dropping_the_task():
    learner, outer, state, _ = _setup()
    step = jax.jit(mj.make_train_step(learner, outer))
    tasks = task_batch(jax.random.key(3), n_tasks=4)
    first3 = jax.tree.map(lambda x: x[:3], tasks)
    strip = lambda out: (out[0].meta_params, out[1])
    weighted = strip(step(state, tasks, jnp.array([1.0, 1.0, 1.0, 0.0])))
    dropped = strip(step(state, first3))
    chex.assert_trees_all_close(weighted, dropped, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="task_weights"):
        step(state, tasks, jnp.ones(3))


def test_metrics_report_before_and_after_adaptation():
    _, _, state, step = _setup()
    _, metrics = jax.jit(step)(state)
    for key in ("meta_loss", "query_loss", "query_loss_pre", "support_loss", "grad_norm"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert metrics["query_loss"] < metrics["query_loss_pre"]


def test_repeat_step_equals_repeated_calls_and_replays_from_step_counter():
    _, _, state, step = _setup()
    jstep = jax.jit(step)
    s = state
    for _ in range(3):
        s, _ = jstep(s)
    fused, metrics = jax.jit(mj.repeat_step(step, 3))(state)
    chex.assert_trees_all_close(fused.meta_params, s.meta_params, rtol=1e-6)
    assert int(fused.step) == 3 and metrics["meta_loss"].shape == (3,)


def test_sampler_uses_fold_in_of_step():
    _, _, state, step = _setup()
    jstep = jax.jit(step)
    s1, m1 = jstep(state)
    # same params, different step counter -> different tasks -> different loss
    _, m2 = jstep(state.replace(step=jnp.asarray(7, jnp.int32)))
    assert float(m1["query_loss_pre"]) != float(m2["query_loss_pre"])


def test_eval_step_reports_every_inner_step():
    learner, _, state, _ = _setup()
    tasks = task_batch(jax.random.key(4), n_tasks=3)
    metrics = jax.jit(mj.make_eval_step(learner, inner_steps=4))(state.meta_params, tasks)
    assert metrics["query_loss"].shape == (3, 5)
    pre = jax.vmap(lambda t: LOSS_FN(state.meta_params, t.query)[0])(tasks)
    np.testing.assert_allclose(metrics["query_loss"][:, 0], pre, rtol=1e-6)
    adapted_loss = jax.vmap(lambda t: learner.loss(state.meta_params, t)[0])(tasks)
    np.testing.assert_allclose(metrics["query_loss"][:, 2], adapted_loss, rtol=1e-5)


def test_init_train_state_rejects_legacy_keys():
    learner = mj.maml(LOSS_FN)
    with pytest.raises(TypeError, match="typed PRNG key"):
        mj.init_train_state(
            learner, init_tanh(jax.random.key(0)), optax.sgd(0.1), jax.random.PRNGKey(0)
        )


def _run(workdir, num_steps, checkpoint_every=4, wrap_step=lambda f: f, log_every=2):
    _, _, state, step = _setup()
    return mj.runner.run_training(
        workdir=str(workdir),
        state=state,
        train_step=wrap_step(jax.jit(mj.repeat_step(step, 2))),
        num_steps=num_steps,
        steps_per_call=2,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        config={"name": "test"},
        progress=False,
    )


def test_resume_continues_bit_for_bit(tmp_path):
    straight = _run(tmp_path / "straight", 12)
    _run(tmp_path / "resumed", 8)  # "interrupted" after step 8 (checkpointed)
    resumed = _run(tmp_path / "resumed", 12)
    chex.assert_trees_all_equal(
        jax.device_get(resumed.meta_params), jax.device_get(straight.meta_params)
    )
    chex.assert_trees_all_equal(
        jax.device_get(resumed.opt_state), jax.device_get(straight.opt_state)
    )
    assert int(resumed.step) == 12
    # metrics files are identical apart from wall-clock timing
    read = lambda p: [
        {k: v for k, v in r.items() if k != "sec_per_step"}
        for r in mj.runner.read_jsonl(os.path.join(p, "metrics.jsonl"))
    ]
    assert read(tmp_path / "resumed") == read(tmp_path / "straight")
    assert (tmp_path / "resumed" / "learning_curve.png").stat().st_size > 5_000
    from metajax.plots import plot_runs

    both = {
        "straight": str(tmp_path / "straight"),
        "file": str(tmp_path / "resumed" / "metrics.jsonl"),
    }
    out = plot_runs(both, "meta_loss", str(tmp_path / "cmp.png"), smooth=2)
    assert os.path.getsize(out) > 5_000
    with pytest.raises(ValueError, match="no record .* has 'nope'"):
        plot_runs(both, "nope", str(tmp_path / "x.png"))
    with pytest.raises(FileNotFoundError, match="run 'gone'"):
        plot_runs({"gone": str(tmp_path / "missing.jsonl")}, path=str(tmp_path / "x.png"))


def test_sigterm_checkpoints_the_step_reached_and_the_resumed_run_is_exact(tmp_path):
    straight = _run(tmp_path / "straight", 12)
    before = signal.getsignal(signal.SIGTERM)

    def signal_on_third_call(step_fn):
        calls = []

        def wrapped(state):
            calls.append(1)
            if len(calls) == 3:  # steps 5-6; checkpoints are every 4
                os.kill(os.getpid(), signal.SIGTERM)
            return step_fn(state)

        return wrapped

    with pytest.raises(mj.runner.Interrupted, match="SIGTERM at step 6") as info:
        _run(tmp_path / "resumed", 12, wrap_step=signal_on_third_call)
    assert info.value.step == 6 and info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
    assert "6" in os.listdir(tmp_path / "resumed" / "checkpoints")
    resumed = _run(tmp_path / "resumed", 12)
    chex.assert_trees_all_equal(
        jax.device_get(resumed.meta_params), jax.device_get(straight.meta_params)
    )
    read = lambda p: [
        {k: v for k, v in r.items() if k != "sec_per_step"}
        for r in mj.runner.read_jsonl(os.path.join(p, "metrics.jsonl"))
    ]
    assert read(tmp_path / "resumed") == read(tmp_path / "straight")


def test_run_training_keeps_at_most_one_call_in_flight(tmp_path):
    # A step that the host can dispatch far faster than the device runs it: without a
    # bound, a stop signal would wait for every queued call (a real Omniglot run, 38 calls
    # past its last metrics read, took minutes to stop; a preemption notice is often 30 s).
    outputs, in_flight = [], []

    def wrap(step_fn):
        @jax.jit
        def slow_step(state):
            state, metrics = step_fn(state)
            work = jax.lax.fori_loop(  # ~50 ms of matmuls the metrics depend on
                0, 40, lambda i, x: jnp.tanh(x @ x) / 8, jnp.eye(384) + state.step
            )
            return state, jax.tree.map(lambda m: m + 0 * work[0, 0], metrics)

        def wrapped(state):
            in_flight.append(sum(not m.is_ready() for m in outputs))
            state, metrics = slow_step(state)
            outputs.append(metrics["meta_loss"])
            return state, metrics

        return wrapped

    # Metrics are read only every 16 steps (8 calls), so only the bound keeps calls in step.
    _run(tmp_path / "run", 16, checkpoint_every=16, wrap_step=wrap, log_every=16)
    assert len(in_flight) == 8 and max(in_flight) <= 1, in_flight


def test_sec_per_step_is_the_time_of_the_logged_steps_also_at_checkpoints(tmp_path):
    # Each call runs ~0.15 s of matmuls on the device (asynchronously: a host callback
    # would make the CPU run it at dispatch), so every record after the first (which
    # compiles) must give about the same time per step. Timing between flushes instead
    # gave a quarter at each checkpoint (4 calls per record; flushed right after the
    # previous record, it waited for one call) and then 1.75x for the next record.
    _, _, state, step = _setup()
    inner = jax.jit(mj.repeat_step(step, 2))

    @jax.jit
    def slow_step(state):
        state, metrics = inner(state)
        work = jax.lax.fori_loop(0, 40, lambda i, x: jnp.tanh(x @ x) / 8, jnp.eye(384) + state.step)
        return state, jax.tree.map(lambda m: m + 0 * work[0, 0], metrics)

    mj.runner.run_training(
        workdir=str(tmp_path),
        state=state,
        train_step=slow_step,
        num_steps=48,
        steps_per_call=2,
        log_every=8,
        checkpoint_every=16,
        config={"name": "test"},
        progress=False,
        plot=False,
    )
    records = mj.runner.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    assert [r["step"] for r in records] == list(range(8, 49, 8))
    per_step = np.array([r["sec_per_step"] for r in records[1:]])
    # the intervals with a checkpoint also hold its save
    ratio = per_step / np.median(per_step)
    assert np.all((ratio > 0.6) & (ratio < 1.6)), per_step


def test_cli_exits_with_128_plus_the_signal_after_a_graceful_stop(monkeypatch, capsys):
    from metajax import cli
    from metajax.recipes import sinusoid

    def interrupted(cfg):
        raise mj.runner.Interrupted(signal.SIGTERM, 40, cfg.workdir)

    monkeypatch.setattr(sinusoid, "train", interrupted)
    monkeypatch.setenv("METAJAX_CACHE_DIR", "0")
    assert cli.main(["train", "sinusoid", "--workdir", "somewhere"]) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at step 40; checkpoint saved in somewhere" in capsys.readouterr().err


def test_options_newer_than_a_run_take_their_legacy_value_on_resume(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Config:
        LEGACY_DEFAULTS: ClassVar[dict] = {"new_option": False}
        name: str = "test"
        new_option: bool | None = None

    _run(tmp_path, 4)  # a run whose config.json predates new_option
    resumed = mj.runner.with_legacy_defaults(Config(), str(tmp_path))
    assert resumed.new_option is False  # left at its default: the run's old behaviour
    explicit = mj.runner.with_legacy_defaults(Config(new_option=True), str(tmp_path))
    assert explicit.new_option is True
    assert mj.runner.with_legacy_defaults(Config(), str(tmp_path / "new")).new_option is None
    _, _, state, step = _setup()
    with pytest.raises(ValueError, match="different config"):
        mj.runner.run_training(
            workdir=str(tmp_path),
            state=state,
            train_step=jax.jit(mj.repeat_step(step, 2)),
            num_steps=8,
            steps_per_call=2,
            log_every=2,
            checkpoint_every=4,
            config={"name": "test", "new_option": True},
            progress=False,
            legacy_defaults=Config.LEGACY_DEFAULTS,
        )


def test_checkpoint_roundtrip_restores_typed_key_and_leaves_no_temp_dirs(tmp_path):
    _, _, state, _ = _setup()
    ckpt = mj.Checkpointer(tmp_path)
    ckpt.save(5, state)
    restored = ckpt.restore_latest(state)
    assert jnp.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(state.rng))
    chex.assert_trees_all_equal(restored.meta_params, state.meta_params)
    assert ckpt.all_steps() == [5]
    assert not [p for p in os.listdir(ckpt.directory) if "tmp" in p]
    ckpt.close()


def test_resume_refuses_a_different_config(tmp_path):
    _run(tmp_path, 4)
    _, _, state, step = _setup()
    with pytest.raises(ValueError, match="different config"):
        mj.runner.run_training(
            workdir=str(tmp_path),
            state=state,
            train_step=jax.jit(step),
            num_steps=6,
            config={"name": "other"},
            progress=False,
        )
    # An option the stored config predates (added to the library since) is not a change.
    state = mj.runner.run_training(
        workdir=str(tmp_path),
        state=state,
        train_step=jax.jit(step),
        num_steps=6,
        config={"name": "test", "new_option": 3},
        progress=False,
    )
    assert int(state.step) == 6


def test_nan_loss_stops_with_a_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    _, _, state, step = _setup()

    def poisoned(s):
        s, m = step(s)
        return s, {**m, "meta_loss": jnp.where(s.step > 4, jnp.nan, m["meta_loss"])}

    with pytest.raises(FloatingPointError, match="meta_loss is nan at step"):
        mj.runner.run_training(
            workdir=str(tmp_path),
            state=state,
            train_step=jax.jit(poisoned),
            num_steps=10,
            log_every=2,
            checkpoint_every=2,
            progress=False,
        )
    steps = mj.Checkpointer(tmp_path).all_steps()
    assert max(steps) <= 4, steps
    with open(tmp_path / "metrics.jsonl") as f:
        assert all(np.isfinite(json.loads(line)["meta_loss"]) for line in f)


# score logged after each step (index = the step reached), for keep_best
_SCORES = jnp.array([0.0, 0.0, 1.0, 0.0, 3.0, 0.0, 2.0, 0.0, 5.0, 0.0, 4.0, 0.0, 0.5])


def _run_scored(workdir, num_steps, keep_best):
    _, _, state, step = _setup()

    @jax.jit
    def scored(s):
        s, m = step(s)
        return s, {**m, "score": _SCORES[s.step]}

    return mj.runner.run_training(
        workdir=str(workdir),
        state=state,
        train_step=scored,
        num_steps=num_steps,
        log_every=2,
        checkpoint_every=2,
        config={"name": "test"},
        progress=False,
        plot=False,
        keep_best=keep_best,
    )


def _kept(workdir):
    best = os.path.join(workdir, "best")
    with open(os.path.join(best, "best.json")) as f:
        info = json.load(f)
    return mj.Checkpointer(best).all_steps(), info


def test_keep_best_keeps_the_checkpoint_with_the_best_metric(tmp_path):
    final = _run_scored(tmp_path / "max", 12, "score")
    steps, info = _kept(tmp_path / "max")
    assert steps == [8] and info == {"metric": "score", "value": 5.0, "step": 8}
    # the kept state is the run's own state at step 8, and best/ is a run directory
    main, best = mj.Checkpointer(tmp_path / "max"), mj.Checkpointer(tmp_path / "max" / "best")
    chex.assert_trees_all_equal(
        jax.device_get(best.restore(8, final)), jax.device_get(main.restore(8, final))
    )
    with open(tmp_path / "max" / "best" / "config.json") as f:
        assert json.load(f) == {"name": "test"}
    _run_scored(tmp_path / "min", 12, "-score")
    assert _kept(tmp_path / "min")[0] == [12]


def test_keep_best_survives_resumption(tmp_path):
    _run_scored(tmp_path / "a", 8, "score")  # best so far: step 8 (5.0)
    _run_scored(tmp_path / "a", 12, "score")  # 4.0 and 0.5 later must not replace it
    assert _kept(tmp_path / "a")[0] == [8]
    _run_scored(tmp_path / "b", 6, "score")  # best so far: step 4 (3.0)
    _run_scored(tmp_path / "b", 12, "score")
    assert _kept(tmp_path / "b")[1]["step"] == 8


def test_keep_best_names_a_missing_metric(tmp_path):
    with pytest.raises(ValueError, match="keep_best='accuracy': no metric 'accuracy' at step 2"):
        _run_scored(tmp_path, 4, "accuracy")
