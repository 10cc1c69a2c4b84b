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
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import algorithms, running_stats
from metajax.data import episodes
from metajax.data import omniglot as omniglot_data
from metajax.losses import accuracy, softmax_cross_entropy, weighted_mean
from metajax.models import conv4
from metajax.runner import (
    jit_on_devices,
    restore_run,
    run_training,
    with_legacy_defaults,
)
from metajax.train import TrainState, init_train_state, make_eval_step, make_train_step, repeat_step

Algorithm = Literal[
    "maml",
    "fomaml",
    "anil",
    "meta-sgd",
    "reptile",
    "pretrain",
    "maml++",
    "learned-sgd",
    "imaml",
    "protonet",
]
# The algorithms whose meta-gradient flows through the inner steps, so that it can be
# truncated to the last k of them (``backprop_steps``).
_TRUNCATABLE = ("maml", "anil", "meta-sgd", "maml++", "learned-sgd")

# Paper values (inner lr, inner steps, eval inner steps) where they differ from MAML's:
# MAML++'s Omniglot configs (5 steps, initial per-step lr 0.1) and iMAML-GD's
# released Omniglot command (16 steps, lr 0.1; lambda 2, 5 CG steps are imaml's defaults).
# A prototypical network has no inner steps: its "adaptation" (the prototypes) is one.
# Reptile with one inner step is joint training (Nichol et al., sec. 5), so it gets
# MAML++'s 5 steps of lr 0.1 (the Reptile paper's own Omniglot runs used 5 Adam steps
# in training and 50 at test time). The learned inner optimizer (SGD with momentum)
# needs several steps for its momentum to act: MAML++'s 5 steps and initial lr 0.1.
_ALGORITHM_INNER_DEFAULTS = {
    "maml++": (0.1, 5, 5),
    "learned-sgd": (0.1, 5, 5),
    "imaml": (0.1, 16, 16),
    "protonet": (0.0, 1, 1),
    "reptile": (0.1, 5, 5),
}


def _default_meta_batch(ways: int) -> int:
    """The MAML paper's Omniglot meta-batch: 32 tasks at 5 ways or fewer, 16 above."""
    return 32 if ways <= 5 else 16


@dataclasses.dataclass(frozen=True)
class OmniglotTrain:
    """Meta-train a conv4 learner on Omniglot N-way K-shot episodes.

    Unset (``None``) hyperparameters take the MAML paper's value for the number of ways
    (inner lr and steps for ``maml++`` and ``imaml``: their papers' Omniglot values;
    ``reptile``: 5 steps of lr 0.1, since one step would be joint training).

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
      outer_lr: outer learning rate (default: 1e-3 for Adam; 1.0 for ``sgd``).
      outer_optimizer: ``adam``, or ``sgd`` with the learning rate annealed linearly
        to 0 over ``steps``. Default: ``sgd`` for ``reptile`` (Nichol et al.'s outer
        step ``theta += eps (mean(phi) - theta)``, ``eps`` from 1 to 0, is SGD on
        Reptile's direction), ``adam`` otherwise.
      steps: meta-iterations (paper: 60,000).
      channels: conv filters.
      conv: convolution formulation: ``auto`` (``winograd_fused`` on CPU, ``im2col`` on
        GPU, ``xla`` on TPU; see models.conv4). The formulations compute the same function, so a run may
        resume, or be evaluated, with another.
      steps_per_call: meta-steps fused per compiled call.
      seed: initialisation and task-sampling seed.
      log_every: metrics period (steps).
      eval_every: validation period (steps; 0 disables).
      val_episodes: validation episodes per evaluation.
      checkpoint_every: checkpoint period (steps).
      progress: show a progress bar.
      devices: devices the meta-batch is sharded over (:mod:`metajax.parallel`): 0 for
        every device (one CPU, 8 simulated CPUs, a GPU, all TPU cores), 1 for a single
        one. A meta-batch that does not divide them is padded with weightless tasks.
      cpu_devices: on a CPU, split it into this many devices before JAX starts
        (:func:`metajax.cpu_devices`; 0: the CPU as one device), so the sharded step
        runs one stream of tasks per core: W1 3.2x learn2learn against 1.9x on one
        device, W2 2.2x against 1.9x (README, run 07f). The default, ``cores``, is one
        device per core where the meta-batch is a multiple of the cores and ``devices``
        is 0, else one device (:meth:`cpu_split`). Applied by the ``metajax`` CLI to
        ``train`` only where nothing else decides the CPU's devices:
        ``METAJAX_CPU_DEVICES`` (which overrides it), ``XLA_FLAGS`` setting the device
        count, ``--distributed`` options, or JAX already started (a script calling
        :func:`train` splits the CPU itself). No effect on a GPU or TPU. Runs whose
        config predates the option resume with 0.
      imaml_lam: iMAML's proximal regularisation strength lambda (``imaml`` only;
        Rajeswaran et al.'s Omniglot value, 2.0).
      imaml_cg_steps: conjugate-gradient steps of iMAML's implicit meta-gradient
        (``imaml`` only; the paper's 5).
      imaml_cg_damping: iMAML's ``cg_damping`` (:func:`~metajax.algorithms.imaml`;
        0 is the paper's system, 1 the authors' released code's).
      imaml_lam_damping: iMAML's ``lam_damping`` (0: the paper's; 10: the released
        code's).
      imaml_curvature: the matrix of iMAML's linear system: ``hessian`` (the
        paper's) or ``gauss-newton`` (:func:`~metajax.algorithms.gauss_newton_curvature`
        of conv4's logits and the cross-entropy; positive semi-definite).
      imaml_cg_negative_curvature: what iMAML's conjugate gradient does on a
        direction of non-positive curvature: ``skip`` it (the default) or ``stop``
        the solve there (truncated Newton-CG; ``cg_negative_curvature`` of
        :func:`~metajax.algorithms.imaml`).
      per_step_bn: per-step batch-norm scales and biases (MAML++'s BNWB;
        ``maml(per_step_params=conv4.batch_norm_mask)``); default: on for ``maml++``,
        off otherwise; for ``maml``, ``fomaml`` and ``maml++``. Runs whose config
        predates the option resume with it off (``LEGACY_DEFAULTS``).
      running_stats: also keep batch-norm running statistics (an exponential moving
        average of the batch statistics of every forward pass; per inner step with
        ``per_step_bn``, MAML++'s BNRS; :mod:`metajax.running_stats`), for
        ``metajax eval omniglot --batch-norm running``. Training still normalises with
        each batch's statistics, so the learned model is the same. Gradient-based
        algorithms only.
      bn_momentum: weight of each meta-step's statistics in the running average.
      backprop_steps: truncated meta-gradients: differentiate through only the last
        this-many inner steps (the earlier ones run under ``stop_gradient``; ``0`` is
        first order; default: all). For ``maml``, ``anil``, ``meta-sgd``, ``maml++``
        and ``learned-sgd`` (:func:`~metajax.maml`'s ``backprop_steps``).
      inner_momentum: initial momentum of ``learned-sgd``'s inner optimizer (its
        learning rate starts at ``inner_lr``); both are meta-learned.
    """

    # What a key missing from an older run's config.json stands for (the behaviour
    # before the option existed), so resuming or evaluating that run rebuilds it.
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {
        "per_step_bn": False,
        "outer_optimizer": "adam",
        "cpu_devices": 0,
    }

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
    outer_lr: float | None = None
    outer_optimizer: Literal["adam", "sgd"] | None = None
    steps: int = 60_000
    channels: int = 64
    conv: conv4.ConvImpl = "auto"
    steps_per_call: int = 1
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500
    val_episodes: int = 200
    checkpoint_every: int = 250
    progress: bool = True
    devices: int = 0
    cpu_devices: int | Literal["cores"] = "cores"
    imaml_lam: float = 2.0
    imaml_cg_steps: int = 5
    imaml_cg_damping: float = 0.0
    imaml_lam_damping: float = 0.0
    imaml_curvature: Literal["hessian", "gauss-newton"] = "hessian"
    imaml_cg_negative_curvature: Literal["skip", "stop"] = "skip"
    per_step_bn: bool | None = None
    running_stats: bool = False
    bn_momentum: float = 0.1
    backprop_steps: int | None = None
    inner_momentum: float = 0.5

    def cpu_split(self, cores: int) -> int:
        """The CPU devices to train on, on a host with ``cores`` cores (0: one device).

        ``cpu_devices`` as given if it is a number. For ``cores``: one device per core
        where that shards the step evenly (``devices`` 0, and the meta-batch a
        multiple of ``cores``, so no device computes weightless padding, e.g. at
        ``--meta-batch 1``), else 0. Reads no JAX state: the CLI calls it before JAX
        starts.
        """
        if self.cpu_devices != "cores":
            return int(self.cpu_devices)
        meta_batch = _default_meta_batch(self.ways) if self.meta_batch is None else self.meta_batch
        if cores < 2 or self.devices != 0 or meta_batch % cores:
            return 0
        return cores

    def resolved(self) -> OmniglotTrain:
        """The config with every paper default filled in."""
        five = self.ways <= 5
        outer = self.outer_optimizer or ("sgd" if self.algorithm == "reptile" else "adam")
        lr, steps, eval_steps = _ALGORITHM_INNER_DEFAULTS.get(
            self.algorithm, (0.4 if five else 0.1, 1 if five else 5, 3 if five else 5)
        )
        return dataclasses.replace(
            self,
            queries=self.shots if self.queries is None else self.queries,
            inner_lr=lr if self.inner_lr is None else self.inner_lr,
            inner_steps=steps if self.inner_steps is None else self.inner_steps,
            eval_inner_steps=eval_steps if self.eval_inner_steps is None else self.eval_inner_steps,
            meta_batch=_default_meta_batch(self.ways)
            if self.meta_batch is None
            else self.meta_batch,
            conv=conv4.resolve_conv(self.conv),
            per_step_bn=self.algorithm == "maml++"
            if self.per_step_bn is None
            else self.per_step_bn,
            outer_optimizer=outer,
            outer_lr=(1.0 if outer == "sgd" else 1e-3) if self.outer_lr is None else self.outer_lr,
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
      ways: evaluate these numbers of ways (default: as trained; at most the head's
        size, any number for ``protonet``). Several settings (``--ways 3 5 --shots 1
        5``) share one compiled program: episodes are padded to the largest setting
        and padding has weight 0.
      shots: evaluate these numbers of shots (default: as trained).
      batch_norm: ``transductive`` (the paper's: each batch is normalised with its own
        statistics), ``population`` (non-transductive: fixed statistics of the
        meta-parameters, :func:`~metajax.models.conv4.population_stats` over
        ``stats_batches`` training-split support sets, so every query is classified
        on its own) or ``running`` (non-transductive: the running statistics kept in
        training, per inner step where the run has per-step batch norm; runs trained
        with ``--running-stats``).
      stats_batches: support sets used for ``population`` statistics.
    """

    workdir: str = "runs/omniglot/maml-5w1s"
    episodes: int = 600
    queries: int | None = None
    inner_steps: int | None = None
    split: Literal["test", "val"] = "test"
    seed: int = 2024
    batch: int = 50
    ways: tuple[int, ...] | None = None
    shots: tuple[int, ...] | None = None
    batch_norm: Literal["transductive", "population", "running"] = "transductive"
    stats_batches: int = 500


def classifier_logits(conv: conv4.ConvImpl, batch_stats=None, running: bool = False):
    """``predict_fn(params, batch) -> logits`` of conv4.

    Padded examples (weight 0) are excluded from the batch-norm statistics.
    ``batch_stats`` (from :func:`~metajax.models.conv4.population_stats`) replaces
    the batch statistics with fixed ones; ``running`` uses the running statistics
    held in the parameters.
    """

    def predict_fn(params, batch):
        return conv4.apply(
            params,
            batch.inputs,
            conv=conv,
            example_mask=batch.weights > 0,
            batch_stats=batch_stats,
            running=running,
        )

    return predict_fn


def classifier_output_loss(logits, batch):
    """The weighted cross-entropy of ``logits``, accuracy in aux."""
    loss = weighted_mean(softmax_cross_entropy(logits, batch.targets), batch.weights)
    return loss, {"accuracy": weighted_mean(accuracy(logits, batch.targets), batch.weights)}


def classifier_loss(conv: conv4.ConvImpl, batch_stats=None, running: bool = False):
    """``loss_fn(params, batch)`` of conv4: :func:`classifier_output_loss` of
    :func:`classifier_logits` (same arguments)."""
    predict_fn = classifier_logits(conv, batch_stats, running)

    def loss_fn(params, batch):
        return classifier_output_loss(predict_fn(params, batch), batch)

    return loss_fn


def classifier_features(conv: conv4.ConvImpl, batch_stats=None):
    """``embed_fn(params, batch)`` of conv4 for metric methods: the features before the head."""

    def embed_fn(params, batch):
        return conv4.apply(
            params,
            batch.inputs,
            conv=conv,
            example_mask=batch.weights > 0,
            batch_stats=batch_stats,
            return_features=True,
        )

    return embed_fn


def build_learner(cfg: OmniglotTrain, batch_stats=None, running: bool = False):
    """The run's meta-learner; ``batch_stats``/``running`` select non-transductive BN."""
    cfg = cfg.resolved()
    if cfg.running_stats and cfg.algorithm == "protonet":
        raise ValueError("--running-stats is for the gradient-based algorithms, not protonet.")
    if cfg.algorithm == "protonet":
        return algorithms.protonet(classifier_features(cfg.conv, batch_stats), num_classes=cfg.ways)
    factory = algorithms.ALGORITHMS[cfg.algorithm]
    extra = {}
    if cfg.algorithm == "imaml":
        extra = {
            "lam": cfg.imaml_lam,
            "cg_steps": cfg.imaml_cg_steps,
            "cg_damping": cfg.imaml_cg_damping,
            "lam_damping": cfg.imaml_lam_damping,
            "cg_negative_curvature": cfg.imaml_cg_negative_curvature,
        }
        if cfg.imaml_curvature == "gauss-newton":
            extra["curvature"] = algorithms.gauss_newton_curvature(
                classifier_logits(cfg.conv, batch_stats, running), classifier_output_loss
            )
    if cfg.algorithm == "learned-sgd":
        extra["momentum"] = cfg.inner_momentum
    elif cfg.inner_momentum != OmniglotTrain.inner_momentum:
        raise ValueError(
            f"--inner-momentum is for --algorithm learned-sgd; got --algorithm {cfg.algorithm}."
        )
    if cfg.backprop_steps is not None:
        if cfg.algorithm not in _TRUNCATABLE:
            raise ValueError(
                f"--backprop-steps is for {', '.join(_TRUNCATABLE)}; got --algorithm "
                f"{cfg.algorithm}."
            )
        if not 0 <= cfg.backprop_steps <= cfg.inner_steps:
            raise ValueError(
                f"--backprop-steps must be between 0 and --inner-steps ({cfg.inner_steps}); "
                f"got {cfg.backprop_steps}."
            )
        extra["backprop_steps"] = cfg.backprop_steps
    if cfg.per_step_bn:
        if cfg.algorithm not in ("maml", "fomaml", "maml++"):
            raise ValueError(
                f"--per-step-bn is for maml, fomaml and maml++; got --algorithm {cfg.algorithm}."
            )
        extra["per_step_params"] = conv4.batch_norm_mask
    return factory(
        classifier_loss(cfg.conv, batch_stats, running),
        inner_lr=cfg.inner_lr,
        inner_steps=cfg.inner_steps,
        **extra,
    )


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
    params = conv4.init(
        init_key, ways=cfg.ways, channels=cfg.channels, running_stats=cfg.running_stats
    )
    if cfg.outer_optimizer == "sgd":  # Reptile's interpolation, eps annealed to 0
        outer = optax.sgd(optax.linear_schedule(cfg.outer_lr, 0.0, cfg.steps))
    else:  # MAML++ anneals the outer learning rate with a cosine to 1e-5 over the run.
        lr = cfg.outer_lr
        outer = optax.adam(
            algorithms.cosine_outer_lr(lr, cfg.steps) if cfg.algorithm == "maml++" else lr
        )
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


def make_padded_episode_eval(learner, *, max_ways, max_shots, queries, inner_steps):
    """Jitted ``(meta_params, keys [batch], images, ways, shots) -> accuracy [batch, steps + 1]``.

    ``ways`` and ``shots`` are traced: every setting up to ``max_ways`` x ``max_shots``
    runs in the same compiled program (padding has weight 0, excluded from losses,
    accuracies and batch-norm statistics).
    """
    eval_step = make_eval_step(learner, inner_steps=inner_steps)

    @jax.jit
    def run(meta_params, keys, images, ways, shots):
        tasks = jax.vmap(
            lambda k: episodes.sample_episode_padded(
                k,
                images,
                ways=ways,
                shots=shots,
                queries=queries,
                max_ways=max_ways,
                max_shots=max_shots,
                max_queries=queries,
            )
        )(keys)
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


def make_step(cfg: OmniglotTrain, learner, outer: optax.GradientTransformation):
    """The run's unjitted train step ``(state, images) -> (state, metrics)``.

    It draws the meta-batch's episodes from ``images`` on the device and runs
    ``cfg.steps_per_call`` meta-steps per call.
    """
    cfg = cfg.resolved()
    tracker = None
    if cfg.running_stats:
        tracker = running_stats.track(
            learner,
            lambda p, b: conv4.batch_statistics(
                p, b.inputs, conv=cfg.conv, example_mask=b.weights > 0
            ),
            conv4.update_running_stats,
            momentum=cfg.bn_momentum,
        )
    step = make_train_step(
        learner,
        outer,
        sample_tasks=_episode_sampler(cfg.ways, cfg.shots, cfg.queries),
        meta_batch=cfg.meta_batch,
        running_stats=tracker,
    )
    return repeat_step(step, cfg.steps_per_call) if cfg.steps_per_call > 1 else step


def train(cfg: OmniglotTrain) -> TrainState:
    """Meta-trains (or resumes) one Omniglot run; returns the final state."""
    cfg = with_legacy_defaults(cfg, cfg.workdir).resolved()
    learner = build_learner(cfg)
    state, outer = initial_state(cfg)
    data = omniglot_data.load_omniglot(cfg.data_dir)
    train_images, train_checksum = load_images(cfg, "train", data)
    step = make_step(cfg, learner, outer)
    jitted, state, train_images = jit_on_devices(
        step, cfg.devices, cfg.meta_batch, state, train_images
    )

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
        legacy_defaults=OmniglotTrain.LEGACY_DEFAULTS,
    )


def load_run(workdir: str) -> tuple[OmniglotTrain, TrainState]:
    """Restores the newest checkpoint of a run directory with its config."""
    return restore_run(workdir, OmniglotTrain, lambda cfg: initial_state(cfg)[0])


def evaluate(cfg: OmniglotEval) -> dict:
    """Test accuracy with 95% CI after each inner step; writes ``eval_<split>.json``.

    With one setting (the default: the trained ways and shots) the result is one
    record; with several (``ways``/``shots`` lists) it has a ``settings`` list of
    records, all computed by one compiled program.
    """
    train_cfg, state = load_run(cfg.workdir)
    # The convolution formulation is this machine's choice, not the run's (same function).
    train_cfg = dataclasses.replace(train_cfg, conv="auto").resolved()
    ways_list = (train_cfg.ways,) if cfg.ways is None else tuple(cfg.ways)
    shots_list = (train_cfg.shots,) if cfg.shots is None else tuple(cfg.shots)
    # A classifier head fixes the most ways; prototypical networks have none and are
    # trained on more ways than they are tested on (Snell et al.: 60-way training).
    has_head = train_cfg.algorithm != "protonet"
    if min(ways_list) < 2 or (has_head and max(ways_list) > train_cfg.ways):
        raise ValueError(
            f"ways must be between 2 and the head's size {train_cfg.ways} (the run was "
            f"trained {train_cfg.ways}-way); got {ways_list}."
        )
    if min(shots_list) < 1:
        raise ValueError(f"shots must be >= 1; got {shots_list}.")
    data = omniglot_data.load_omniglot(train_cfg.data_dir)
    images, checksum = load_images(train_cfg, cfg.split, data)
    queries = train_cfg.queries if cfg.queries is None else cfg.queries
    steps = train_cfg.eval_inner_steps if cfg.inner_steps is None else cfg.inner_steps
    if images.shape[1] < max(shots_list) + queries:
        raise ValueError(
            f"shots + queries = {max(shots_list)} + {queries} exceeds the "
            f"{images.shape[1]} drawings per class."
        )

    batch_stats = None
    if cfg.batch_norm == "running" and not train_cfg.running_stats:
        raise ValueError(
            f"--batch-norm running needs a run trained with --running-stats; {cfg.workdir} "
            "keeps no running statistics (try --batch-norm population)."
        )
    if cfg.batch_norm == "population":
        if train_cfg.per_step_bn:
            raise ValueError(
                "--batch-norm population is not implemented for runs with per-step "
                "batch-norm weights (per_step_bn); evaluate them transductively."
            )
        train_images, _ = load_images(train_cfg, "train", data)
        keys = jax.random.split(jax.random.key(cfg.seed + 1), cfg.stats_batches)
        support = jax.vmap(
            lambda k: (
                episodes.sample_episode(
                    k, train_images, ways=train_cfg.ways, shots=train_cfg.shots, queries=0
                ).support.inputs
            )
        )(keys)
        batch_stats = conv4.population_stats(state.meta_params, support, conv=train_cfg.conv)
    running = cfg.batch_norm == "running"
    if has_head:
        learner = build_learner(train_cfg, batch_stats, running)
    else:  # prototypes for the largest evaluated number of ways
        learner = build_learner(dataclasses.replace(train_cfg, ways=max(ways_list)), batch_stats)

    settings = [(w, k) for w in ways_list for k in shots_list]
    if settings == [(train_cfg.ways, train_cfg.shots)]:
        plain = make_episode_eval(
            learner, ways=train_cfg.ways, shots=train_cfg.shots, queries=queries, inner_steps=steps
        )
        runs = {settings[0]: plain}
    else:
        padded = make_padded_episode_eval(
            learner,
            max_ways=max(ways_list),
            max_shots=max(shots_list),
            queries=queries,
            inner_steps=steps,
        )
        runs = {
            (w, k): (lambda p, keys, x, w=w, k=k: padded(p, keys, x, w, k)) for w, k in settings
        }

    records = []
    for (ways, shots), run in runs.items():
        acc = episode_accuracy(
            run,
            state.meta_params,
            images,
            episodes_count=cfg.episodes,
            batch=cfg.batch,
            seed=cfg.seed,
        )
        mean = acc.mean(0)
        ci = 1.96 * acc.std(0, ddof=1) / np.sqrt(acc.shape[0])
        records.append(
            {
                "ways": ways,
                "shots": shots,
                "accuracy_after_step": [float(m) for m in mean],
                "ci95_after_step": [float(c) for c in ci],
            }
        )
        for k, (m, c) in enumerate(zip(mean, ci)):
            print(
                f"{ways}-way {shots}-shot {cfg.split} accuracy after {k} inner step(s): "
                f"{100 * m:.2f} ± {100 * c:.2f}%  ({cfg.episodes} episodes, "
                f"{cfg.batch_norm} batch norm)"
            )

    result = {
        "workdir": cfg.workdir,
        "algorithm": train_cfg.algorithm,
        "trained_ways": train_cfg.ways,
        "trained_shots": train_cfg.shots,
        "queries_per_class": queries,
        "meta_steps": int(state.step),
        "split": cfg.split,
        "split_checksum": checksum,
        "episodes": cfg.episodes,
        "batch_norm": cfg.batch_norm,
    }
    if len(records) == 1:
        result.update(records[0])
    else:
        result["settings"] = records
    learned = state.meta_params.get("inner_hyperparams")  # learned-sgd's
    if learned:
        result["learned_inner_hyperparams"] = {k: float(v) for k, v in learned.items()}
        print(
            "learned inner optimizer: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result["learned_inner_hyperparams"].items())
        )
    suffix = "" if cfg.batch_norm == "transductive" else f"_{cfg.batch_norm}"
    with open(os.path.join(cfg.workdir, f"eval_{cfg.split}{suffix}.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result
