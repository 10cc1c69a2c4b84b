"""Sharding over devices and processes (metajax.parallel).

The multi-device checks need a JAX that starts with several devices, so they run the
scripts in ``tests/multidevice/`` in fresh processes: one process with 8 simulated CPU
devices, and two processes on localhost joined by ``jax.distributed`` (2 CPU devices
each, gloo collectives). Each compares the sharded step with the single-device step.
The tests in this process use its one device.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from metajax import parallel

from conftest import FAST_COMPILE

HELPERS = Path(__file__).resolve().parent / "multidevice"
ROOT = HELPERS.parents[1]
TIMEOUT_S = 300
EIGHT_DEVICE_CHECKS = [
    "check_explicit_batch_equals_single_device_and_is_padded",
    "check_explicit_batch_is_sharded",
    "check_loop_modes_equal_single_device_and_loop_over_own_tasks",
    "check_sampler_step_equals_single_device_and_is_padded_and_sharded",
    "check_cli_runs_on_all_devices",
    "check_trust_region_step_equals_single_device_and_is_padded",
    "check_nav2d_cli_runs_on_all_devices",
]


def _env(num_devices: int) -> dict:
    env = dict(os.environ)
    # Compile faster (conftest's flags): these tests compare programs with each other.
    flags = " ".join(FAST_COMPILE)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices} {flags}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def eight_device_results():
    """Runs every check of ``sharded_step.py`` once, in one process with 8 devices."""
    command = [sys.executable, str(HELPERS / "sharded_step.py")]
    try:
        out = subprocess.run(
            command, env=_env(8), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{command} timed out after {TIMEOUT_S} s; stderr:\n{_tail(stderr)}")
    lines = out.stdout.strip().splitlines()
    try:
        results = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(
            f"{command} exited with {out.returncode} without a result line.\n"
            f"stdout:\n{_tail(out.stdout)}\nstderr:\n{_tail(out.stderr)}"
        )
    assert sorted(results) == sorted(EIGHT_DEVICE_CHECKS), "update EIGHT_DEVICE_CHECKS"
    return results, out.stderr


@pytest.mark.multidevice
@pytest.mark.parametrize("check", EIGHT_DEVICE_CHECKS)
def test_on_eight_devices(eight_device_results, check):
    results, stderr = eight_device_results
    assert results[check] == "ok", f"{results[check]}\nhelper stderr:\n{_tail(stderr)}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_together(commands: list[list[str]], env: dict, tmp_path, name: str) -> None:
    """Starts the processes of one run and fails the test with their logs if one fails."""
    procs, logs = [], []
    for i, command in enumerate(commands):
        log = open(tmp_path / f"{name}{i}.log", "w+")
        procs.append(
            subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        )
        logs.append(log)
    failures = []
    try:
        # Poll all: if one fails, the others would wait for it until JAX's own timeout.
        deadline = time.monotonic() + TIMEOUT_S
        while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
            if any(proc.poll() not in (None, 0) for proc in procs):
                break
            time.sleep(0.2)
        for i, proc in enumerate(procs):
            code = proc.poll()
            if code is None:
                code = "killed (timed out, or another process failed)"
            if code != 0:
                failures.append((i, code))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
            log.close()
    if failures:
        report = "\n".join(
            f"--- process {i} (exit {code}) ---\n{_tail(outputs[i])}" for i, code in failures
        )
        pytest.fail(f"{name}: a process failed:\n{report}")


@pytest.mark.multidevice
def test_two_processes_equal_one_process(tmp_path):
    """Two ``jax.distributed`` processes x 2 CPU devices give one process's result.

    The script itself compares with process 0 alone on one device, checks that only
    process 0 wrote metrics, and saves, restores and resumes a checkpoint on both.
    """
    port = _free_port()
    commands = [
        [
            sys.executable,
            str(HELPERS / "two_processes.py"),
            f"--process-id={process_id}",
            "--num-processes=2",
            f"--port={port}",
            f"--workdir={tmp_path}",
        ]
        for process_id in (0, 1)
    ]
    _run_together(commands, _env(2), tmp_path, f"two_processes (port {port})")
    reports = [json.loads((tmp_path / f"process{i}.json").read_text()) for i in (0, 1)]
    for i, report in enumerate(reports):
        assert report["process_id"] == i and report["process_count"] == 2
        assert report["device_count"] == 4 and report["local_device_count"] == 2
        assert report["final_step"] == 6
    # 6 tasks padded to 8 over 4 devices: each process sampled only its 4 rows.
    assert reports[0]["task_indices"] == [0, 1, 2, 3]
    assert reports[1]["task_indices"] == [4, 5, 0, 1]
    assert reports[1]["task_weights"] == [1.0, 1.0, 0.0, 0.0]


def _metrics(path) -> list[dict]:
    rows = [json.loads(line) for line in open(path)]
    return [{k: v for k, v in row.items() if k != "sec_per_step"} for row in rows]


@pytest.mark.multidevice
def test_cli_two_processes_equal_one_process(tmp_path):
    """``metajax --coordinator-address ... train sinusoid`` on 2 processes x 2 devices
    writes the metrics, validation and checkpoint of the same run on 1 process x 4."""
    options = ["--steps=20", "--steps-per-call=10", "--log-every=10", "--eval-every=20"]
    options += ["--checkpoint-every=20", "--meta-batch=6", "--no-progress"]
    train = [sys.executable, "-m", "metajax.cli"]
    one = tmp_path / "one"
    _run_together(
        [[*train, "train", "sinusoid", f"--workdir={one}", *options]],
        _env(4),
        tmp_path,
        "one process",
    )
    two, port = tmp_path / "two", _free_port()
    _run_together(
        [
            [
                *train,
                f"--coordinator-address=localhost:{port}",
                "--num-processes=2",
                f"--process-id={i}",
                "train",
                "sinusoid",
                f"--workdir={two}",
                *options,
            ]
            for i in (0, 1)
        ],
        _env(2),
        tmp_path,
        f"two processes (port {port})",
    )
    log0 = (tmp_path / f"two processes (port {port})0.log").read_text()
    assert "padded to 8 tasks" in log0  # 6 tasks over 4 devices
    expected, got = _metrics(one / "metrics.jsonl"), _metrics(two / "metrics.jsonl")
    assert [r["step"] for r in got] == [10, 20]
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        np.testing.assert_allclose(list(b.values()), list(a.values()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        list(_metrics(two / "eval.jsonl")[-1].values()),
        list(_metrics(one / "eval.jsonl")[-1].values()),
        rtol=1e-5,
        atol=1e-6,
    )
    assert sorted(os.listdir(two / "checkpoints")) == sorted(os.listdir(one / "checkpoints"))


# --- in this process (one device) ---------------------------------------------------


def test_pad_tasks_repeats_tasks_with_zero_weight():
    tasks = {"support": np.arange(10.0).reshape(5, 2), "query": np.arange(5.0)}
    padded, weights = parallel.pad_tasks(tasks, np.arange(1.0, 6.0), multiple=4)
    assert padded["support"].shape == (8, 2) and parallel.padded_size(5, 4) == 8
    np.testing.assert_array_equal(weights, [1, 2, 3, 4, 5, 0, 0, 0])
    np.testing.assert_array_equal(padded["query"], [0, 1, 2, 3, 4, 0, 1, 2])
    same, ones = parallel.pad_tasks(tasks, multiple=5)
    assert same is tasks and ones.shape == (5,)
    with pytest.raises(ValueError, match="task_weights"):
        parallel.pad_tasks(tasks, np.ones(4), multiple=2)


def test_make_mesh_and_process_tasks_on_one_device():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("tasks",) and mesh.size == jax.device_count()
    with pytest.raises(ValueError, match="devices"):
        parallel.make_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match="AxisType.Auto"):  # jax.make_mesh's default axes
        parallel.shard_train_step(lambda state: state, jax.make_mesh((1,), ("tasks",)))
    indices, weights = parallel.process_tasks(5, parallel.make_mesh(1))
    np.testing.assert_array_equal(indices, np.arange(5))
    np.testing.assert_array_equal(weights, np.ones(5))


def test_shard_tasks_is_the_identity_without_a_mesh():
    tasks, weights = {"x": np.zeros((3, 2))}, None
    assert parallel.shard_tasks(tasks, weights) == (tasks, weights)
