"""The host allocator tuning removes per-step page faults of large buffers."""

from __future__ import annotations

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
