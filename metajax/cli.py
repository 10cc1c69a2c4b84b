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
  metajax train pointrobot --workdir runs/pointrobot/maml   # gymnax envs: needs metajax[rl]
  metajax train metamaze --algorithm pretrain --workdir runs/metamaze/pretrain
  metajax train text-mlm --algorithm maml --workdir runs/language/text-mlm/maml
  metajax eval text-mlm --workdirs runs/language/text-mlm/maml runs/language/text-mlm/pretrain
  metajax train smlmt --init-from runs/language/text-mlm/pretrain --workdir runs/language/smlmt/maml
  metajax eval intents --workdirs runs/language/smlmt/maml runs/language/text-mlm/pretrain

Several processes (hosts) join one run through JAX's multi-controller runtime with
options before the command, given to every process:
  metajax --coordinator-address host0:12355 --num-processes 2 --process-id 0 train omniglot
  metajax --distributed train omniglot   # Cloud TPU, SLURM, ...: JAX detects the rest
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command -> experiment -> (module, config class, function)
COMMANDS: dict[str, dict[str, tuple[str, str, str]]] = {
    "train": {
        "sinusoid": ("metajax.recipes.sinusoid", "SinusoidTrain", "train"),
        "omniglot": ("metajax.recipes.omniglot", "OmniglotTrain", "train"),
        "nav2d": ("metajax.recipes.nav2d", "Nav2DTrain", "train"),
        "pointrobot": ("metajax.recipes.nav2d", "PointRobotTrain", "train"),
        "metamaze": ("metajax.recipes.nav2d", "MetaMazeTrain", "train"),
        "bandit": ("metajax.recipes.bandit", "BanditTrain", "train"),
        "text-mlm": ("metajax.recipes.language", "TextMLMTrain", "train_mlm"),
        "smlmt": ("metajax.recipes.language", "SMLMTTrain", "train_smlmt"),
    },
    "eval": {
        "sinusoid": ("metajax.recipes.sinusoid", "SinusoidEval", "evaluate"),
        "omniglot": ("metajax.recipes.omniglot", "OmniglotEval", "evaluate"),
        "nav2d": ("metajax.recipes.nav2d", "Nav2DEval", "evaluate"),
        "pointrobot": ("metajax.recipes.nav2d", "PointRobotEval", "evaluate"),
        "metamaze": ("metajax.recipes.nav2d", "MetaMazeEval", "evaluate"),
        "bandit": ("metajax.recipes.bandit", "BanditEval", "evaluate"),
        "text-mlm": ("metajax.recipes.language", "TextMLMEval", "evaluate_mlm"),
        "intents": ("metajax.recipes.language", "IntentEval", "evaluate_intents"),
    },
    "download": {
        "omniglot": ("metajax.recipes.downloads", "OmniglotDownload", "download"),
    },
}


def _usage() -> str:
    lines = [
        "usage: metajax [MULTI-PROCESS OPTIONS] COMMAND EXPERIMENT [--options]",
        "",
        "commands:",
    ]
    for command, experiments in COMMANDS.items():
        lines.append(f"  {command:<9} {', '.join(experiments)}")
    lines.append("\n`metajax COMMAND EXPERIMENT --help` lists the options.")
    lines.append(
        "\nmulti-process options (every process gets the same command; see metajax.parallel):\n"
        "  --coordinator-address HOST:PORT  process 0's address, reachable from all\n"
        "  --num-processes N                processes in the run\n"
        "  --process-id I                   this process's index (0 writes logs and metrics)\n"
        "  --distributed                    let JAX detect the above (Cloud TPU, SLURM, MPI)"
    )
    return "\n".join(lines)


def _distributed_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metajax", add_help=False, exit_on_error=False)
    parser.add_argument("--coordinator-address")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--distributed", action="store_true")
    return parser


def _split_global_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """Leading ``--option [value]`` arguments (before the command), and the rest."""
    i = 0
    while i < len(argv) and argv[i].startswith("--") and argv[i] != "--help":
        i += 1 if argv[i] == "--distributed" or "=" in argv[i] else 2
    return argv[:i], argv[i:]


def _start_distributed(options: list[str]) -> str | None:
    """Starts ``jax.distributed`` from the leading options; an error message or None."""
    if not options:
        return None
    try:
        args, unknown = _distributed_parser().parse_known_args(options)
    except argparse.ArgumentError as e:
        return str(e)
    if unknown:
        return f"unrecognised options before the command: {unknown}"
    given = [args.coordinator_address, args.num_processes, args.process_id]
    if not args.distributed and any(v is None for v in given):
        return (
            "--coordinator-address, --num-processes and --process-id go together "
            "(or use --distributed to let JAX detect them)."
        )
    if args.num_processes is not None and not 0 <= (args.process_id or 0) < args.num_processes:
        return f"--process-id {args.process_id} must be in [0, {args.num_processes})."
    from metajax import parallel

    parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    return None


def _recipe_cpu_devices(command: str, config: object, *, distributed: bool) -> int | None:
    """The CPU split a ``train`` recipe's config asks for (its ``cpu_split``), if it applies.

    ``None`` when ``METAJAX_CPU_DEVICES`` is set (:func:`metajax.runtime.cpu_devices`
    then reads it). 0 (leave the CPU as one device) for other commands and configs
    without the option, and wherever something else already decides the CPU's devices:
    ``XLA_FLAGS`` sets the device count or Eigen's threading (e.g. 8 simulated
    devices), the process is one of several (``--distributed`` options), or JAX's
    backends have started (the CLI called from a running program). A run whose
    ``config.json`` predates the option resumes with its legacy value (0).
    """
    import os

    from metajax.runtime import CPU_DEVICES_FLAGS, backends_started, host_cores

    if os.environ.get("METAJAX_CPU_DEVICES", "").strip():
        return None
    if command != "train" or not hasattr(config, "cpu_split"):
        return 0
    from metajax.runner import with_legacy_defaults

    flags = os.environ.get("XLA_FLAGS", "")
    if (
        distributed
        or any(flag.split("=")[0] in flags for flag in CPU_DEVICES_FLAGS)
        or backends_started()
    ):
        return 0
    if hasattr(config, "workdir"):
        config = with_legacy_defaults(config, config.workdir)
    return config.cpu_split(host_cores())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metajax`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    global_options, argv = _split_global_options(argv)
    valid = len(argv) >= 2 and argv[0] in COMMANDS and argv[1] in COMMANDS[argv[0]]
    if global_options and valid:  # a bad command gets its usage error before JAX starts
        error = _start_distributed(global_options)
        if error:
            print(f"metajax: {error}", file=sys.stderr)
            return 2
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
    from metajax.runtime import (
        cpu_devices,
        enable_compilation_cache,
        tune_host_allocator,
        tune_xla_cpu,
    )

    try:
        # METAJAX_CPU_DEVICES, else the recipe's default: one device per core (runtime.py)
        cpu_devices(_recipe_cpu_devices(command, config, distributed=bool(global_options)))
    except (ValueError, RuntimeError) as e:
        print(f"metajax: {e}", file=sys.stderr)
        return 2
    tune_xla_cpu()  # less memory, shorter compiles (see metajax.runtime); before any array
    tune_host_allocator()  # reuse freed host memory between steps (see metajax.runtime)
    enable_compilation_cache()  # a resumed run reuses its compiled step
    from metajax.runner import Interrupted

    try:
        getattr(module, fn_name)(config)
    except Interrupted as e:
        print(f"metajax: {e}", file=sys.stderr, flush=True)
        return 128 + e.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
