"""Shared fixtures: tiny models and tasks that compile in well under a second."""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax as mj
from metajax import runtime

# Compile time dominates this suite on a CPU, so tests compile with LLVM's
# optimisations and its expensive passes off, and with XLA:CPU's older loop emitters
# for fusions instead of its fusion emitters (XLA's HLO passes, fusion included,
# still run). Measured on the 2-core CI machine: the optimisation flags cut about 20%
# of compile time; the emitter flag then cut the suite from 10:45 to 6:42 (and the
# file order below to 5:19). Set METAJAX_TEST_XLA_OPT=1 to test with XLA's default
# flags (the CLI's users get the emitter flag, metajax.tune_xla_cpu). (The
# jitted-vs-eager conv4 gradient regression test was checked to fail on the old
# max-pool bug with the optimisation level off; the later flags were added unchecked.)
# The emitter flag is added only on the jax releases it was checked on (a flag XLA
# does not know aborts every process).
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
if runtime.xla_cpu_flag_is_known():
    FAST_COMPILE += (runtime.XLA_CPU_FLAG,)  # what metajax.tune_xla_cpu gives users too
if os.environ.get("METAJAX_TEST_XLA_OPT", "0") != "1":
    _flags = os.environ.get("XLA_FLAGS", "")
    for _flag in FAST_COMPILE:
        if _flag.split("=")[0] not in _flags:
            _flags = f"{_flags} {_flag}".strip()
    os.environ["XLA_FLAGS"] = _flags

# Tests rebuild the same programs (a recipe trained, then resumed; the same learner in
# several checks). XLA's persistent compilation cache, in a directory per test
# process unless METAJAX_TEST_JAX_CACHE names one, compiles each of them once; the
# CLI in subprocesses uses the same directory (METAJAX_CACHE_DIR).
_cache = os.environ.get("METAJAX_TEST_JAX_CACHE") or tempfile.mkdtemp(prefix="metajax-jax-cache-")
os.environ["METAJAX_CACHE_DIR"] = _cache
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def linear_apply(params, x):
    """y = x @ w + b: a linear model whose MAML meta-gradient has a closed form."""
    return x @ params["body"]["w"] + params["head"]["b"]


def tanh_apply(params, x):
    """A tiny smooth network (smooth, so finite differences are reliable)."""
    h = jnp.tanh(x @ params["body"]["w"] + params["body"]["c"])
    return h @ params["head"]["v"] + params["head"]["b"]


def init_tanh(key, d_in=3, width=4, d_out=1, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "body": {
            "w": jax.random.normal(k1, (d_in, width), dtype) * 0.7,
            "c": jax.random.normal(k3, (width,), dtype) * 0.1,
        },
        "head": {
            "v": jax.random.normal(k2, (width, d_out), dtype) * 0.7,
            "b": jnp.zeros((d_out,), dtype),
        },
    }


def regression_task(key, n_support=6, n_query=5, d_in=3, dtype=jnp.float32) -> mj.Task:
    ks = jax.random.split(key, 5)
    w_true = jax.random.normal(ks[0], (d_in, 1), dtype)
    xs = jax.random.normal(ks[1], (n_support, d_in), dtype)
    xq = jax.random.normal(ks[2], (n_query, d_in), dtype)
    ys = xs @ w_true + 0.1 * jax.random.normal(ks[3], (n_support, 1), dtype)
    yq = xq @ w_true + 0.1 * jax.random.normal(ks[4], (n_query, 1), dtype)
    return mj.Task(
        mj.Batch(xs, ys, jnp.ones(n_support, dtype)), mj.Batch(xq, yq, jnp.ones(n_query, dtype))
    )


def task_batch(key, n_tasks=3, **kwargs) -> mj.Task:
    return jax.vmap(lambda k: regression_task(k, **kwargs))(jax.random.split(key, n_tasks))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# pytest-xdist's loadfile scheduling hands whole files to whichever worker is free.
# Files heaviest first (by their measured wall time on the CI machine) keep one worker
# from starting a long file while the other is nearly done; the rest keep their
# collection order. xdist's own reordering (by test count) is switched off for this.
# A file missing from the list only costs balance.
HEAVY_FIRST = (
    "test_parallel.py",
    "test_algorithms.py",
    "test_omniglot_recipe.py",
    "test_conv4.py",
    "test_train.py",
    "test_running_stats.py",
    "test_trust_region.py",
    "test_rl.py",
    "test_public.py",
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
