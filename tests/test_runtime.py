"""The host allocator tuning removes per-step page faults of large buffers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import ctypes, resource, sys
    import metajax as mj
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    applied = mj.tune_host_allocator() if sys.argv[1] == "tuned" else False
    size = 64 * 2**20  # above glibc's largest mmap threshold (32 MB), like XLA's temps
    def cycle():
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)  # touch every page, as a step writing its buffers
        libc.free(p)
    cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        cycle()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(applied, faults)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_large_buffers_are_reused_without_page_faults():
    def run(mode):
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
        ).stdout.split()
        return out[0] == "True", int(out[1])

    applied, tuned_faults = run("tuned")
    if not applied:
        pytest.skip("not glibc")
    _, default_faults = run("default")
    # 5 cycles x 64 MB = 81,920 pages faulted afresh by default; none when reused.
    assert default_faults > 50_000, default_faults
    assert tuned_faults < 1_000, tuned_faults


def test_can_be_disabled(monkeypatch):
    import metajax as mj

    monkeypatch.setenv("METAJAX_TUNE_ALLOCATOR", "0")
    assert mj.tune_host_allocator() is False


CACHE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import jax
    import metajax as mj
    print(mj.enable_compilation_cache(min_compile_secs=0.0))
    print(mj.enable_compilation_cache("/elsewhere"))  # keeps the configured directory
    f = jax.jit(lambda x: (x @ x.T).sum())
    print(float(f(jax.numpy.ones((4, 4)))))
    d = jax.config.jax_compilation_cache_dir
    print(bool(d) and os.listdir(d) != [])
    """
)


def _run_cache_script(env):
    full = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    full.pop("METAJAX_CACHE_DIR", None)
    full.update(env)
    out = subprocess.run(
        [sys.executable, "-c", CACHE_SCRIPT], capture_output=True, text=True, env=full
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_compilation_cache_defaults_to_a_user_cache_dir_and_stores_programs(tmp_path):
    lines = _run_cache_script({"XDG_CACHE_HOME": str(tmp_path)})
    expected = str(tmp_path / "metajax" / "xla")
    assert lines == [expected, expected, "64.0", "True"]


def test_compilation_cache_can_be_disabled(tmp_path):
    lines = _run_cache_script({"METAJAX_CACHE_DIR": "0", "XDG_CACHE_HOME": str(tmp_path)})
    assert lines == ["None", "None", "64.0", "False"]
    assert not (tmp_path / "metajax").exists()


def test_tune_xla_cpu_adds_its_flag_only_before_the_backends_start(monkeypatch):
    import jax
    import jax.numpy as jnp

    from metajax import runtime

    jnp.zeros(1).block_until_ready()  # this process's backends have started
    measured = runtime.xla_cpu_flag_is_known()
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    assert runtime.tune_xla_cpu() is False  # too late: flags were read at start
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"
    # Before the backends start (pretended), on a measured release, it appends the flag.
    monkeypatch.setattr(jax._src.xla_bridge, "backends_are_initialized", lambda: False)
    assert runtime.tune_xla_cpu() is measured
    if measured:
        assert os.environ["XLA_FLAGS"].split() == [
            "--xla_force_host_platform_device_count=1",
            runtime.XLA_CPU_FLAG,
        ]
        assert runtime.tune_xla_cpu() is True  # idempotent
        assert os.environ["XLA_FLAGS"].count(runtime.XLA_CPU_FLAG) == 1
    # The user's own setting of the flag, or METAJAX_TUNE_XLA=0, wins.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=true")
    assert runtime.tune_xla_cpu() is False
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_use_fusion_emitters=true"
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("METAJAX_TUNE_XLA", "0")
    assert runtime.tune_xla_cpu() is False and os.environ["XLA_FLAGS"] == ""


CPU_DEVICES_SCRIPT = "import metajax as mj, jax, os; n = mj.cpu_devices(); print(n, jax.device_count(), os.environ.get('XLA_FLAGS', ''))"


def test_cpu_devices_splits_the_host_cpu_before_jax_starts():
    def run(value):
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
        env.update(METAJAX_CPU_DEVICES=value, JAX_PLATFORMS="cpu")
        out = subprocess.run(
            [sys.executable, "-c", CPU_DEVICES_SCRIPT], capture_output=True, text=True, env=env
        )
        return out.returncode, out.stdout.split(maxsplit=2), out.stderr

    rc, (n, count, flags), _ = run("3")
    assert rc == 0 and (n, count) == ("3", "3"), (n, count)
    assert flags.split() == [
        "--xla_force_host_platform_device_count=3",
        "--xla_cpu_multi_thread_eigen=false",
    ]
    rc, (n, count, *_), _ = run("0")
    assert rc == 0 and (n, count) == ("0", "1")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rc, (n, count, _), _ = run("cores")
    assert rc == 0 and (n, count) == (str(cores), str(cores))
    rc, _, err = run("two")
    assert rc != 0 and "positive number of devices" in err


def test_cpu_devices_refuses_late_or_conflicting_calls(monkeypatch):
    import jax
    import jax.numpy as jnp

    from metajax import runtime

    jnp.zeros(1).block_until_ready()  # this process's backends have started
    monkeypatch.delenv("METAJAX_CPU_DEVICES", raising=False)
    assert runtime.cpu_devices() == 0  # nothing asked for: nothing changes
    monkeypatch.setenv("XLA_FLAGS", "")
    with pytest.raises(RuntimeError, match="before JAX starts"):
        runtime.cpu_devices(2)
    assert os.environ["XLA_FLAGS"] == ""
    monkeypatch.setattr(jax._src.xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    with pytest.raises(ValueError, match="already sets"):
        runtime.cpu_devices(2)
    with pytest.raises(ValueError, match="positive"):
        runtime.cpu_devices(-1)


def test_cli_splits_the_cpu_for_recipes_that_ask_only_where_nothing_else_decides(
    monkeypatch, tmp_path
):
    import dataclasses
    import json

    import jax

    from metajax import cli
    from metajax.recipes.omniglot import OmniglotEval, OmniglotTrain
    from metajax.recipes.sinusoid import SinusoidTrain

    monkeypatch.setattr(jax._src.xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.delenv("METAJAX_CPU_DEVICES", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    new = OmniglotTrain(workdir=str(tmp_path / "new"))
    assert cli._recipe_cpu_devices("train", new, distributed=False) == 2
    # One device where the split would leave a core computing padding, or is not sharded.
    assert new.cpu_split(1) == 0 and new.cpu_split(3) == 0 and new.cpu_split(4) == 4
    assert dataclasses.replace(new, meta_batch=1).cpu_split(2) == 0
    assert dataclasses.replace(new, devices=1).cpu_split(2) == 0
    assert dataclasses.replace(new, ways=20).cpu_split(16) == 16  # meta-batch 16 at 20 ways
    assert dataclasses.replace(new, cpu_devices=3).cpu_split(2) == 3  # a number is as given
    assert cli._recipe_cpu_devices("train", new, distributed=True) == 0
    assert cli._recipe_cpu_devices("eval", OmniglotEval(), distributed=False) == 0
    assert cli._recipe_cpu_devices("train", SinusoidTrain(), distributed=False) == 0
    assert cli._recipe_cpu_devices("train", OmniglotTrain(cpu_devices=0), distributed=False) == 0
    # A run started before the option resumes as it ran: on one device.
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"workdir": str(old), "ways": 5}))
    assert cli._recipe_cpu_devices("train", OmniglotTrain(workdir=str(old)), distributed=False) == 0
    # The user's own settings decide: the environment variable (read by cpu_devices) ...
    monkeypatch.setenv("METAJAX_CPU_DEVICES", "0")
    assert cli._recipe_cpu_devices("train", new, distributed=False) is None
    monkeypatch.delenv("METAJAX_CPU_DEVICES")
    # ... simulated devices in XLA_FLAGS ...
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert cli._recipe_cpu_devices("train", new, distributed=False) == 0
    # ... and a JAX that has already started (the CLI called from a program).
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(jax._src.xla_bridge, "backends_are_initialized", lambda: True)
    assert cli._recipe_cpu_devices("train", new, distributed=False) == 0
