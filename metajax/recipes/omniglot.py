"""Few-shot Omniglot classification: the MAML paper's Table 1 protocol.

The whole class split lives on the device as one ``uint8`` array; every meta-step
samples its N-way K-shot episodes with ``jax.random`` inside the compiled step
(:mod:`metajax.data.episodes`), so there is no host data loader in the loop. The
learner is the conv4 network of :mod:`metajax.models.conv4` with transductive
batch norm.

Paper defaults (Finn et al. 2017, sec. 5.2 and appendix A.1): 5-way — 1 inner
step, inner lr 0.4, meta-batch 32, 3 inner steps at test time; 20-way — 5 inner
steps, inner lr 0.1, meta-batch 16, 5 at test time; Adam 1e-3; 60,000 iterations.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import algorithms
from metajax.data import episodes
from metajax.data import omniglot as omniglot_data
from metajax.losses import accuracy, softmax_cross_entropy, weighted_mean
from metajax.models import conv4
from metajax.runner import restore_run, run_training
from metajax.train import TrainState, init_train_state, make_eval_step, make_train_step, repeat_step

Algorithm = Literal["maml", "fomaml", "anil", "meta-sgd", "reptile", "pretrain"]


@dataclasses.dataclass(frozen=True)
class OmniglotTrain:
    """Meta-train a conv4 learner on Omniglot N-way K-shot episodes.

    Unset (``None``) hyperparameters take the MAML paper's value for the number of ways.

    Attributes:
      workdir: run directory (checkpoints, metrics, config); rerun to resume.
      data_dir: data directory holding ``omniglot/`` (default: ``$METAJAX_DATA_DIR``
        or ``../shared/data``).
      protocol: class split: ``maml`` (1100 train / 100 val / 423 test characters,
        x4 rotations) or ``vinyals`` (the standard split files).
      algorithm: the meta-learning algorithm.
      ways: N classes per episode.
      shots: K support examples per class.
      queries: query examples per class during training (default: K, as the paper).
      inner_lr: inner SGD step size (paper: 0.4 for 5-way, 0.1 for 20-way).
      inner_steps: inner steps in training (paper: 1 for 5-way, 5 for 20-way).
      eval_inner_steps: inner steps at evaluation (paper: 3 for 5-way, 5 for 20-way).
      meta_batch: tasks per meta-step (paper: 32 for 5-way, 16 for 20-way).
      outer_lr: Adam learning rate.
      steps: meta-iterations (paper: 60,000).
      channels: conv filters.
      conv: convolution formulation (``im2col`` is fast on CPU, ``xla`` on GPU; see models.conv4).
      steps_per_call: meta-steps fused per compiled call.
      seed: initialisation and task-sampling seed.
      log_every: metrics period (steps).
      eval_every: validation period (steps; 0 disables).
      val_episodes: validation episodes per evaluation.
      checkpoint_every: checkpoint period (steps).
      progress: show a progress bar.
    """

    workdir: str = "runs/omniglot/maml-5w1s"
    data_dir: str | None = None
    protocol: Literal["maml", "vinyals"] = "maml"
    algorithm: Algorithm = "maml"
    ways: int = 5
    shots: int = 1
    queries: int | None = None
    inner_lr: float | None = None
    inner_steps: int | None = None
    eval_inner_steps: int | None = None
    meta_batch: int | None = None
    outer_lr: float = 1e-3
    steps: int = 60_000
    channels: int = 64
    conv: conv4.ConvImpl = "im2col"
    steps_per_call: int = 1
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500
    val_episodes: int = 200
    checkpoint_every: int = 250
    progress: bool = True

    def resolved(self) -> OmniglotTrain:
        """The config with every paper default filled in."""
        five = self.ways <= 5
        return dataclasses.replace(
            self,
            queries=self.shots if self.queries is None else self.queries,
            inner_lr=(0.4 if five else 0.1) if self.inner_lr is None else self.inner_lr,
            inner_steps=(1 if five else 5) if self.inner_steps is None else self.inner_steps,
            eval_inner_steps=(3 if five else 5)
            if self.eval_inner_steps is None
            else self.eval_inner_steps,
            meta_batch=(32 if five else 16) if self.meta_batch is None else self.meta_batch,
        )


@dataclasses.dataclass(frozen=True)
class OmniglotEval:
    """Test accuracy of a trained Omniglot run, after each inner step.

    Attributes:
      workdir: the run directory.
      episodes: test episodes (>= 600 for the paper-style 95% CI).
      queries: query examples per class (default: as in training).
      inner_steps: inner steps (default: the run's eval_inner_steps).
      split: which split to evaluate on.
      seed: seed of the test episodes.
      batch: episodes per compiled call.
    """

    workdir: str = "runs/omniglot/maml-5w1s"
    episodes: int = 600
    queries: int | None = None
    inner_steps: int | None = None
    split: Literal["test", "val"] = "test"
    seed: int = 2024
    batch: int = 50


def classifier_loss(conv: conv4.ConvImpl):
    """``loss_fn(params, batch)`` of conv4: weighted cross-entropy, accuracy in aux.

    Padded examples (weight 0) are excluded from the batch-norm statistics too.
    """

    def loss_fn(params, batch):
        logits = conv4.apply(params, batch.inputs, conv=conv, example_mask=batch.weights > 0)
        loss = weighted_mean(softmax_cross_entropy(logits, batch.targets), batch.weights)
        return loss, {"accuracy": weighted_mean(accuracy(logits, batch.targets), batch.weights)}

    return loss_fn


def build_learner(cfg: OmniglotTrain):
    cfg = cfg.resolved()
    factory = algorithms.ALGORITHMS[cfg.algorithm]
    return factory(classifier_loss(cfg.conv), inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps)


def load_images(
    cfg: OmniglotTrain, split: str, data: omniglot_data.OmniglotData | None = None
) -> tuple[jax.Array, str]:
    """The split's images on the device (``uint8 [classes, 20, 28, 28]``) and its checksum.

    Pass ``data`` (from :func:`~metajax.data.omniglot.load_omniglot`) to take several
    splits from one read of the data set.
    """
    if data is None:
        data = omniglot_data.load_omniglot(cfg.data_dir)
    if cfg.protocol == "maml":
        classes = omniglot_data.maml_split(data, split)
    else:
        classes = omniglot_data.vinyals_split(data, split, data_dir=cfg.data_dir)
    return jnp.asarray(classes.images), classes.checksum


def initial_state(cfg: OmniglotTrain) -> tuple[TrainState, optax.GradientTransformation]:
    cfg = cfg.resolved()
    learner = build_learner(cfg)
    init_key, task_key = jax.random.split(jax.random.key(cfg.seed))
    params = conv4.init(init_key, ways=cfg.ways, channels=cfg.channels)
    outer = optax.adam(cfg.outer_lr)
    return init_train_state(learner, params, outer, task_key), outer


def _episode_sampler(ways: int, shots: int, queries: int):
    return lambda key, images: episodes.sample_episode(
        key, images, ways=ways, shots=shots, queries=queries
    )


def make_episode_eval(learner, *, ways, shots, queries, inner_steps):
    """Jitted ``(meta_params, keys [batch], images) -> accuracy [batch, steps + 1]``."""
    eval_step = make_eval_step(learner, inner_steps=inner_steps)
    sampler = _episode_sampler(ways, shots, queries)

    @jax.jit
    def run(meta_params, keys, images):
        tasks = jax.vmap(lambda k: sampler(k, images))(keys)
        return eval_step(meta_params, tasks)["query_accuracy"]

    return run


def episode_accuracy(run, meta_params, images, *, episodes_count, batch, seed) -> np.ndarray:
    """Accuracy ``[episodes, steps + 1]`` over ``episodes_count`` episodes from ``seed``."""
    keys = jax.random.split(jax.random.key(seed), episodes_count)
    out = []
    for start in range(0, episodes_count, batch):
        chunk = keys[start : start + batch]
        if chunk.shape[0] < batch:  # keep one compiled shape: pad, then drop the extra
            chunk = jnp.concatenate([chunk, keys[: batch - chunk.shape[0]]])
            out.append(np.asarray(run(meta_params, chunk, images))[: episodes_count - start])
        else:
            out.append(np.asarray(run(meta_params, chunk, images)))
    return np.concatenate(out)


def train(cfg: OmniglotTrain) -> TrainState:
    """Meta-trains (or resumes) one Omniglot run; returns the final state."""
    cfg = cfg.resolved()
    learner = build_learner(cfg)
    state, outer = initial_state(cfg)
    data = omniglot_data.load_omniglot(cfg.data_dir)
    train_images, train_checksum = load_images(cfg, "train", data)
    step = make_train_step(
        learner,
        outer,
        sample_tasks=_episode_sampler(cfg.ways, cfg.shots, cfg.queries),
        meta_batch=cfg.meta_batch,
    )
    if cfg.steps_per_call > 1:
        step = repeat_step(step, cfg.steps_per_call)
    jitted = jax.jit(step, donate_argnums=0)

    eval_fn = None
    if cfg.eval_every:
        val_images, _ = load_images(cfg, "val", data)
        batch = min(cfg.val_episodes, 50)
        run = make_episode_eval(
            learner,
            ways=cfg.ways,
            shots=cfg.shots,
            queries=cfg.queries,
            inner_steps=cfg.eval_inner_steps,
        )

        def eval_fn(state):
            acc = episode_accuracy(
                run,
                state.meta_params,
                val_images,
                episodes_count=cfg.val_episodes,
                batch=batch,
                seed=7,
            )
            return {
                "val_accuracy_pre": float(acc[:, 0].mean()),
                "val_accuracy": float(acc[:, -1].mean()),
            }

    config = {**dataclasses.asdict(cfg), "train_split_checksum": train_checksum}
    return run_training(
        workdir=cfg.workdir,
        state=state,
        train_step=lambda s: jitted(s, train_images),
        num_steps=cfg.steps,
        steps_per_call=cfg.steps_per_call,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every,
        eval_fn=eval_fn,
        checkpoint_every=cfg.checkpoint_every,
        config=config,
        progress=cfg.progress,
        description=f"omniglot/{cfg.algorithm} {cfg.ways}w{cfg.shots}s",
    )


def load_run(workdir: str) -> tuple[OmniglotTrain, TrainState]:
    """Restores the newest checkpoint of a run directory with its config."""
    return restore_run(workdir, OmniglotTrain, lambda cfg: initial_state(cfg)[0])


def evaluate(cfg: OmniglotEval) -> dict:
    """Test accuracy with 95% CI after each inner step; writes ``eval_<split>.json``."""
    train_cfg, state = load_run(cfg.workdir)
    train_cfg = train_cfg.resolved()
    learner = build_learner(train_cfg)
    images, checksum = load_images(train_cfg, cfg.split)
    queries = train_cfg.queries if cfg.queries is None else cfg.queries
    steps = train_cfg.eval_inner_steps if cfg.inner_steps is None else cfg.inner_steps
    run = make_episode_eval(
        learner, ways=train_cfg.ways, shots=train_cfg.shots, queries=queries, inner_steps=steps
    )
    acc = episode_accuracy(
        run, state.meta_params, images, episodes_count=cfg.episodes, batch=cfg.batch, seed=cfg.seed
    )
    mean = acc.mean(0)
    ci = 1.96 * acc.std(0, ddof=1) / np.sqrt(acc.shape[0])
    result = {
        "workdir": cfg.workdir,
        "algorithm": train_cfg.algorithm,
        "ways": train_cfg.ways,
        "shots": train_cfg.shots,
        "queries_per_class": queries,
        "meta_steps": int(state.step),
        "split": cfg.split,
        "split_checksum": checksum,
        "episodes": cfg.episodes,
        "accuracy_after_step": [float(m) for m in mean],
        "ci95_after_step": [float(c) for c in ci],
    }
    with open(os.path.join(cfg.workdir, f"eval_{cfg.split}.json"), "w") as f:
        json.dump(result, f, indent=2)
    for k, (m, c) in enumerate(zip(mean, ci)):
        print(
            f"{train_cfg.ways}-way {train_cfg.shots}-shot {cfg.split} accuracy after {k} "
            f"inner step(s): {100 * m:.2f} ± {100 * c:.2f}%  ({cfg.episodes} episodes)"
        )
    return result
