"""Training and validation accuracy of the Omniglot iMAML runs beside first-order runs.

    python experiments/omniglot/plot_imaml.py

Reads the committed metrics files in this directory and writes
``imaml_runs_train.png`` (training query accuracy after the inner loop, running mean
of 4 records, i.e. 200 meta-steps) and ``imaml_runs_val.png`` (validation accuracy,
200 episodes per point, read from the ``step N: eval {...}`` lines of the training logs,
after each run's evaluation inner steps: 16 for iMAML, 3 for MAML and first-order MAML).
The recovered second-seed iMAML logs give validation curves only (their metrics files were lost,
and their command is not known; see the README).
"""

from __future__ import annotations

import ast
import json
import os
import re
import tempfile

from metajax.plots import plot_runs

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = {
    "iMAML, Gauss-Newton (16 steps)": "metrics_imaml-gn-5w1s.jsonl",
    "iMAML, first order (16 steps, cg 0)": "metrics_imaml-fo-5w1s.jsonl",
    "iMAML, released code's damping (16 steps, other session)": "metrics_imaml-damped-5w1s.jsonl",
    "first-order MAML (1 step)": "metrics_fomaml-5w1s.jsonl",
    "MAML (1 step)": "metrics_maml-5w1s.jsonl",
}
VAL = {
    "iMAML, Gauss-Newton (16 steps)": "train_imaml-gn-5w1s.log",
    "iMAML, first order (16 steps)": "train_imaml-fo-5w1s.log",
    "iMAML, Gauss-Newton, seed 1 (recovered log, command unknown)": "train_imaml-gn-5w1s-seed1.log",
    "iMAML, first order, seed 1 (recovered log, command unknown)": "train_imaml-fo-5w1s-seed1.log",
    "iMAML, first order, session-11 run (same command, to 1500)": "train_imaml-fo-5w1s_session11.log",
    "first-order MAML (3 steps)": "train_fomaml-5w1s.log",
    "MAML (3 steps)": "train_maml-5w1s.log",
}
EVAL_LINE = re.compile(r"^step (\d+): eval (\{.*\})$")


def val_records(log: str, out: str) -> str:
    """Writes the eval lines of a training log as a metrics file; returns its path."""
    with open(log) as f, open(out, "w") as g:
        for line in f:
            m = EVAL_LINE.match(line.strip())
            if m:
                g.write(
                    json.dumps({"step": int(m.group(1)), **ast.literal_eval(m.group(2))}) + "\n"
                )
    return out


def main() -> None:
    train = {k: os.path.join(HERE, v) for k, v in TRAIN.items()}
    tmp = tempfile.mkdtemp()
    val = {
        k: val_records(os.path.join(HERE, v), os.path.join(tmp, f"{i}.jsonl"))
        for i, (k, v) in enumerate(VAL.items())
    }
    print(
        plot_runs(
            train,
            "query_accuracy",
            os.path.join(HERE, "imaml_runs_train.png"),
            title="Omniglot 5-way 1-shot: training query accuracy",
            smooth=4,
        )
    )
    print(
        plot_runs(
            val,
            "val_accuracy",
            os.path.join(HERE, "imaml_runs_val.png"),
            title="Omniglot 5-way 1-shot: validation accuracy (200 episodes)",
        )
    )


if __name__ == "__main__":
    main()
