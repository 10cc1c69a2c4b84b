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
