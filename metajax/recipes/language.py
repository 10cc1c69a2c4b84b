"""Self-supervised meta-learning for language, at a size a CPU can train.

Three entry points (see :mod:`metajax.cli`):

* ``metajax train text-mlm`` (:class:`TextMLMTrain`, :func:`train_mlm`): a small
  transformer encoder meta-learns to adapt by masked-LM on one text source per
  task (:func:`metajax.data.text_tasks.sample_mlm_task`); ``--algorithm pretrain``
  trains the plain masked-LM baseline on the same tasks (support and query
  together, no inner loop), fine-tuned at test time with the same inner loop.
* ``metajax eval text-mlm`` (:class:`TextMLMEval`, :func:`evaluate_mlm`): held-out
  query masked-token loss and accuracy after 0, 1, 5 inner steps on held-out
  authors, with 95% confidence intervals over tasks.
* ``metajax train smlmt`` (:class:`SMLMTTrain`, :func:`train_smlmt`): meta-train on
  Subset Masked LM Tasks (Bansal et al. 2020), optionally mixed with supervised
  CLINC150 episodes from the training domains (``--hybrid-fraction``), starting
  from a text-mlm run (``--init-from``) or from scratch.
* ``metajax eval intents`` (:class:`IntentEval`, :func:`evaluate_intents`): N-way
  K-shot intent classification on CLINC150's held-out domains and on BANKING77,
  by fine-tuning (the MAML inner loop on a zero-initialised head) and by
  nearest-prototype classification on the encoder's features, for any mix of
  text-mlm and smlmt runs.

The data split is fixed here: :data:`TRAIN_SOURCES` (11 text sources) and
CLINC150's :data:`TRAIN_DOMAINS` are the only text any run trains on (and the only
text the vocabulary is built from); :data:`HELD_OUT_SOURCES` (Chesterton and
Whitman: two authors, four books), CLINC150's :data:`HELD_OUT_DOMAINS` and all of
BANKING77 are for evaluation only.

Vocabulary (``--tokenizer``): ``word`` (default; the ``--vocab-size`` most frequent
words) or ``bpe`` (a byte-pair-encoding subword vocabulary of ``--vocab-size``
pieces, :mod:`metajax.data.subword`). Either is built from the training text only
and saved in the run's ``vocab.json``, which resuming, ``--init-from`` and the
evaluations read back, so they use exactly the run's vocabulary. Runs made before
``vocab.json`` existed are word runs and rebuild their vocabulary as before.

When several runs or methods are evaluated on the same tasks (the held-out MLM
tasks of one vocabulary, or the intent episodes, whose utterances do not depend on
the vocabulary), the evaluations also report paired differences with a 95% Student-t
interval over the per-task differences (:func:`paired_ci`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import algorithms
from metajax.data import subword, text_tasks
from metajax.data import text as text_data
from metajax.losses import accuracy, masked_token_loss, softmax_cross_entropy, weighted_mean
from metajax.models.transformer import TransformerEncoder, adapt_subset
from metajax.runner import is_main_process, restore_run, run_training, with_legacy_defaults
from metajax.train import (
    TrainState,
    init_train_state,
    jit_train_step,
    make_eval_step,
    make_train_step,
    repeat_step,
)

HELD_OUT_SOURCES = (
    "gutenberg/chesterton-ball",
    "gutenberg/chesterton-brown",
    "gutenberg/chesterton-thursday",
    "gutenberg/whitman-leaves",
)
TRAIN_SOURCES = tuple(
    name
    for name in text_data.TEXT_SOURCES
    if name not in HELD_OUT_SOURCES and name != "wikitext-2/test"
)
HELD_OUT_DOMAINS = ("banking", "credit_cards", "kitchen_and_dining")
TRAIN_DOMAINS = (
    "home",
    "auto_and_commute",
    "travel",
    "utility",
    "work",
    "small_talk",
    "meta",
)

MLMAlgorithm = Literal["maml", "fomaml", "reptile", "pretrain"]
SMLMTAlgorithm = Literal["maml", "fomaml", "protonet", "proto-maml"]
AdaptSubset = Literal["heads", "last", "adapters", "all"]
Tokenizer = Literal["word", "bpe"]
VOCAB_FILE = "vocab.json"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The encoder and its vocabulary (shared by every language run).

    Attributes:
      vocab_size: vocabulary size (words or subword pieces, with the 3 special
        tokens), built from the training text.
      width: model width.
      depth: encoder blocks.
      heads: attention heads.
      mlp_dim: MLP hidden width.
      seq_len: tokens per passage or sentence (subword pieces with ``bpe``).
      adapter_rank: per-block adapter width (0: none).
      tokenizer: ``word`` (the most frequent words; others are ``<unk>``) or ``bpe``
        (byte-pair-encoding subword pieces, :mod:`metajax.data.subword`). Runs whose
        config predates the option are word runs (``LEGACY_DEFAULTS``).
    """

    # What a key missing from an older run's config.json stands for.
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"tokenizer": "word"}

    vocab_size: int = 3000
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 256
    seq_len: int = 32
    adapter_rank: int = 0
    tokenizer: Tokenizer = "word"


_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def _model_fields_from_init(cfg):
    """``cfg`` with the model fields of the run named by ``cfg.init_from`` (if any)."""
    if cfg.init_from is None:
        return cfg
    with open(os.path.join(cfg.init_from, "config.json")) as f:
        init_cfg = {**ModelConfig.LEGACY_DEFAULTS, **json.load(f)}
    return dataclasses.replace(cfg, **{k: init_cfg[k] for k in _MODEL_FIELDS})


def model_config(cfg) -> ModelConfig:
    return ModelConfig(**{k: getattr(cfg, k) for k in _MODEL_FIELDS})


def make_model(mc: ModelConfig, num_classes: int = 5) -> TransformerEncoder:
    return TransformerEncoder(
        vocab_size=mc.vocab_size,
        num_classes=num_classes,
        width=mc.width,
        depth=mc.depth,
        heads=mc.heads,
        mlp_dim=mc.mlp_dim,
        max_len=mc.seq_len,
        adapter_rank=mc.adapter_rank,
    )


def init_params(mc: ModelConfig, key: jax.Array, num_classes: int = 5):
    model = make_model(mc, num_classes)
    return model.init(key, jnp.zeros((1, mc.seq_len), jnp.int32))


@functools.lru_cache(maxsize=4)
def load_training_text(data_dir: str | None) -> tuple[dict[str, str], tuple[str, ...]]:
    """``({source: text} for TRAIN_SOURCES, CLINC150 train-domain train utterances)``."""
    texts = text_data.load_text_sources(TRAIN_SOURCES, data_dir)
    clinc = text_data.load_clinc150(("train",), data_dir)
    utterances = tuple(
        t for t, y in zip(clinc.texts, clinc.labels) if clinc.domains[y] in TRAIN_DOMAINS
    )
    return texts, utterances


@functools.lru_cache(maxsize=4)
def shared_vocab(vocab_size: int, data_dir: str | None = None, tokenizer: Tokenizer = "word"):
    """A vocabulary built from the training text only (deterministic).

    Args:
      vocab_size: entries, special tokens included.
      data_dir: folder holding ``text/``.
      tokenizer: ``word`` (:func:`metajax.data.text.build_vocab`) or ``bpe``
        (:func:`metajax.data.subword.train_bpe`).
    """
    texts, utterances = load_training_text(data_dir)
    corpus = [*texts.values(), *utterances]
    if tokenizer == "word":
        return text_data.build_vocab(corpus, vocab_size)
    if tokenizer == "bpe":
        return subword.train_bpe(corpus, vocab_size)
    raise ValueError(f"unknown tokenizer {tokenizer!r}; use word or bpe.")


@functools.lru_cache(maxsize=8)
def _read_vocab(path: str, mtime: float):
    del mtime  # part of the cache key only: a rewritten file is read again
    return text_data.load_vocab(path)


def run_vocab(cfg, workdir: str | None = None):
    """The vocabulary of a run: ``workdir/vocab.json`` if saved, else rebuilt.

    Args:
      cfg: the run's config (``tokenizer``, ``vocab_size``, ``data_dir``).
      workdir: the run directory (``None``: rebuild from the training text).

    Raises:
      ValueError: if the saved vocabulary is not of the config's kind and size.
    """
    if workdir is not None:
        path = os.path.join(workdir, VOCAB_FILE)
        if os.path.exists(path):
            vocab = _read_vocab(os.path.abspath(path), os.path.getmtime(path))
            kind = "bpe" if isinstance(vocab, subword.SubwordVocab) else "word"
            if kind != cfg.tokenizer or len(vocab) > cfg.vocab_size:
                raise ValueError(
                    f"{path} holds a {kind} vocabulary of {len(vocab)} entries, but the run's "
                    f"config says tokenizer={cfg.tokenizer}, vocab_size={cfg.vocab_size}."
                )
            return vocab
    return shared_vocab(cfg.vocab_size, cfg.data_dir, cfg.tokenizer)


def _training_vocab(cfg):
    """A training run's vocabulary, saved to its ``vocab.json`` on first use.

    Resuming reads the run's own file; a run started ``--init-from`` another reads
    that run's; otherwise it is built from the training text. Nothing is written
    into a workdir that holds a run of another tokenizer or size (training then
    refuses to resume it).
    """
    saved = [
        d for d in (cfg.workdir, cfg.init_from) if d and os.path.exists(os.path.join(d, VOCAB_FILE))
    ]
    vocab = run_vocab(cfg, saved[0] if saved else None)
    path = os.path.join(cfg.workdir, VOCAB_FILE)
    config_path = os.path.join(cfg.workdir, "config.json")
    if is_main_process() and not os.path.exists(path):
        same_run = True
        if os.path.exists(config_path):
            with open(config_path) as f:
                old = {**ModelConfig.LEGACY_DEFAULTS, **json.load(f)}
            same_run = (old["tokenizer"], old["vocab_size"]) == (cfg.tokenizer, cfg.vocab_size)
        if same_run:
            os.makedirs(cfg.workdir, exist_ok=True)
            text_data.save_vocab(vocab, path)
    return vocab


def mlm_loss(model: TransformerEncoder):
    """``(params, batch) -> (L_mask, {"accuracy"})`` on masked passages."""

    def loss_fn(params, batch):
        logits = model.apply(params, batch.inputs, method=model.mlm)
        return masked_token_loss(logits, batch.targets, batch.weights)

    return loss_fn


def classification_loss(model: TransformerEncoder):
    """Weighted cross-entropy of the classification head, with accuracy."""

    def loss_fn(params, batch):
        logits = model.apply(params, batch.inputs, method=model.classify)
        loss = weighted_mean(softmax_cross_entropy(logits, batch.targets), batch.weights)
        return loss, {"accuracy": weighted_mean(accuracy(logits, batch.targets), batch.weights)}

    return loss_fn


def feature_embedding(model: TransformerEncoder):
    return lambda params, batch: model.apply(params, batch.inputs, method=model.features)


def _mean_ci(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))


def student_t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``p >= 0.5``) of Student's t with ``df`` degrees of freedom.

    Bisection on the CDF, whose integral of the density is done by Simpson's rule on
    4,000 intervals: accurate to about 1e-6 for ``df >= 1`` (no SciPy needed).
    """
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"need 0.5 <= p < 1 and df >= 1; got p={p}, df={df}.")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x):
        t = np.linspace(0.0, x, 4001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df))
        return 0.5 + (x / 4000 / 3) * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def paired_ci(a, b, confidence: float = 0.95) -> dict:
    """Mean paired difference ``a - b`` with a Student-t confidence interval.

    For per-task values of two methods on the same tasks, ``d_i = a_i - b_i``; the
    interval is ``mean(d) ± t_{(1+confidence)/2, n-1} * std(d, ddof=1) / sqrt(n)``.

    Args:
      a: ``[n]`` per-task values of the first method.
      b: ``[n]`` per-task values of the second, on the same tasks in the same order.
      confidence: coverage of the interval.

    Returns:
      ``{"difference", "ci", "low", "high", "tasks", "t"}``: ``ci`` is the half-width
      and ``t`` the quantile used.
    """
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 1 or d.shape[0] < 2:
        raise ValueError(f"need two equal-length 1-D arrays of >= 2 values; got shape {d.shape}.")
    t = student_t_quantile((1 + confidence) / 2, d.shape[0] - 1)
    mean, half = float(d.mean()), float(t * d.std(ddof=1) / math.sqrt(d.shape[0]))
    return {
        "difference": mean,
        "ci": half,
        "low": mean - half,
        "high": mean + half,
        "tasks": int(d.shape[0]),
        "t": t,
    }


def _batched(fn, keys: jax.Array, batch: int) -> dict[str, np.ndarray]:
    """``fn(keys[chunk])`` over chunks of ``batch`` keys (one compiled shape), concatenated."""
    n = keys.shape[0]
    outs = []
    for start in range(0, n, batch):
        chunk = keys[start : start + batch]
        size = chunk.shape[0]
        if size < batch:
            chunk = jnp.concatenate([chunk, keys[: batch - size]])
        outs.append(jax.tree.map(lambda x, s=size: np.asarray(x)[:s], fn(chunk)))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


# ----------------------------------------------------------------------------------------
# Domain-adaptation masked LM
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextMLMTrain(ModelConfig):
    """Meta-train the encoder on domain-adaptation masked-LM tasks.

    Attributes:
      workdir: run directory (checkpoints, metrics, config); rerun to resume.
      data_dir: folder holding ``text/`` (default ``$METAJAX_DATA_DIR`` or ``../shared/data``).
      algorithm: ``maml``/``fomaml``/``reptile``, or ``pretrain`` (plain masked LM on
        the same passages: the non-meta baseline).
      init_from: a text-mlm run whose parameters this run starts from (its model
        fields replace these), e.g. MAML continued from a plain-MLM encoder;
        ``None``: random initialisation.
      steps: meta-steps.
      meta_batch: tasks (sources) per meta-step.
      support: support passages per task.
      query: query passages per task.
      mask_rate: masking rate.
      inner_lr: inner SGD step size.
      inner_steps: inner steps during meta-training.
      adapt: parameters adapted by the inner loop (see ``adapt_subset``).
      outer_lr: Adam learning rate.
      seed: seed of initialisation and task sampling.
      steps_per_call: meta-steps fused into one compiled call.
      log_every: metrics period (steps).
      eval_every: held-out monitoring period (steps; 0 disables). Monitoring only:
        nothing is selected on it.
      checkpoint_every: checkpoint period (steps).
      progress: progress bar.
    """

    workdir: str = "runs/text-mlm/maml"
    data_dir: str | None = None
    algorithm: MLMAlgorithm = "maml"
    init_from: str | None = None
    steps: int = 500
    meta_batch: int = 4
    support: int = 8
    query: int = 8
    mask_rate: float = 0.15
    inner_lr: float = 0.1
    inner_steps: int = 1
    adapt: AdaptSubset = "last"
    outer_lr: float = 1e-3
    seed: int = 0
    steps_per_call: int = 10
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 100
    progress: bool = True

    def resolved(self) -> TextMLMTrain:
        """Takes the model fields from ``init_from``'s config."""
        return _model_fields_from_init(self)


def build_mlm_learner(cfg: TextMLMTrain, inner_lr: float | None = None):
    model = make_model(model_config(cfg))
    factory = algorithms.ALGORITHMS[cfg.algorithm]
    learner = factory(
        mlm_loss(model),
        inner_lr=cfg.inner_lr if inner_lr is None else inner_lr,
        inner_steps=cfg.inner_steps,
        adapt=adapt_subset(cfg.adapt, cfg.depth),
    )
    return model, learner


def mlm_data(cfg, sources: tuple[str, ...], vocab) -> text_tasks.TokenStreams:
    if sources == TRAIN_SOURCES:
        texts = load_training_text(cfg.data_dir)[0]
    else:
        texts = text_data.load_text_sources(sources, cfg.data_dir)
    return text_tasks.make_token_streams(vocab, texts)


def mlm_sampler(cfg, *, support: int, query: int):
    return functools.partial(
        text_tasks.sample_mlm_task,
        support=support,
        query=query,
        seq_len=cfg.seq_len,
        rate=cfg.mask_rate,
    )


def initial_mlm_state(cfg: TextMLMTrain, *, load_init: bool = True):
    _, learner = build_mlm_learner(cfg)
    init_key, task_key = jax.random.split(jax.random.key(cfg.seed))
    outer = optax.adam(cfg.outer_lr)
    params = init_params(model_config(cfg), init_key)
    if cfg.init_from is not None and load_init:
        init_cfg, init_state = load_mlm_run(cfg.init_from)
        start = build_mlm_learner(init_cfg)[1].params(init_state.meta_params)
        params = jax.tree.map(lambda fresh, p: jnp.asarray(p, fresh.dtype), params, start)
    return init_train_state(learner, params, outer, task_key), outer


def train_mlm(cfg: TextMLMTrain) -> TrainState:
    """Meta-trains (or resumes) one text-mlm run; returns the final state."""
    cfg = with_legacy_defaults(cfg, cfg.workdir).resolved()
    vocab = _training_vocab(cfg)
    _, learner = build_mlm_learner(cfg)
    state, outer = initial_mlm_state(cfg)
    streams = mlm_data(cfg, TRAIN_SOURCES, vocab)
    source_ids = jnp.arange(len(TRAIN_SOURCES))
    sampler = mlm_sampler(cfg, support=cfg.support, query=cfg.query)
    step = repeat_step(
        make_train_step(learner, outer, sample_tasks=sampler, meta_batch=cfg.meta_batch),
        cfg.steps_per_call,
    )
    train_step = jit_train_step(step)

    eval_fn = None
    if cfg.eval_every:
        held_out = mlm_data(cfg, HELD_OUT_SOURCES, vocab)
        held_ids = jnp.arange(len(HELD_OUT_SOURCES))
        keys = jax.random.split(jax.random.key(cfg.seed + 1_000_003), 16)
        val_tasks = jax.vmap(lambda k: sampler(k, held_out, held_ids))(keys)
        eval_step = jax.jit(make_eval_step(learner, inner_steps=max(cfg.inner_steps, 1)))

        def eval_fn(state):
            m = eval_step(state.meta_params, val_tasks)
            loss, acc = m["query_loss"].mean(0), m["query_accuracy"].mean(0)
            return {
                "heldout_loss_pre": loss[0],
                "heldout_loss_post": loss[-1],
                "heldout_acc_pre": acc[0],
                "heldout_acc_post": acc[-1],
            }

    return run_training(
        workdir=cfg.workdir,
        state=state,
        train_step=lambda s: train_step(s, streams, source_ids),
        num_steps=cfg.steps,
        steps_per_call=cfg.steps_per_call,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every,
        eval_fn=eval_fn,
        checkpoint_every=cfg.checkpoint_every,
        config=dataclasses.asdict(cfg),
        progress=cfg.progress,
        description=f"text-mlm/{cfg.algorithm}",
        legacy_defaults=ModelConfig.LEGACY_DEFAULTS,
    )


def load_mlm_run(workdir: str) -> tuple[TextMLMTrain, TrainState]:
    return restore_run(
        workdir, TextMLMTrain, lambda cfg: initial_mlm_state(cfg, load_init=False)[0]
    )


@dataclasses.dataclass(frozen=True)
class TextMLMEval:
    """Held-out masked-LM adaptation: query loss/accuracy after k inner steps.

    Attributes:
      workdirs: text-mlm runs (e.g. a maml run and a pretrain run).
      steps: report after these numbers of inner steps (0 = no adaptation).
      num_tasks: held-out tasks (one held-out source each, random passages).
      support: support passages per task.
      query: query passages per task.
      inner_lr: inner SGD step size (``None``: each run's own).
      batch: tasks per compiled call.
      seed: seed of the held-out tasks (the same tasks for every run).
      out: folder for ``text_mlm_eval.{json,md}`` (default: the first workdir).
      data_dir: folder holding ``text/``.
    """

    workdirs: tuple[str, ...] = ("runs/text-mlm/maml", "runs/text-mlm/pretrain")
    steps: tuple[int, ...] = (1, 5)
    num_tasks: int = 200
    support: int = 8
    query: int = 8
    inner_lr: float | None = None
    batch: int = 20
    seed: int = 4242
    out: str | None = None
    data_dir: str | None = None


def evaluate_mlm(cfg: TextMLMEval) -> dict:
    """Evaluates each run on the same held-out tasks; writes JSON and a markdown table.

    Runs that share a vocabulary, ``seq_len`` and ``mask_rate`` see the very same
    tasks, so each pair of them also gets the paired difference of query loss and
    accuracy per task with a 95% t interval (``results["paired"]``); runs with
    different vocabularies are not compared (their tokens, and so their losses,
    differ).
    """
    steps = (0, *cfg.steps)
    results = {"config": dataclasses.asdict(cfg), "runs": {}, "paired": []}
    per_task, task_kind = {}, {}
    for workdir in cfg.workdirs:
        train_cfg, state = load_mlm_run(workdir)
        if cfg.data_dir is not None:
            train_cfg = dataclasses.replace(train_cfg, data_dir=cfg.data_dir)
        _, learner = build_mlm_learner(train_cfg, cfg.inner_lr)
        vocab = run_vocab(train_cfg, workdir)
        held_out = mlm_data(train_cfg, HELD_OUT_SOURCES, vocab)
        sampler = mlm_sampler(train_cfg, support=cfg.support, query=cfg.query)
        eval_step = make_eval_step(learner, inner_steps=max(steps))

        @jax.jit
        def run(keys, meta_params, held_out, sampler=sampler, eval_step=eval_step):
            tasks = jax.vmap(lambda key: sampler(key, held_out, jnp.arange(len(HELD_OUT_SOURCES))))(
                keys
            )
            m = eval_step(meta_params, tasks)
            return {"loss": m["query_loss"], "accuracy": m["query_accuracy"]}

        keys = jax.random.split(jax.random.key(cfg.seed), cfg.num_tasks)
        metrics = _batched(
            lambda chunk, run=run, state=state, held_out=held_out: run(
                chunk, state.meta_params, held_out
            ),
            keys,
            cfg.batch,
        )
        results["runs"][workdir] = {
            "algorithm": train_cfg.algorithm,
            "tokenizer": train_cfg.tokenizer,
            "vocab_size": len(vocab),
            "meta_steps": int(state.step),
            "inner_lr": train_cfg.inner_lr if cfg.inner_lr is None else cfg.inner_lr,
            "adapt": train_cfg.adapt,
            **{
                name: {str(k): _mean_ci(values[:, k]) for k in steps}
                for name, values in metrics.items()
            },
            "per_task": {
                name: {str(k): np.round(values[:, k], 6).tolist() for k in steps}
                for name, values in metrics.items()
            },
        }
        per_task[workdir] = metrics
        task_kind[workdir] = (vocab, train_cfg.seq_len, train_cfg.mask_rate)
    for a, b in itertools.combinations(cfg.workdirs, 2):
        if task_kind[a] != task_kind[b]:
            continue
        for name in ("loss", "accuracy"):
            for k in steps:
                results["paired"].append(
                    {
                        "a": a,
                        "b": b,
                        "metric": name,
                        "inner_steps": k,
                        **paired_ci(per_task[a][name][:, k], per_task[b][name][:, k]),
                    }
                )
    table = format_mlm_table(results, steps)
    out = cfg.out or cfg.workdirs[0]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "text_mlm_eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "text_mlm_eval.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return results


def format_mlm_table(results: dict, steps) -> str:
    head = "| run | algorithm | meta-steps | inner lr | " + " | ".join(
        f"loss / acc after {k}" for k in steps
    )
    lines = [head + " |", "|" + "---|" * (4 + len(steps))]
    for workdir, run in results["runs"].items():
        cells = [
            f"{run['loss'][str(k)][0]:.3f} ± {run['loss'][str(k)][1]:.3f} / "
            f"{100 * run['accuracy'][str(k)][0]:.2f}% ± {100 * run['accuracy'][str(k)][1]:.2f}"
            for k in steps
        ]
        lines.append(
            f"| `{workdir}` | {run['algorithm']} | {run['meta_steps']} | {run['inner_lr']} | "
            + " | ".join(cells)
            + " |"
        )
    if results.get("paired"):
        lines += [
            "",
            "Paired differences a - b over the same tasks (mean, 95% Student-t interval of the "
            "per-task differences):",
            "",
            "| a | b | metric | inner steps | a - b | 95% CI |",
            "|---|---|---|---|---|---|",
        ]
        for p in results["paired"]:
            scale, unit = (100, " pts") if p["metric"] == "accuracy" else (1, "")
            lines.append(
                f"| `{p['a']}` | `{p['b']}` | {p['metric']} | {p['inner_steps']} | "
                f"{scale * p['difference']:+.3f}{unit} | "
                f"[{scale * p['low']:+.3f}, {scale * p['high']:+.3f}] |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# SMLMT and intents
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SMLMTTrain(ModelConfig):
    """Meta-train on Subset Masked LM Tasks (optionally mixed with supervised episodes).

    Attributes:
      workdir: run directory; rerun to resume.
      data_dir: folder holding ``text/``.
      init_from: a text-mlm run to start from (its model fields replace these);
        ``None``: random initialisation.
      algorithm: ``maml``/``fomaml`` (inner loop on ``cls_head`` and ``adapt``),
        ``protonet`` (nearest prototype on the features), or ``proto-maml`` (MAML whose
        ``cls_head`` starts each episode at the prototype classifier, as Bansal et al.
        do; :func:`metajax.algorithms.proto_maml`).
      steps: meta-steps.
      meta_batch: episodes per meta-step.
      ways: N.
      shots: K support sentences per class.
      queries: query sentences per class.
      hybrid_fraction: probability that an episode is a supervised CLINC150
        episode from the training domains instead of an SMLMT one (0: fully
        self-supervised).
      inner_lr: inner SGD step size.
      inner_steps: inner steps during meta-training.
      adapt: parameters the inner loop adapts (``cls_head`` is always among them).
      outer_lr: Adam learning rate.
      seed: seed.
      steps_per_call: meta-steps per compiled call.
      log_every: metrics period.
      eval_every: monitoring period on CLINC150 *training-domain* validation episodes.
      checkpoint_every: checkpoint period.
      progress: progress bar.
    """

    workdir: str = "runs/smlmt/maml"
    data_dir: str | None = None
    init_from: str | None = None
    algorithm: SMLMTAlgorithm = "maml"
    steps: int = 500
    meta_batch: int = 4
    ways: int = 5
    shots: int = 5
    queries: int = 5
    hybrid_fraction: float = 0.0
    inner_lr: float = 0.1
    inner_steps: int = 3
    adapt: AdaptSubset = "last"
    outer_lr: float = 3e-4
    seed: int = 0
    steps_per_call: int = 10
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 100
    progress: bool = True

    def resolved(self) -> SMLMTTrain:
        """Takes the model fields from ``init_from``'s config."""
        return _model_fields_from_init(self)


def classification_learner(
    mc: ModelConfig, algorithm: str, ways: int, inner_lr, inner_steps, adapt
):
    model = make_model(mc, ways)
    if algorithm == "protonet":
        return model, algorithms.protonet(feature_embedding(model), ways)
    if algorithm == "proto-maml":
        return model, algorithms.proto_maml(
            classification_loss(model),
            feature_embedding(model),
            _set_cls_head,
            num_classes=ways,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            adapt=adapt_subset(adapt, mc.depth),
        )
    factory = algorithms.ALGORITHMS[algorithm]
    return model, factory(
        classification_loss(model),
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        adapt=adapt_subset(adapt, mc.depth),
    )


def _set_cls_head(params, weight, bias):
    """``params`` with ``cls_head`` (a flax Dense: kernel ``[F, C]``, bias ``[C]``) replaced."""
    return {"params": {**params["params"], "cls_head": {"kernel": weight, "bias": bias}}}


def build_smlmt_learner(cfg: SMLMTTrain):
    return classification_learner(
        model_config(cfg), cfg.algorithm, cfg.ways, cfg.inner_lr, cfg.inner_steps, cfg.adapt
    )


def initial_smlmt_state(cfg: SMLMTTrain, *, load_init: bool = True):
    _, learner = build_smlmt_learner(cfg)
    init_key, task_key = jax.random.split(jax.random.key(cfg.seed))
    params = init_params(model_config(cfg), init_key, cfg.ways)
    if cfg.init_from is not None and load_init:
        _, init_state = load_mlm_run(cfg.init_from)
        pretrained = init_state.meta_params
        # The pretrained encoder; the classification head keeps this run's (zero) init.
        params = {"params": {**pretrained["params"], "cls_head": params["params"]["cls_head"]}}
    outer = optax.adam(cfg.outer_lr)
    return init_train_state(learner, params, outer, task_key), outer


def smlmt_pool(cfg, vocab) -> text_tasks.ClassPool:
    texts, utterances = load_training_text(cfg.data_dir)
    return text_tasks.build_smlmt_pool(
        vocab,
        [*texts.values(), *utterances],
        seq_len=cfg.seq_len,
        min_sentences=max(cfg.shots + cfg.queries, 16),
    )


def clinc_pool(cfg, vocab, splits: tuple[str, ...]):
    """CLINC150 pool of ``splits`` and the class ids of the training / held-out domains."""
    data = text_data.load_clinc150(splits, cfg.data_dir)
    pool = text_tasks.build_class_pool(vocab, data, seq_len=cfg.seq_len)
    train_ids = [i for i, d in enumerate(data.domains) if d in TRAIN_DOMAINS]
    test_ids = [i for i, d in enumerate(data.domains) if d in HELD_OUT_DOMAINS]
    return pool, train_ids, test_ids


def train_smlmt(cfg: SMLMTTrain) -> TrainState:
    """Meta-trains (or resumes) one SMLMT run; returns the final state."""
    cfg = with_legacy_defaults(cfg, cfg.workdir).resolved()
    vocab = _training_vocab(cfg)
    _, learner = build_smlmt_learner(cfg)
    state, outer = initial_smlmt_state(cfg)
    pool = smlmt_pool(cfg, vocab)
    words = jnp.arange(pool.counts.shape[0])
    per_class = cfg.shots + cfg.queries
    clinc, train_ids, _ = clinc_pool(cfg, vocab, ("train",))
    clinc_ids = text_tasks.classes_with_at_least(clinc, per_class, train_ids)
    episode = functools.partial(
        text_tasks.sample_episode, ways=cfg.ways, shots=cfg.shots, queries=cfg.queries
    )

    def sampler(key, pool, words, clinc, clinc_ids):
        k_choice, k_smlmt, k_clinc = jax.random.split(key, 3)
        task = episode(k_smlmt, pool, words)
        if cfg.hybrid_fraction > 0:
            supervised = episode(k_clinc, clinc, clinc_ids)
            use = jax.random.bernoulli(k_choice, cfg.hybrid_fraction)
            task = jax.tree.map(lambda a, b: jnp.where(use, b, a), task, supervised)
        return task

    step = repeat_step(
        make_train_step(learner, outer, sample_tasks=sampler, meta_batch=cfg.meta_batch),
        cfg.steps_per_call,
    )
    train_step = jit_train_step(step)
    args = (pool, words, clinc, clinc_ids)

    eval_fn = None
    if cfg.eval_every:
        val, val_train_ids, _ = clinc_pool(cfg, vocab, ("val",))
        val_ids = text_tasks.classes_with_at_least(val, per_class, val_train_ids)
        keys = jax.random.split(jax.random.key(cfg.seed + 1_000_003), 32)
        val_tasks = jax.vmap(lambda k: episode(k, val, val_ids))(keys)
        eval_step = jax.jit(make_eval_step(learner, inner_steps=max(cfg.inner_steps, 1)))

        def eval_fn(state):
            acc = eval_step(state.meta_params, val_tasks)["query_accuracy"].mean(0)
            return {
                "clinc_train_domains_val_acc_pre": acc[0],
                "clinc_train_domains_val_acc": acc[-1],
            }

    return run_training(
        workdir=cfg.workdir,
        state=state,
        train_step=lambda s: train_step(s, *args),
        num_steps=cfg.steps,
        steps_per_call=cfg.steps_per_call,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every,
        eval_fn=eval_fn,
        checkpoint_every=cfg.checkpoint_every,
        config=dataclasses.asdict(cfg),
        progress=cfg.progress,
        description=f"smlmt/{cfg.algorithm}",
        legacy_defaults=ModelConfig.LEGACY_DEFAULTS,
    )


def load_encoder(workdir: str, ways: int, data_dir: str | None = None):
    """``(model config, params with a ways-class cls_head, kind, vocab)`` of a run.

    Works for text-mlm and smlmt runs. A text-mlm run's ``cls_head`` was never
    trained (zero init), and a run with a different number of ways gets a fresh
    zero head. ``vocab`` is the run's (:func:`run_vocab`).
    """
    with open(os.path.join(workdir, "config.json")) as f:
        raw = json.load(f)
    if "ways" in raw:
        cfg, state = restore_run(
            workdir, SMLMTTrain, lambda c: initial_smlmt_state(c, load_init=False)[0]
        )
        kind = f"smlmt/{cfg.algorithm}" + (
            f"+{cfg.hybrid_fraction:g}sup" if cfg.hybrid_fraction else ""
        )
        trained_ways = cfg.ways
    else:
        cfg, state = load_mlm_run(workdir)
        kind = f"text-mlm/{cfg.algorithm}"
        trained_ways = 5
    params = state.meta_params
    mc = model_config(cfg)
    if trained_ways != ways or "ways" not in raw:
        fresh = init_params(mc, jax.random.key(0), ways)
        params = {"params": {**params["params"], "cls_head": fresh["params"]["cls_head"]}}
    vocab = run_vocab(dataclasses.replace(cfg, data_dir=data_dir), workdir)
    return mc, params, kind, vocab


# Evaluation method -> the learner that adapts to each episode.
INTENT_METHODS = {"finetune": "maml", "prototypes": "protonet", "proto-finetune": "proto-maml"}


@dataclasses.dataclass(frozen=True)
class IntentEval:
    """Few-shot intent classification with 95% CIs over episodes.

    Attributes:
      workdirs: text-mlm and/or smlmt runs whose encoders are evaluated; ``DIR@METHOD``
        evaluates that run with one method only (e.g. ``runs/smlmt/protonet@prototypes``).
      scratch: also evaluate a randomly initialised encoder (the model of the
        first run).
      datasets: ``clinc150`` (test split of the held-out domains) and/or ``banking77``
        (test split, all 77 intents).
      methods: ``finetune`` (inner SGD on ``cls_head`` + ``adapt``, from the run's
        head), ``prototypes`` (nearest class mean of the features) and/or
        ``proto-finetune`` (the same fine-tuning from the prototype head: Proto-MAML's
        adaptation).
      ways: N.
      shots: K values.
      queries: query examples per class.
      episodes: episodes per (dataset, K).
      inner_lr: fine-tuning step size.
      inner_steps: fine-tuning steps.
      adapt: fine-tuned parameters (besides ``cls_head``).
      max_tokens: utterances are truncated to this many tokens (CLINC150: 99% fit in 18,
        BANKING77: 94% in 24).
      batch: episodes per compiled call.
      seed: seed of the episodes (the same episodes for every run and method, and the
        same utterances whatever the runs' vocabularies).
      baseline: a ``DIR@METHOD`` (as in ``workdirs``, or ``scratch@METHOD``) that every
        other (run, method) is compared with, per data set and K: the mean per-episode
        accuracy difference with a paired 95% Student-t interval; ``None``: every pair.
      out: folder for ``intent_eval.{json,md}``.
      data_dir: folder holding ``text/``.
    """

    workdirs: tuple[str, ...] = ("runs/smlmt/maml", "runs/text-mlm/pretrain")
    scratch: bool = False
    datasets: tuple[str, ...] = ("clinc150", "banking77")
    methods: tuple[str, ...] = ("finetune", "prototypes")
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 10
    episodes: int = 600
    inner_lr: float = 0.1
    inner_steps: int = 5
    adapt: AdaptSubset = "last"
    max_tokens: int = 24
    batch: int = 50
    seed: int = 777
    baseline: str | None = None
    out: str = "runs/intents"
    data_dir: str | None = None


def intent_pool(cfg, mc: ModelConfig, dataset: str, vocab):
    if dataset == "clinc150":
        data = text_data.load_clinc150(("test",), cfg.data_dir)
        classes = [i for i, d in enumerate(data.domains) if d in HELD_OUT_DOMAINS]
    elif dataset == "banking77":
        data = text_data.load_banking77(("test",), cfg.data_dir)
        classes = None
    else:
        raise ValueError(f"unknown intent data set {dataset!r}; use clinc150 or banking77.")
    pool = text_tasks.build_class_pool(vocab, data, seq_len=min(mc.seq_len, cfg.max_tokens))
    return pool, text_tasks.classes_with_at_least(pool, max(cfg.shots) + cfg.queries, classes)


def _episode_accuracy_fn(episode, eval_step):
    """Jitted ``(keys, params, pool, class_ids) -> final query accuracy [episodes]``."""

    @jax.jit
    def run(keys, params, pool, class_ids):
        tasks = jax.vmap(lambda k: episode(k, pool, class_ids))(keys)
        return eval_step(params, tasks)["query_accuracy"][:, -1]

    return run


def evaluate_intents(cfg: IntentEval) -> dict:
    """Accuracy of every (run, method, dataset, K); writes JSON and a markdown table."""
    runs = []
    for spec in cfg.workdirs:
        workdir, _, only = spec.partition("@")
        if only and only not in INTENT_METHODS:
            raise ValueError(f"{spec}: the method after @ must be one of {INTENT_METHODS}.")
        mc, params, kind, vocab = load_encoder(workdir, cfg.ways, cfg.data_dir)
        runs.append((workdir, mc, params, kind, vocab, (only,) if only else cfg.methods))
    if cfg.scratch:
        mc, vocab = runs[0][1], runs[0][4]
        params = init_params(mc, jax.random.key(0), cfg.ways)
        runs.append(("scratch", mc, params, "random init", vocab, cfg.methods))
    labels = [f"{name}@{method}" for name, *_, methods in runs for method in methods]
    if cfg.baseline is not None and cfg.baseline not in labels:
        # Checked before the evaluation rather than after it.
        raise ValueError(f"--baseline {cfg.baseline!r} is none of the evaluated {labels}.")
    results = {"config": dataclasses.asdict(cfg), "rows": [], "paired": []}
    for name, mc, params, kind, vocab, methods in runs:
        for method in methods:
            if method not in INTENT_METHODS:
                raise ValueError(f"unknown method {method!r}; use one of {INTENT_METHODS}.")
            algorithm = INTENT_METHODS[method]
            _, learner = classification_learner(
                mc, algorithm, cfg.ways, cfg.inner_lr, cfg.inner_steps, cfg.adapt
            )
            eval_step = make_eval_step(learner, inner_steps=cfg.inner_steps)
            for dataset in cfg.datasets:
                pool, class_ids = intent_pool(cfg, mc, dataset, vocab)
                for shots in cfg.shots:
                    episode = functools.partial(
                        text_tasks.sample_episode, ways=cfg.ways, shots=shots, queries=cfg.queries
                    )

                    run = _episode_accuracy_fn(episode, eval_step)
                    keys = jax.random.split(
                        jax.random.fold_in(jax.random.key(cfg.seed), shots), cfg.episodes
                    )
                    acc = _batched(
                        lambda chunk, run=run, params=params, pool=pool, class_ids=class_ids: run(
                            chunk, params, pool, class_ids
                        ),
                        keys,
                        cfg.batch,
                    )
                    mean, ci = _mean_ci(acc)
                    row = {
                        "run": name,
                        "kind": kind,
                        "tokenizer": mc.tokenizer,
                        "method": method,
                        "dataset": dataset,
                        "shots": shots,
                        "accuracy": mean,
                        "ci95": ci,
                        "episodes": cfg.episodes,
                    }
                    print(row, flush=True)
                    row["per_episode"] = np.round(acc, 6).tolist()
                    results["rows"].append(row)
    results["paired"] = paired_intent_comparisons(results["rows"], cfg.baseline)
    table = format_intent_table(results)
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "intent_eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(cfg.out, "intent_eval.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return results


def paired_intent_comparisons(rows: list[dict], baseline: str | None = None) -> list[dict]:
    """Paired per-episode accuracy differences between the rows of each (data set, K).

    Every row of one (data set, K) was evaluated on the same episodes (same seed),
    so the difference of two rows is taken episode by episode (:func:`paired_ci`).

    Args:
      rows: the ``rows`` of :func:`evaluate_intents` (with ``per_episode``).
      baseline: ``"RUN@METHOD"``: compare every other row of the same data set and K
        with that row (``a`` = the row, ``b`` = the baseline); ``None``: every pair,
        in row order.

    Returns:
      One dict per comparison: ``a``, ``b``, ``dataset``, ``shots`` and the fields of
      :func:`paired_ci` (as accuracy fractions).
    """
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["shots"]), []).append(row)
    label = lambda r: f"{r['run']}@{r['method']}"
    if baseline is not None and not any(label(r) == baseline for r in rows):
        raise ValueError(f"baseline {baseline!r} is none of {sorted({label(r) for r in rows})}.")
    out = []
    for (dataset, shots), group in groups.items():
        if baseline is None:
            pairs = list(itertools.combinations(group, 2))
        else:
            base = [r for r in group if label(r) == baseline]
            pairs = [(r, b) for b in base for r in group if r is not b]
        for a, b in pairs:
            out.append(
                {
                    "a": label(a),
                    "b": label(b),
                    "dataset": dataset,
                    "shots": shots,
                    **paired_ci(a["per_episode"], b["per_episode"]),
                }
            )
    return out


def format_intent_table(results: dict) -> str:
    cfg = results["config"]
    lines = [
        f"| run | encoder | method | data | {cfg['ways']}-way K | accuracy (95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| `{r['run']}` | {r['kind']} | {r['method']} | {r['dataset']} | {r['shots']} | "
            f"{100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f}% |"
        )
    if results.get("paired"):
        lines += [
            "",
            "Paired accuracy differences a - b over the same episodes (mean of the per-episode "
            "differences, 95% Student-t interval):",
            "",
            f"| a | b | data | {cfg['ways']}-way K | a - b (points) | 95% CI |",
            "|---|---|---|---|---|---|",
        ]
        for p in results["paired"]:
            lines.append(
                f"| `{p['a']}` | `{p['b']}` | {p['dataset']} | {p['shots']} | "
                f"{100 * p['difference']:+.2f} | [{100 * p['low']:+.2f}, {100 * p['high']:+.2f}] |"
            )
    return "\n".join(lines)


__all__ = [
    "HELD_OUT_DOMAINS",
    "HELD_OUT_SOURCES",
    "TRAIN_DOMAINS",
    "TRAIN_SOURCES",
    "IntentEval",
    "ModelConfig",
    "SMLMTTrain",
    "TextMLMEval",
    "TextMLMTrain",
    "evaluate_intents",
    "evaluate_mlm",
    "paired_ci",
    "paired_intent_comparisons",
    "run_vocab",
    "student_t_quantile",
    "train_mlm",
    "train_smlmt",
]
