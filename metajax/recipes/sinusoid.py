"""Sinusoid regression exactly as the MAML paper (Finn et al. 2017, sec. 5.1).

``train(SinusoidTrain(...))`` meta-trains (or trains the "pretrained on all tasks"
baseline with ``algorithm="pretrain"``) with tasks drawn on the device inside the
jitted step; ``evaluate(SinusoidEval(...))`` reports the K-shot query MSE after
1, 5 and 10 inner SGD steps with 95% confidence intervals over held-out tasks, and
draws the paper's Figure 2. The CLI (``metajax train sinusoid``) is a thin layer
over these two functions.
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
from metajax.data.sinusoid import SinusoidDistribution, sinusoid
from metajax.losses import make_loss, squared_error
from metajax.models.mlp import MLP
from metajax.runner import jit_on_devices, restore_run, run_training
from metajax.train import (
    TrainState,
    init_train_state,
    make_eval_step,
    make_train_step,
    repeat_step,
)

Algorithm = Literal["maml", "fomaml", "anil", "meta-sgd", "reptile", "pretrain"]


@dataclasses.dataclass(frozen=True)
class SinusoidTrain:
    """Meta-train on sinusoid regression (defaults: the MAML paper).

    Attributes:
      workdir: run directory (checkpoints, metrics, config); rerun to resume.
      algorithm: meta-learning algorithm, or ``pretrain`` for the non-meta baseline.
      steps: meta-iterations (paper: 70,000).
      meta_batch: tasks per meta-step (paper: 25).
      shots: support points per task, K (paper: 10).
      queries: query points per task.
      inner_lr: inner SGD step size (paper: 0.01).
      inner_steps: inner steps during meta-training (paper: 1).
      outer_lr: Adam learning rate (paper: 1e-3).
      hidden: hidden layer widths (paper: 40, 40).
      seed: seed of initialisation and task sampling.
      steps_per_call: meta-steps fused into one compiled call.
      log_every: metrics period (steps).
      eval_every: validation period (steps; 0 disables).
      checkpoint_every: checkpoint period (steps).
      progress: show a progress bar.
      devices: devices the task batch is sharded over (``metajax.parallel``): 0 for
        every device (one CPU, 8 simulated CPUs, a GPU, all TPU cores), 1 for a single
        one. A meta-batch that does not divide them is padded with weightless tasks.
    """

    workdir: str = "runs/sinusoid/maml"
    algorithm: Algorithm = "maml"
    steps: int = 70_000
    meta_batch: int = 25
    shots: int = 10
    queries: int = 10
    inner_lr: float = 0.01
    inner_steps: int = 1
    outer_lr: float = 1e-3
    hidden: tuple[int, ...] = (40, 40)
    seed: int = 0
    steps_per_call: int = 50
    log_every: int = 500
    eval_every: int = 10_000
    checkpoint_every: int = 10_000
    progress: bool = True
    devices: int = 0


@dataclasses.dataclass(frozen=True)
class SinusoidEval:
    """Evaluate trained sinusoid runs: K-shot MSE after k inner steps, and Figure 2.

    Attributes:
      workdirs: run directories to evaluate (e.g. a MAML run and a pretrain run).
      shots: support sizes K to evaluate.
      steps: report the MSE after these numbers of inner steps.
      num_tasks: held-out tasks (>= 600 for the paper-style CI).
      query_points: query points per task on which the MSE is measured.
      seed: seed of the held-out tasks (different stream from training).
      out: where to write ``sinusoid_eval.json``, ``.md`` and ``sinusoid_fig2.png``
        (default: the first workdir).
    """

    workdirs: tuple[str, ...] = ("runs/sinusoid/maml", "runs/sinusoid/pretrain")
    shots: tuple[int, ...] = (5, 10)
    steps: tuple[int, ...] = (1, 5, 10)
    num_tasks: int = 1000
    query_points: int = 100
    seed: int = 12345
    out: str | None = None


def build(cfg: SinusoidTrain):
    """Returns ``(model, loss_fn, algorithm, distribution)`` for a config."""
    model = MLP(hidden=tuple(cfg.hidden), outputs=1)
    loss_fn = make_loss(model.apply, squared_error)
    factory = algorithms.ALGORITHMS[cfg.algorithm]
    learner = factory(loss_fn, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps)
    return model, loss_fn, learner, SinusoidDistribution()


def initial_state(cfg: SinusoidTrain) -> tuple[TrainState, optax.GradientTransformation]:
    model, _, learner, _ = build(cfg)
    init_key, task_key = jax.random.split(jax.random.key(cfg.seed))
    params = model.init(init_key, jnp.zeros((1, 1)))
    outer = optax.adam(cfg.outer_lr)
    return init_train_state(learner, params, outer, task_key), outer


def train(cfg: SinusoidTrain) -> TrainState:
    """Meta-trains (or resumes) one sinusoid run; returns the final state."""
    _, _, learner, dist = build(cfg)
    state, outer = initial_state(cfg)
    sample = lambda key: dist.sample_task(key, shots=cfg.shots, queries=cfg.queries)
    step = repeat_step(
        make_train_step(learner, outer, sample_tasks=sample, meta_batch=cfg.meta_batch),
        cfg.steps_per_call,
    )
    eval_step = jax.jit(make_eval_step(learner, inner_steps=max(cfg.inner_steps, 1)))
    val_tasks = jax.vmap(lambda k: dist.sample_task(k, shots=cfg.shots, queries=100))(
        jax.random.split(jax.random.key(cfg.seed + 1_000_003), 200)
    )
    train_step, state, val_tasks = jit_on_devices(
        step, cfg.devices, cfg.meta_batch, state, val_tasks
    )

    def eval_fn(state):
        metrics = eval_step(state.meta_params, val_tasks)
        loss = metrics["query_loss"].mean(0)
        return {"val_mse_pre": loss[0], "val_mse_post": loss[-1]}

    return run_training(
        workdir=cfg.workdir,
        state=state,
        train_step=train_step,
        num_steps=cfg.steps,
        steps_per_call=cfg.steps_per_call,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every,
        eval_fn=eval_fn,
        checkpoint_every=cfg.checkpoint_every,
        config=dataclasses.asdict(cfg),
        progress=cfg.progress,
        description=f"sinusoid/{cfg.algorithm}",
    )


def load_run(workdir: str) -> tuple[SinusoidTrain, TrainState]:
    """Restores the newest checkpoint of a run directory with its config."""
    return restore_run(workdir, SinusoidTrain, lambda cfg: initial_state(cfg)[0])


# Amplitudes are at most 5, so predicting 0 costs an MSE of at most 25 and even a
# sign-flipped fit at most 100; an MSE above this means the inner loop diverged.
DIVERGED_MSE = 1e3


def _mean_ci(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, 95% CI half-width, and the number of tasks whose MSE is not finite.

    A diverged task makes the mean meaningless, so it is reported as NaN together
    with the count instead of being dropped silently.
    """
    values = np.asarray(values, np.float64)
    diverged = int(np.sum(~np.isfinite(values) | (values > DIVERGED_MSE)))
    if diverged:
        return float("nan"), float("nan"), diverged
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values))), 0


def evaluate(cfg: SinusoidEval) -> dict:
    """Evaluates each run; writes JSON, a markdown table and Figure 2; returns the results."""
    dist = SinusoidDistribution()
    max_steps = max(cfg.steps)
    out_dir = cfg.out or cfg.workdirs[0]
    os.makedirs(out_dir, exist_ok=True)
    results = {"config": dataclasses.asdict(cfg), "runs": {}}
    loaded = {}
    for workdir in cfg.workdirs:
        train_cfg, state = load_run(workdir)
        _, _, learner, _ = build(train_cfg)
        loaded[workdir] = (train_cfg, state, learner)
        eval_step = jax.jit(make_eval_step(learner, inner_steps=max_steps))
        run = {
            "algorithm": train_cfg.algorithm,
            "train_shots": train_cfg.shots,
            "step": int(state.step),
            "mse": {},
        }
        for shots in cfg.shots:
            # The same held-out tasks for every run: keys depend only on the eval seed.
            keys = jax.random.split(jax.random.key(cfg.seed + shots), cfg.num_tasks)
            tasks = jax.vmap(
                lambda k, s=shots: dist.sample_task(k, shots=s, queries=cfg.query_points)
            )(keys)
            mse = np.asarray(eval_step(state.meta_params, tasks)["query_loss"])  # [tasks, steps+1]
            run["mse"][str(shots)] = {str(k): _mean_ci(mse[:, k]) for k in (0, *cfg.steps)}
        results["runs"][workdir] = run

    with open(os.path.join(out_dir, "sinusoid_eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = format_table(results, cfg)
    with open(os.path.join(out_dir, "sinusoid_eval.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    plot_figure2(loaded, os.path.join(out_dir, "sinusoid_fig2.png"), seed=cfg.seed)
    return results


def _cell(mean: float, ci: float, diverged: int) -> str:
    return f"diverged on {diverged} tasks" if diverged else f"{mean:.3f} ± {ci:.3f}"


def format_table(results: dict, cfg: SinusoidEval) -> str:
    """Markdown table: one row per (run, K), columns = MSE after k steps (mean +/- 95% CI)."""
    head = (
        "| run | algorithm | trained K | meta-steps | eval K | "
        + " | ".join(f"MSE after {k} step{'s' if k > 1 else ''}" for k in (0, *cfg.steps))
        + " |"
    )
    lines = [head, "|" + "---|" * (5 + 1 + len(cfg.steps))]
    for workdir, run in results["runs"].items():
        for shots, by_step in run["mse"].items():
            cells = [_cell(*by_step[str(k)]) for k in (0, *cfg.steps)]
            lines.append(
                f"| `{workdir}` | {run['algorithm']} | {run['train_shots']} | {run['step']} "
                f"| {shots} | " + " | ".join(cells) + " |"
            )
    lines.append(
        f"\n{cfg.num_tasks} held-out tasks per K (seed {cfg.seed}), MSE on "
        f"{cfg.query_points} query points per task, inner SGD at each run's inner_lr."
    )
    return "\n".join(lines)


def plot_figure2(loaded: dict, path: str, *, seed: int, shots=(5, 10), steps=(1, 10)) -> None:
    """The paper's Figure 2: ground truth, K points, pre-update and after 1 and 10 steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dist = SinusoidDistribution()
    fn_key, support_key = jax.random.split(jax.random.key(seed + 99))
    amplitude, phase = dist.sample_function(fn_key)
    xs = jnp.linspace(-5, 5, 200)[:, None]
    fig, axes = plt.subplots(
        len(loaded), len(shots), figsize=(5 * len(shots), 3.6 * len(loaded)), squeeze=False
    )
    for row, (train_cfg, state, learner) in enumerate(loaded.values()):
        model, _, _, _ = build(train_cfg)
        for col, k in enumerate(shots):
            support = dist.sample_batch(support_key, amplitude, phase, k)
            ax = axes[row, col]
            ax.plot(xs[:, 0], sinusoid(xs, amplitude, phase)[:, 0], "r", lw=2, label="ground truth")
            ax.plot(
                support.inputs[:, 0],
                support.targets[:, 0],
                "k^",
                ms=8,
                label=f"{k} points used for grad",
            )
            _, result = learner.adapt(
                state.meta_params,
                support,
                steps=max(steps),
                observe=lambda p, model=model: model.apply(p, xs)[:, 0],
            )
            preds = np.asarray(result.observations)
            ax.plot(xs[:, 0], preds[0], ":", color="tab:green", lw=2, label="pre-update")
            for s, style in zip(steps, ("--", "-")):
                ax.plot(
                    xs[:, 0],
                    preds[s],
                    style,
                    color="tab:blue",
                    alpha=0.5 + 0.5 * (s == max(steps)),
                    label=f"{s} grad step{'s' if s > 1 else ''}",
                )
            ax.set_title(f"{train_cfg.algorithm} (meta-trained with K={train_cfg.shots}), K={k}")
            ax.set_ylim(-6, 6)
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["SinusoidEval", "SinusoidTrain", "evaluate", "load_run", "train"]
