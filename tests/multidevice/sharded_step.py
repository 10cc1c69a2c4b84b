"""Checks of the sharded train step on 8 simulated CPU devices (run by tests/test_parallel.py).

Run it in its own process, before JAX starts, with
``XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu``. Each check
compares the sharded step with the plain single-device jitted step on a tiny MAML
sinusoid problem and records whether the task axis really is sharded. It prints one
JSON line ``{"check name": "ok" | "error message", ...}`` and exits 0 if every check
passed.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from problem import TOL, assert_replicated, batch_keys, sample, sample_batch, setup

import metajax as mj
from metajax import cli, parallel, rl
from metajax.recipes import nav2d
from metajax.recipes.sinusoid import load_run

NUM_DEVICES = 8


def task_batch(num_tasks, step):
    return sample_batch(batch_keys(step, num_tasks))


def run_explicit(num_tasks, mesh, *, steps=2, weights=None):
    learner, outer, state = setup()
    step = mj.make_train_step(learner, outer)
    single = jax.jit(step)
    sharded = parallel.shard_train_step(step, mesh, task_batch=True)
    ref, sh = state, parallel.replicate(state, mesh)
    for i in range(steps):
        tasks = task_batch(num_tasks, i)
        ref, ref_metrics = single(ref, tasks, weights)
        sh, sh_metrics = sharded(sh, tasks, task_weights=weights)
    return (ref, ref_metrics), (sh, sh_metrics)


def check_explicit_batch_equals_single_device_and_is_padded(mesh):
    # 12 tasks on 8 devices: padded to 16, the user's task weights kept, padding weightless.
    weights = jnp.array([1.0, 0.0, 2.0, 1.0, 0.5, 1.0, 1.0, 3.0, 0.0, 1.0, 1.0, 0.25])
    (ref, ref_m), (sh, sh_m) = run_explicit(12, mesh, weights=weights)
    chex.assert_trees_all_close(
        (sh.meta_params, sh.opt_state, sh_m), (ref.meta_params, ref.opt_state, ref_m), **TOL
    )
    assert int(sh.step) == 2
    assert_replicated((sh, sh_m), parallel.replicated(mesh))


def check_explicit_batch_is_sharded(mesh):
    tasks, weights = parallel.shard_batch(task_batch(12, 0), mesh)  # padded to 16
    for leaf in (*jax.tree.leaves(tasks), weights):
        assert leaf.shape[0] == 16 and leaf.sharding.spec == P("tasks"), leaf.sharding
        shards = leaf.addressable_shards
        assert len(shards) == NUM_DEVICES and {s.data.shape[0] for s in shards} == {2}, [
            s.data.shape for s in shards
        ]
    np.testing.assert_array_equal(np.asarray(weights), [1] * 12 + [0] * 4)


def check_loop_modes_equal_single_device_and_loop_over_own_tasks(mesh):
    # task_parallel="map" and chunks: 12 tasks (padded to 16) give the single-device
    # result, and each device loops over its own 2 tasks. A loop over the sharded task
    # axis made XLA gather it, and every device ran all 16 tasks.
    weights = jnp.linspace(0.5, 2.0, 12)
    for mode in ("map", 2):
        learner, outer, state = setup()
        step = mj.make_train_step(learner, outer, task_parallel=mode)
        ref, ref_m = jax.jit(step)(state, task_batch(12, 0), weights)
        sharded = parallel.shard_train_step(step, mesh, task_batch=True)
        sh, sh_m = sharded(parallel.replicate(state, mesh), task_batch(12, 0), task_weights=weights)
        chex.assert_trees_all_close((sh.meta_params, sh_m), (ref.meta_params, ref_m), **TOL)
        assert_replicated((sh, sh_m), parallel.replicated(mesh))
    # The loop itself: its output stays sharded over tasks (each device computed its own).
    tasks, _ = parallel.shard_batch(jnp.arange(16.0).reshape(16, 1), mesh)
    with jax.set_mesh(mesh):
        out = jax.jit(lambda t: mj.map_tasks(lambda x: jnp.sum(x**2), t, "map"))(tasks)
    np.testing.assert_allclose(np.asarray(out), np.arange(16.0) ** 2)
    assert out.sharding.spec and out.sharding.spec[0] == "tasks", out.sharding
    shards = out.addressable_shards
    assert {s.data.shape for s in shards} == {(2,)}, [s.data.shape for s in shards]


def run_sampler(meta_batch, mesh, *, record=None, steps_per_call=2, calls=2):
    learner, outer, state = setup()

    def recording_sample(key):
        task = sample(key)
        # Under vmap this reports the sharding of the whole sampled batch.
        jax.debug.inspect_array_sharding(task.support.inputs, callback=record.append)
        return task

    def multi_step(sampler):
        step = mj.make_train_step(learner, outer, sample_tasks=sampler, meta_batch=meta_batch)
        return mj.repeat_step(step, steps_per_call)

    single = jax.jit(multi_step(sample))
    sharded = parallel.shard_train_step(
        multi_step(sample if record is None else recording_sample), mesh
    )
    ref, sh = state, parallel.replicate(state, mesh)
    for _ in range(calls):
        ref, ref_metrics = single(ref)
        sh, sh_metrics = sharded(sh)
    return (ref, ref_metrics), (sh, sh_metrics)


def check_sampler_step_equals_single_device_and_is_padded_and_sharded(mesh):
    seen = []
    # 12 tasks on 8 devices: padded to 16, two sampled tasks per device.
    (ref, ref_m), (sh, sh_m) = run_sampler(12, mesh, record=seen)
    chex.assert_trees_all_close(
        (sh.meta_params, sh.opt_state, sh_m), (ref.meta_params, ref.opt_state, ref_m), **TOL
    )
    assert int(sh.step) == 4 and sh_m["meta_loss"].shape == (2,)
    assert_replicated((sh, sh_m), parallel.replicated(mesh))
    assert seen, "the sampler's sharding was never reported"
    for sharding in seen:
        assert isinstance(sharding, jax.sharding.NamedSharding), sharding
        assert sharding.spec[0] == "tasks", sharding
        assert sharding.shard_shape((16, 5, 1)) == (2, 5, 1), sharding


def check_cli_runs_on_all_devices(mesh):
    del mesh
    with tempfile.TemporaryDirectory() as tmp:
        args = ["train", "sinusoid", "--workdir", tmp, "--steps", "4", "--steps-per-call", "2",
                "--log-every", "2", "--eval-every", "4", "--checkpoint-every", "4",
                "--meta-batch", "5", "--hidden", "8", "8", "--no-progress"]  # fmt: skip
        assert cli.main(args) == 0
        lines = open(f"{tmp}/metrics.jsonl").read().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [2, 4], lines
        _, state = load_run(tmp)
        assert int(state.step) == 4


def check_trust_region_step_equals_single_device_and_is_padded(mesh):
    # nav2d MAML-RL with the TRPO outer step: 6 tasks on 8 devices (padded to 8, two
    # weightless), every CG iteration and line-search try an all-reduce over tasks.
    cfg = nav2d.Nav2DTrain(
        meta_batch=6, num_trajectories=3, horizon=8, hidden=(8,), outer_optimizer="trpo"
    )
    _, _, learner = nav2d.build(cfg)
    state, _ = nav2d.initial_state(cfg)
    sampler = rl.rl_task_sampler(nav2d.ENVS["nav2d"].make()[1])
    seen = []

    def recording_sampler(key):
        task = sampler(key)
        jax.debug.inspect_array_sharding(task.env_params.goal, callback=seen.append)
        return task

    single = jax.jit(rl.make_trust_region_step(learner, sample_tasks=sampler, meta_batch=6))
    sharded = parallel.shard_train_step(
        rl.make_trust_region_step(learner, sample_tasks=recording_sampler, meta_batch=6), mesh
    )
    ref, ref_m = single(state)
    sh, sh_m = sharded(parallel.replicate(state, mesh))
    assert float(ref_m["accepted"]) == 1.0 and 0.0 < float(ref_m["kl"]) <= cfg.max_kl, ref_m
    chex.assert_trees_all_close((sh.meta_params, sh_m), (ref.meta_params, ref_m), **TOL)
    assert_replicated((sh, sh_m), parallel.replicated(mesh))
    # Only one step is compared: the next step's episodes are sampled with the updated
    # policy, and rollouts, baseline fits and the line search amplify rounding
    # differences chaotically (in float64 the first step agrees to 1e-15, the second
    # to 1e-8). The second sharded step must still run and stay replicated.
    sh, sh_m = sharded(sh)
    assert int(sh.step) == 2 and float(sh_m["kl"]) <= cfg.max_kl, sh_m
    assert_replicated((sh, sh_m), parallel.replicated(mesh))
    assert seen, "the sampler's sharding was never reported"
    for sharding in seen:  # one goal per device: 8 tasks (6 + 2 padding) on 8 devices
        assert sharding.shard_shape((8, 2)) == (1, 2), sharding


def check_nav2d_cli_runs_on_all_devices(mesh):
    del mesh
    with tempfile.TemporaryDirectory() as tmp:
        args = ["train", "nav2d", "--workdir", tmp, "--steps", "2", "--meta-batch", "5",
                "--num-trajectories", "2", "--horizon", "5", "--hidden", "4",
                "--outer-optimizer", "trpo", "--log-every", "1", "--checkpoint-every", "2",
                "--no-progress"]  # fmt: skip
        assert cli.main(args) == 0
        lines = open(f"{tmp}/metrics.jsonl").read().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [1, 2], lines
        _, state = nav2d.load_run(tmp)
        assert int(state.step) == 2


CHECKS = [
    check_explicit_batch_equals_single_device_and_is_padded,
    check_explicit_batch_is_sharded,
    check_loop_modes_equal_single_device_and_loop_over_own_tasks,
    check_sampler_step_equals_single_device_and_is_padded_and_sharded,
    check_cli_runs_on_all_devices,
    check_trust_region_step_equals_single_device_and_is_padded,
    check_nav2d_cli_runs_on_all_devices,
]


def main() -> int:
    if jax.device_count() != NUM_DEVICES:
        print(f"expected {NUM_DEVICES} devices (XLA_FLAGS), got {jax.devices()}", file=sys.stderr)
        return 2
    mesh = parallel.make_mesh()
    results = {}
    for check in CHECKS:
        start = time.perf_counter()
        try:
            check(mesh)
            results[check.__name__] = "ok"
        except Exception:  # report every check, not only the first failure
            traceback.print_exc()
            results[check.__name__] = traceback.format_exc(limit=3)
        print(f"{check.__name__}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(json.dumps(results))
    return 0 if all(v == "ok" for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
