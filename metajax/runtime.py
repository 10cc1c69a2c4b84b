"""Host-process settings that decide how fast compiled steps run on a CPU.

**Why this exists.** XLA:CPU allocates each execution's temporary buffers with the C
library's ``malloc`` and frees them when the step ends. glibc serves every
allocation above 32 MB with a fresh ``mmap`` and returns it to the kernel on
``free``, so a meta-step whose activations take a gigabyte *page-faults a gigabyte
of zeroed memory on every call*. Measured on the 2-core CPU of this project (W1:
Omniglot 5-way 1-shot MAML, conv4, meta-batch 32): 247,000 minor page faults
(965 MB) and 0.5 s of kernel time per meta-step, and 1.97 s of CPU time per step
in all; with the allocator told to keep freed memory, 0 page faults and 0.93 s
(``benchmarks/omniglot_vs_peers.py`` reports the effect on wall-clock time).

:func:`tune_host_allocator` tells glibc never to use ``mmap`` for allocations and
not to trim the heap, so freed buffers are reused by the next step. The process's
resident memory then stays at its peak instead of shrinking between steps, which is
what a training process wants anyway. The ``metajax`` CLI and the benchmarks call
it; call it yourself at the top of a script that runs jitted steps on a CPU (it is
harmless elsewhere). Set ``METAJAX_TUNE_ALLOCATOR=0`` to disable it.

:func:`tune_xla_cpu` makes XLA:CPU generate its fused loops with its older loop
emitters instead of its newer fusion emitters (``--xla_cpu_use_fusion_emitters=false``).
Measured on the 2-core CPU of this project in three rounds, each flag setting in its
own process (``benchmarks/results/xla_cpu_emitters.log``: metajax alone, two rounds;
``benchmarks/results/omniglot_vs_peers_2026-12-04.log``: beside the peers): peak
resident memory falls by about 40% (W1 473-500 MB against 873-898 MB, W2 583-594 MB
against 934-1023 MB) and compile time by 0.6-6.5 s (W2 8-10 s against 13-14 s). Step
time moves within this host's noise: W2 median step 2.47, 2.57, 2.78 s against 3.01,
2.97, 2.70 s; W1 0.46, 0.64, 0.70 s against 0.67, 0.63, 0.61 s. The test suite
compiles in a third of the time with it. It must run before JAX starts its backends
(the first array or device query), and is applied only on jaxlib 0.10, where it was
measured (XLA aborts on a flag it does not know). The CLI calls it; set
``METAJAX_TUNE_XLA=0`` to disable it.

:func:`cpu_devices` (``METAJAX_CPU_DEVICES=N`` for the CLI; ``metajax train omniglot``
asks for it by default, ``OmniglotTrain.cpu_devices``) splits the host CPU
into ``N`` XLA devices and turns off Eigen's multi-threading
(``--xla_force_host_platform_device_count=N --xla_cpu_multi_thread_eigen=false``). A step
sharded over them (:mod:`metajax.parallel`, as the CLI's recipes do with every device)
then runs one stream of tasks per core, instead of one stream whose small operations are
each split over the cores, and conv4 then convolves every even block by Winograd
(:func:`metajax.models.conv4._winograd_pays`). Measured on the 2-core CPU of this
project beside the PyTorch peers, second-order MAML, ``task_parallel="map"``
(``benchmarks/results/omniglot_vs_peers_2026-12-06f.log``, its command in the README):
W1 0.574 s per meta-step against 0.960 s on one device, W2 2.67 against 3.36 s.
:func:`tune_xla_cpu` there halves the memory and, since the conv4 changes of 2026-12-06
evening, also saves 3-4% of the time (W1 0.441 against 0.459 s and 511 against 952 MB,
W2 2.368 against 2.448 s and 689 against 1164 MB;
``benchmarks/results/cpu_devices_xla_emitters_c54bde2.log``, its command at its top), so
the CLI applies both.

The devices are not single-threaded. Every device's program runs on XLA:CPU's one
intra-op thread pool (one thread per core), and XLA still splits an operation over the
pool's idle threads; the flag only stops Eigen's own splitting. With every device busy,
the pool's threads carry the devices' streams, one stream per core. A program
that runs on one device alone (an unsharded step, such as the CLI's evaluation steps)
keeps both cores busy: W2's unsharded step took 1.51 s on the split CPU, against
1.46 s on the CPU as one device and 3.22 s pinned to one core
(``python benchmarks/split_cpu_threads.py``,
``benchmarks/results/split_cpu_threads_2026-12-07.log``, AMD EPYC host; all the compute
ran on the pool's two threads in every setting).

:func:`enable_compilation_cache` turns on XLA's persistent compilation cache, so a
run that is resumed after an interruption (or rerun with the same configuration)
loads its compiled step from disk instead of compiling it again (10-40 s for the
Omniglot step on a CPU). The CLI calls it too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import jax

# mallopt parameters (glibc <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_MAX_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def tune_host_allocator() -> bool:
    """Keeps freed host memory for reuse (glibc ``mallopt``); ``True`` if applied.

    Returns ``False`` (and changes nothing) on other C libraries or platforms, or
    when ``METAJAX_TUNE_ALLOCATOR=0``. Safe to call more than once.
    """
    if os.environ.get("METAJAX_TUNE_ALLOCATOR", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _MAX_TRIM_THRESHOLD))


#: The XLA:CPU flag :func:`tune_xla_cpu` adds, and the jaxlib releases it was measured on.
XLA_CPU_FLAG = "--xla_cpu_use_fusion_emitters=false"
_XLA_CPU_FLAG_RELEASES = ((0, 10),)


def xla_cpu_flag_is_known() -> bool:
    """Whether this jax release is one :data:`XLA_CPU_FLAG` was checked on."""
    return tuple(int(p) for p in jax.__version__.split(".")[:2]) in _XLA_CPU_FLAG_RELEASES


def backends_started() -> bool:
    """Whether JAX has started its backends, after which ``XLA_FLAGS`` is not read again."""
    from jax._src import xla_bridge  # no public equivalent in jax 0.10

    return xla_bridge.backends_are_initialized()


def host_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def tune_xla_cpu() -> bool:
    """Adds :data:`XLA_CPU_FLAG` to ``XLA_FLAGS``; ``True`` if it will take effect.

    Changes nothing, and returns ``False``, when ``METAJAX_TUNE_XLA=0``, when
    ``XLA_FLAGS`` already sets the flag either way, on a jaxlib release it was not
    measured on, or once JAX's backends have started (flags are read then). Returns
    ``True`` without change if the flag is already there. It only concerns the CPU
    backend, so it is harmless on a GPU or TPU host.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    name = XLA_CPU_FLAG.split("=")[0]
    if XLA_CPU_FLAG in flags.split():
        return True
    if (
        os.environ.get("METAJAX_TUNE_XLA", "1") == "0"
        or name in flags
        or not xla_cpu_flag_is_known()
        or backends_started()
    ):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {XLA_CPU_FLAG}".strip()
    return True


#: The XLA flags :func:`cpu_devices` adds (``{n}``: the number of devices).
CPU_DEVICES_FLAGS = (
    "--xla_force_host_platform_device_count={n}",
    "--xla_cpu_multi_thread_eigen=false",
)


def cpu_devices(n: int | str | None = None) -> int:
    """Splits the host CPU into ``n`` XLA devices (one per core); the number set, or 0.

    Args:
      n: the number of devices; ``"cores"`` for one per core this process may run on;
        ``None`` reads ``METAJAX_CPU_DEVICES`` (unset, empty or ``0``: leave the CPU
        as one device).

    Returns:
      ``n`` once the flags are in ``XLA_FLAGS`` (JAX reads them when its backends
      start), ``0`` if nothing was asked for.

    Raises:
      ValueError: ``n`` is not a positive integer or ``"cores"``, or ``XLA_FLAGS``
        already sets one of the two flags.
      RuntimeError: JAX's backends have already started, so the flags would be ignored.
    """
    if n is None:
        n = os.environ.get("METAJAX_CPU_DEVICES", "").strip() or 0
    given = n
    if n == "cores":
        n = host_cores()
    try:
        n = int(n)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise ValueError(
            f"cpu_devices: expected a positive number of devices or 'cores'; got {given!r}."
        )
    if n == 0:
        return 0
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in CPU_DEVICES_FLAGS:
        if flag.split("=")[0] in flags:
            raise ValueError(
                f"cpu_devices: XLA_FLAGS already sets {flag.split('=')[0]}: {flags!r}."
            )
    if backends_started():
        raise RuntimeError(
            "cpu_devices must run before JAX starts its backends (the first array or "
            "device query); call it at the top of the script, or set METAJAX_CPU_DEVICES "
            "for the CLI."
        )
    added = " ".join(flag.format(n=n) for flag in CPU_DEVICES_FLAGS)
    os.environ["XLA_FLAGS"] = f"{flags} {added}".strip()
    return n


def cpu_devices_are_single_threaded() -> bool:
    """Whether ``XLA_FLAGS`` turns off Eigen's multi-threading (as :func:`cpu_devices` sets).

    The name is historical: XLA still splits operations over idle pool threads (see the
    module's notes); what the flag marks is a CPU split into one device per core, where
    each device runs one stream of tasks. Read when a program is traced (e.g. by conv4's
    choice of convolution), so it reflects the flags the backend started with unless
    ``XLA_FLAGS`` changed since.
    """
    return CPU_DEVICES_FLAGS[1] in os.environ.get("XLA_FLAGS", "").split()


def default_cache_dir() -> str:
    """``$METAJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/metajax/xla`` (``~/.cache/...``)."""
    if os.environ.get("METAJAX_CACHE_DIR"):
        return os.environ["METAJAX_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "metajax", "xla")


def enable_compilation_cache(path: str | None = None, min_compile_secs: float = 1.0) -> str | None:
    """Turns on JAX's persistent compilation cache; returns its directory.

    Keeps a directory that is already configured (``JAX_COMPILATION_CACHE_DIR`` or
    ``jax.config``). Otherwise uses ``path`` or :func:`default_cache_dir`. Programs
    that compile in under ``min_compile_secs`` are not stored. Returns ``None``
    (and changes nothing) when ``METAJAX_CACHE_DIR=0``.
    """
    if os.environ.get("METAJAX_CACHE_DIR") == "0":
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    path = path or default_cache_dir()
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
    return path
