"""One process of a two-process run on localhost (run by tests/test_parallel.py).

Start it twice, with ``--process-id 0`` and ``--process-id 1``, the same free
``--port`` and ``--workdir``, and ``XLA_FLAGS=--xla_force_host_platform_device_count=2
JAX_PLATFORMS=cpu``: JAX's multi-controller runtime joins them into one run over
4 CPU devices that exchange data through gloo collectives. The script checks

- the explicit-batch step, each process sampling only its share of the tasks and
  building global arrays from it (6 tasks padded to 8 over 4 devices);
- the sampling step, each device drawing its own tasks;
- ``run_training`` across both processes: only process 0 writes metrics, every
  process saves and restores the checkpoint, and a resumed run continues exactly;

against the same steps run by process 0 alone on one device, and writes
``{"process_id": ..., "task_indices": ..., ...}`` to ``<workdir>/process<i>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")  # before the backend starts

import chex  # noqa: E402
from problem import TOL, assert_replicated, batch_keys, sample, sample_batch, setup  # noqa: E402

import metajax as mj  # noqa: E402
from metajax import parallel  # noqa: E402
from metajax.checkpoint import Checkpointer  # noqa: E402
from metajax.runner import read_jsonl, run_training  # noqa: E402

META_BATCH = 6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()

    parallel.initialize_distributed(
        f"localhost:{args.port}", num_processes=args.num_processes, process_id=args.process_id
    )
    main_process = jax.process_index() == 0
    assert jax.process_count() == args.num_processes, jax.process_count()
    mesh = parallel.make_mesh()
    num_devices = jax.device_count()

    learner, outer, state = setup()  # the same on every process

    # Explicit batches: each process samples only the tasks that live on its devices.
    step = mj.make_train_step(learner, outer)
    sharded = parallel.shard_train_step(step, mesh, task_batch=True)
    indices, weights = parallel.process_tasks(META_BATCH, mesh)
    sh = parallel.replicate(state, mesh)
    for i in range(2):
        local_tasks = sample_batch(batch_keys(i, META_BATCH)[indices])
        tasks, task_weights = parallel.global_task_batch(local_tasks, mesh, weights)
        assert tasks.support.inputs.shape[0] == parallel.padded_size(META_BATCH, num_devices)
        assert not tasks.support.inputs.is_fully_addressable
        sh, sh_metrics = sharded(sh, tasks, task_weights=task_weights)
    if main_process:  # the same two steps in one process, on one device, all tasks at once
        single = jax.jit(step)
        ref = state
        for i in range(2):
            ref, ref_metrics = single(ref, sample_batch(batch_keys(i, META_BATCH)))
        chex.assert_trees_all_close(
            (sh.meta_params, sh.opt_state, sh_metrics),
            (ref.meta_params, ref.opt_state, ref_metrics),
            **TOL,
        )

    # Sampling steps through the run loop, with a checkpoint and a resumption.
    sampler_step = mj.repeat_step(
        mj.make_train_step(learner, outer, sample_tasks=sample, meta_batch=META_BATCH), 2
    )
    sharded_sampler = parallel.shard_train_step(sampler_step, mesh)
    workdir = os.path.join(args.workdir, "run")
    loop = dict(
        workdir=workdir,
        train_step=sharded_sampler,
        steps_per_call=2,
        log_every=2,
        checkpoint_every=2,
        progress=False,
        plot=False,
    )
    run_training(state=parallel.replicate(state, mesh), num_steps=4, **loop)
    final = run_training(state=parallel.replicate(state, mesh), num_steps=6, **loop)  # resumes
    ckpt = Checkpointer(workdir)
    try:
        assert ckpt.all_steps() == [2, 4, 6], ckpt.all_steps()
        restored = ckpt.restore(6, parallel.replicate(state, mesh))
    finally:
        ckpt.close()
    chex.assert_trees_all_equal(jax.random.key_data(restored.rng), jax.random.key_data(final.rng))
    chex.assert_trees_all_equal(
        (restored.step, restored.meta_params, restored.opt_state),
        (final.step, final.meta_params, final.opt_state),
    )
    assert_replicated(restored, parallel.replicated(mesh))
    if main_process:
        single = jax.jit(sampler_step)
        ref = state
        for _ in range(3):
            ref, _ = single(ref)
        chex.assert_trees_all_close(
            (final.meta_params, final.opt_state), (ref.meta_params, ref.opt_state), **TOL
        )
        steps = [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
        assert steps == [2, 4, 6], f"metrics written by more than one process? {steps}"

    report = {
        "process_id": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": num_devices,
        "local_device_count": jax.local_device_count(),
        "task_indices": indices.tolist(),
        "task_weights": weights.tolist(),
        "final_step": int(final.step),
    }
    with open(os.path.join(args.workdir, f"process{args.process_id}.json"), "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
