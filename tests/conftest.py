"""Shared fixtures: tiny models and tasks that compile in well under a second."""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax as mj

# Compile time dominates this suite on a CPU, so tests compile with LLVM's
# optimisations and its expensive passes off (XLA's HLO passes, fusion included,
# still run; about 20% less compile time than the optimisation level alone). Set
# METAJAX_TEST_XLA_OPT=1 to test with the default flags. (The jitted-vs-eager conv4
# gradient regression test was checked to fail on the old max-pool bug with the
# optimisation level off; the expensive-passes flag was added later, unchecked.)
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
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
