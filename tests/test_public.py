"""What users touch first: the public names, the README quickstart, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import metajax as mj
from metajax import cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_imports():
    assert mj.__all__, "metajax must export its public API"
    for name in mj.__all__:
        assert getattr(mj, name) is not None, name


def test_readme_quickstart_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README must contain a python quickstart"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md quickstart", "exec"), namespace)
    assert int(namespace["state"].step) == 1000


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'pip install -e ".[test]" && python -m pytest -q -n auto --dist loadfile tests'
    assert command in readme and command in ci


def test_cli_usage_and_errors(capsys):
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert cli.main(["fly", "sinusoid"]) == 2
    assert cli.main(["train", "nope"]) == 2
    assert "expected one of" in capsys.readouterr().err


def test_cli_train_resume_and_eval_sinusoid(tmp_path, capsys):
    workdir = tmp_path / "maml"
    args = [
        "train",
        "sinusoid",
        "--workdir",
        str(workdir),
        "--steps",
        "100",
        "--steps-per-call",
        "50",
        "--log-every",
        "50",
        "--eval-every",
        "100",
        "--checkpoint-every",
        "50",
        "--no-progress",
    ]
    assert cli.main(args) == 0
    assert cli.main([*args[:5], "200", *args[6:]]) == 0  # resumes at 100, runs to 200
    assert "resumed from checkpoint at step 100" in capsys.readouterr().out
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150, 200]
    assert (
        cli.main(
            [
                "eval",
                "sinusoid",
                "--workdirs",
                str(workdir),
                "--num-tasks",
                "20",
                "--steps",
                "1",
                "2",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    table = (tmp_path / "out" / "sinusoid_eval.md").read_text()
    assert "MSE after 2 steps" in table
    assert (tmp_path / "out" / "sinusoid_fig2.png").stat().st_size > 10_000


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "metajax.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "metajax COMMAND EXPERIMENT" in out.stdout


def test_eval_of_missing_run_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        cli.main(["eval", "sinusoid", "--workdirs", str(tmp_path / "none")])
