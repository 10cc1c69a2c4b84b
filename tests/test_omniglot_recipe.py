"""Omniglot end to end on the real data: training beats chance, resume is exact, CLI eval."""

from __future__ import annotations

import json

import chex
import jax
import numpy as np
import pytest

from metajax import cli
from metajax.data.omniglot import load_omniglot
from metajax.recipes import omniglot

try:
    load_omniglot()
    HAVE_DATA = True
except FileNotFoundError:
    HAVE_DATA = False

pytestmark = pytest.mark.skipif(not HAVE_DATA, reason="Omniglot not found (METAJAX_DATA_DIR)")

# One configuration for the training tests, running statistics included (checkpointed
# state that is not a parameter): its train step compiles once per test process
# (the persistent compilation cache) and the resume test reuses it.
TINY = dict(
    ways=5,
    shots=1,
    channels=8,
    meta_batch=8,
    inner_lr=0.4,
    eval_every=0,
    progress=False,
    running_stats=True,
)


def test_few_steps_on_real_data_beat_chance_and_cli_eval_reports_ci(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    # Running statistics are tracked (they do not change what is learned), for the
    # non-transductive evaluation below.
    omniglot.train(
        omniglot.OmniglotTrain(workdir=workdir, steps=20, log_every=5, checkpoint_every=10, **TINY)
    )
    records = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    # Each record is one meta-batch of 8 tasks x 5 queries (noisy: 0.15-0.35 at steps
    # 10-20 under XLA's default flags): average the last three. Chance is 0.2. The
    # evaluation below (40 episodes) is the firmer check that training helps.
    recent = np.mean([r["query_accuracy"] for r in records[-3:]])
    assert recent > 0.25, records[-3:]
    # Two settings through one padded program: the trained one and more shots.
    assert (
        cli.main(
            [
                "eval",
                "omniglot",
                "--workdir",
                workdir,
                "--episodes",
                "40",
                "--batch",
                "20",
                "--inner-steps",
                "2",
                "--shots",
                "1",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "5-way 1-shot test accuracy after 2 inner step(s)" in out
    assert "5-way 3-shot test accuracy after 2 inner step(s)" in out
    result = json.load(open(f"{workdir}/eval_test.json"))
    assert result["split_checksum"] == omniglot.omniglot_data.EXPECTED_CHECKSUMS[("maml", "test")]
    by_setting = {(r["ways"], r["shots"]): r for r in result["settings"]}
    assert sorted(by_setting) == [(5, 1), (5, 3)]
    acc = by_setting[(5, 1)]["accuracy_after_step"]
    assert len(acc) == 3 and acc[-1] > 0.3 and acc[-1] > acc[0]
    assert by_setting[(5, 3)]["accuracy_after_step"][-1] > acc[-1]  # more shots help
    # (That padding changes no accuracy is test_episodes' and test_conv4's subject.)

    # Non-transductive evaluation with population batch-norm statistics runs and
    # differs from transductive evaluation. (Its accuracy after adaptation is near
    # chance for a transductively trained model: experiments/omniglot/README.md.)
    pop = omniglot.evaluate(
        omniglot.OmniglotEval(
            workdir=workdir,
            episodes=40,
            batch=20,
            inner_steps=2,
            batch_norm="population",
            stats_batches=10,
        )
    )
    assert pop["batch_norm"] == "population" and len(pop["accuracy_after_step"]) == 3
    assert all(0.0 <= a <= 1.0 for a in pop["accuracy_after_step"])
    assert not np.allclose(pop["accuracy_after_step"], acc)
    # ...and with the running statistics kept in training.
    run = omniglot.evaluate(
        omniglot.OmniglotEval(
            workdir=workdir, episodes=40, batch=20, inner_steps=2, batch_norm="running"
        )
    )
    assert run["batch_norm"] == "running" and len(run["accuracy_after_step"]) == 3
    assert all(0.0 <= a <= 1.0 for a in run["accuracy_after_step"])
    assert not np.allclose(run["accuracy_after_step"], acc)
    with pytest.raises(ValueError, match="head's size 5"):
        omniglot.evaluate(omniglot.OmniglotEval(workdir=workdir, ways=(10,)))


def test_resume_equals_uninterrupted(tmp_path):
    tiny = {**TINY, "checkpoint_every": 4, "log_every": 4}
    straight = omniglot.train(omniglot.OmniglotTrain(workdir=str(tmp_path / "a"), steps=8, **tiny))
    omniglot.train(omniglot.OmniglotTrain(workdir=str(tmp_path / "b"), steps=4, **tiny))
    # The resumed run compiles nothing: its step is the same program as the first
    # run's (a restored state must not differ in committedness, dtype or sharding),
    # so it comes from the persistent compilation cache the CLI and tests enable.
    events = []
    listener = lambda event, **kw: events.append(event)
    jax.monitoring.register_event_listener(listener)
    try:
        resumed = omniglot.train(
            omniglot.OmniglotTrain(workdir=str(tmp_path / "b"), steps=8, **tiny)
        )
    finally:
        jax.monitoring.unregister_event_listener(listener)
    assert "/jax/compilation_cache/cache_misses" not in events
    assert "/jax/compilation_cache/cache_hits" in events
    chex.assert_trees_all_equal(
        jax.device_get(resumed.meta_params), jax.device_get(straight.meta_params)
    )
    assert np.array_equal(jax.random.key_data(resumed.rng), jax.random.key_data(straight.rng))


def test_protonet_trains_on_more_ways_than_it_is_tested_on(tmp_path):
    # Snell et al. train 60-way and test 5- and 20-way; a protonet has no head that
    # fixes the ways, so evaluation may use more ways than training too.
    workdir = str(tmp_path / "proto")
    cfg = {**TINY, "channels": 4, "meta_batch": 1, "checkpoint_every": 2, "log_every": 2}
    cfg.update(running_stats=False)  # (TINY tracks them)
    omniglot.train(
        omniglot.OmniglotTrain(
            workdir=workdir, algorithm="protonet", steps=2, **{**cfg, "ways": 10}
        )
    )
    result = omniglot.evaluate(
        omniglot.OmniglotEval(workdir=workdir, episodes=8, batch=8, ways=(5, 20))
    )
    by_ways = {r["ways"]: r["accuracy_after_step"] for r in result["settings"]}
    assert sorted(by_ways) == [5, 20]
    for ways, acc in by_ways.items():
        assert acc[0] == pytest.approx(1 / ways)  # no prototypes yet: uniform (chance)
        assert 1 / ways < acc[-1] <= 1.0  # an untrained conv4 embedding beats chance
    with pytest.raises(ValueError, match="--running-stats"):
        omniglot.evaluate(omniglot.OmniglotEval(workdir=workdir, batch_norm="running"))


def test_cli_train_splits_the_cpu_before_jax_starts_as_the_config_says(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "METAJAX_CPU_DEVICES"}
    env["JAX_PLATFORMS"] = "cpu"
    workdir = tmp_path / "run"
    # --cpu-devices 3 with a meta-batch of 2: the padding message shows the step ran
    # sharded over 3 CPU devices, which exist only if the CLI split the CPU first.
    out = subprocess.run(
        [sys.executable, "-m", "metajax.cli", "train", "omniglot", "--workdir", str(workdir)]
        + ["--channels", "8", "--meta-batch", "2", "--steps", "1", "--cpu-devices", "3"]
        + ["--eval-every", "0", "--log-every", "1", "--checkpoint-every", "1", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "meta_batch 2 on 3 devices: padded to 3 tasks" in out.stdout, out.stdout
    assert json.load(open(workdir / "config.json"))["cpu_devices"] == 3
