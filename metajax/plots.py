"""Learning curves from a run directory's ``metrics.jsonl`` and ``eval.jsonl``."""

from __future__ import annotations

import os

from metajax.runner import EVAL_FILE, METRICS_FILE, read_jsonl


def plot_learning_curve(workdir: str, path: str | None = None, *, title: str | None = None) -> str:
    """Draws training metrics (and validation, if any) against meta-steps.

    One panel per quantity: losses (``*loss*``) and accuracies (``*accuracy*``);
    validation records from ``eval.jsonl`` are drawn as markers on the same axes.

    Args:
      workdir: a run directory written by :func:`metajax.runner.run_training`.
      path: output PNG (default ``<workdir>/learning_curve.png``).
      title: figure title (default: the directory name).

    Returns:
      The path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(metrics_path):
        raise FileNotFoundError(f"no {METRICS_FILE} in {workdir}: nothing to plot.")
    train = read_jsonl(metrics_path)
    evals = (
        read_jsonl(os.path.join(workdir, EVAL_FILE))
        if os.path.exists(os.path.join(workdir, EVAL_FILE))
        else []
    )
    groups = {"loss": [], "accuracy": []}
    for key in train[0]:
        for group in groups:
            if group in key and key != "step":
                groups[group].append(key)
    groups = {g: keys for g, keys in groups.items() if keys}
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    steps = [r["step"] for r in train]
    for ax, (group, keys) in zip(axes[0], groups.items()):
        for key in sorted(keys):
            ax.plot(steps, [r[key] for r in train], label=f"train {key}", lw=1)
        for key in sorted({k for r in evals for k in r if group in k}):
            ax.plot(
                [r["step"] for r in evals if key in r],
                [r[key] for r in evals if key in r],
                "o-",
                ms=4,
                label=key,
            )
        ax.set_xlabel("meta-step")
        ax.set_ylabel(group)
        if group == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or os.path.basename(os.path.normpath(workdir)))
    fig.tight_layout()
    path = path or os.path.join(workdir, "learning_curve.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_runs(
    runs: dict[str, str],
    key: str = "query_accuracy",
    path: str = "runs.png",
    *,
    title: str | None = None,
    smooth: int = 1,
) -> str:
    """Draws one training metric of several runs against meta-steps, on one axis.

    Args:
      runs: label -> a run directory or a ``metrics.jsonl`` file.
      key: the metric (a key of the training records), e.g. ``query_accuracy``.
      path: output PNG.
      title: figure title (default: ``key``).
      smooth: draw the running mean over this many consecutive records (1: raw).

    Returns:
      The path of the PNG.

    Example:
      >>> plot_runs({"GN": "runs/imaml-gn", "first order": "runs/imaml-fo"}, path="cmp.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if smooth < 1:
        raise ValueError(f"smooth must be >= 1, got {smooth}.")
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, source in runs.items():
        file = os.path.join(source, METRICS_FILE) if os.path.isdir(source) else source
        if not os.path.exists(file):
            raise FileNotFoundError(f"run {label!r}: no metrics file at {file}.")
        records = [r for r in read_jsonl(file) if key in r]
        if not records:
            raise ValueError(f"run {label!r}: no record in {file} has {key!r}.")
        steps = [r["step"] for r in records]
        values = [r[key] for r in records]
        if smooth > 1:
            values = [
                sum(values[max(0, i - smooth + 1) : i + 1])
                / len(values[max(0, i - smooth + 1) : i + 1])
                for i in range(len(values))
            ]
        ax.plot(steps, values, label=label, lw=1.2)
    ax.set_xlabel("meta-step")
    ax.set_ylabel(key if smooth == 1 else f"{key} (running mean of {smooth})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or key)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
