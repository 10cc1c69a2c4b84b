"""The ``metajax`` command line: ``metajax {train,eval} EXPERIMENT [--options]``.

Each experiment is a typed config dataclass parsed by tyro (``--help`` lists every
option with its default) and a library function that does the work.

Examples:
  metajax train sinusoid --steps 70000 --workdir runs/sinusoid/maml
  metajax train sinusoid --algorithm pretrain --workdir runs/sinusoid/pretrain
  metajax eval sinusoid --workdirs runs/sinusoid/maml runs/sinusoid/pretrain
  metajax train omniglot --ways 5 --shots 1 --algorithm maml
  metajax eval omniglot --workdir runs/omniglot/maml-5w1s
  metajax download omniglot --data-dir ~/data
  metajax train nav2d --steps 500 --workdir runs/nav2d/maml
  metajax eval nav2d --workdirs runs/nav2d/maml runs/nav2d/pretrain
  metajax train text-mlm --algorithm maml --workdir runs/language/text-mlm/maml
  metajax eval text-mlm --workdirs runs/language/text-mlm/maml runs/language/text-mlm/pretrain
  metajax train smlmt --init-from runs/language/text-mlm/pretrain --workdir runs/language/smlmt/maml
  metajax eval intents --workdirs runs/language/smlmt/maml runs/language/text-mlm/pretrain
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> experiment -> (module, config class, function)
COMMANDS: dict[str, dict[str, tuple[str, str, str]]] = {
    "train": {
        "sinusoid": ("metajax.recipes.sinusoid", "SinusoidTrain", "train"),
        "omniglot": ("metajax.recipes.omniglot", "OmniglotTrain", "train"),
        "nav2d": ("metajax.recipes.nav2d", "Nav2DTrain", "train"),
        "bandit": ("metajax.recipes.bandit", "BanditTrain", "train"),
        "text-mlm": ("metajax.recipes.language", "TextMLMTrain", "train_mlm"),
        "smlmt": ("metajax.recipes.language", "SMLMTTrain", "train_smlmt"),
    },
    "eval": {
        "sinusoid": ("metajax.recipes.sinusoid", "SinusoidEval", "evaluate"),
        "omniglot": ("metajax.recipes.omniglot", "OmniglotEval", "evaluate"),
        "nav2d": ("metajax.recipes.nav2d", "Nav2DEval", "evaluate"),
        "bandit": ("metajax.recipes.bandit", "BanditEval", "evaluate"),
        "text-mlm": ("metajax.recipes.language", "TextMLMEval", "evaluate_mlm"),
        "intents": ("metajax.recipes.language", "IntentEval", "evaluate_intents"),
    },
    "download": {
        "omniglot": ("metajax.recipes.downloads", "OmniglotDownload", "download"),
    },
}


def _usage() -> str:
    lines = ["usage: metajax COMMAND EXPERIMENT [--options]", "", "commands:"]
    for command, experiments in COMMANDS.items():
        lines.append(f"  {command:<9} {', '.join(experiments)}")
    lines.append("\n`metajax COMMAND EXPERIMENT --help` lists the options.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metajax`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command = argv[0]
    if command not in COMMANDS:
        print(f"metajax: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    experiments = COMMANDS[command]
    if len(argv) < 2 or argv[1] not in experiments:
        got = argv[1] if len(argv) > 1 else "nothing"
        print(
            f"metajax {command}: expected one of {sorted(experiments)}, got {got}.", file=sys.stderr
        )
        return 2
    import tyro

    module_name, config_name, fn_name = experiments[argv[1]]
    module = importlib.import_module(module_name)
    config = tyro.cli(
        getattr(module, config_name), args=argv[2:], prog=f"metajax {command} {argv[1]}"
    )
    from metajax.runtime import enable_compilation_cache, tune_host_allocator

    tune_host_allocator()  # reuse freed host memory between steps (see metajax.runtime)
    enable_compilation_cache()  # a resumed run reuses its compiled step
    getattr(module, fn_name)(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
