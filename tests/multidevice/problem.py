"""The tiny MAML sinusoid problem shared by the multi-device helper scripts.

The MLP is written with plain ``jnp`` and initialised with NumPy, so that building
it compiles nothing: these scripts spend their time on the steps they compare.
"""

from __future__ import annotations

import jax
import numpy as np
import optax

import metajax as mj
from metajax.data.sinusoid import SinusoidDistribution

# Relative/absolute tolerance of "the sharded step equals the single-device step": the
# task-weighted mean becomes an all-reduce, which sums in another order.
TOL = dict(rtol=1e-5, atol=1e-6)


def mlp_apply(params, x):
    """A 1-8-8-1 ReLU MLP."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def mlp_params(seed=0, widths=(1, 8, 8, 1)):
    rng = np.random.default_rng(seed)
    return [
        {
            "w": (rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)).astype(np.float32),
            "b": np.zeros((d_out,), np.float32),
        }
        for d_in, d_out in zip(widths[:-1], widths[1:])
    ]


def setup():
    """``(learner, outer_optimizer, initial_state)`` of second-order MAML, 1 inner step."""
    learner = mj.maml(mj.make_loss(mlp_apply, mj.squared_error), inner_lr=0.01, inner_steps=1)
    outer = optax.adam(1e-2)
    state = mj.init_train_state(learner, mlp_params(), outer, jax.random.key(1))
    return learner, outer, state


def sample(key):
    """One sinusoid task: 5 support and 5 query points."""
    return SinusoidDistribution().sample_task(key, shots=5, queries=5)


sample_batch = jax.jit(jax.vmap(sample))


def batch_keys(step, num_tasks):
    """The keys of the explicit task batch of ``step``."""
    return jax.random.split(jax.random.fold_in(jax.random.key(7), step), num_tasks)


def assert_replicated(tree, sharding):
    for leaf in jax.tree.leaves(tree):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), leaf.sharding
