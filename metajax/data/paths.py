"""Where metajax looks for data sets on disk.

One setting, resolved in this order:

1. an explicit ``data_dir`` argument (CLI flag ``--data-dir``),
2. the environment variable ``METAJAX_DATA_DIR``,
3. ``../shared/data`` relative to the current directory, then relative to the
   repository that holds this package (the layout of a development checkout).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "METAJAX_DATA_DIR"


def candidate_data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Returns the directories searched for data, most specific first."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR]).expanduser()]
    repo_root = Path(__file__).resolve().parents[2]
    return [Path.cwd() / ".." / "shared" / "data", repo_root / ".." / "shared" / "data"]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Returns the first existing data directory, or the first candidate.

    Loaders then look for their own sub-folder (``omniglot/``, ``text/``) and
    raise an error naming every place they looked when it is missing.
    """
    candidates = candidate_data_dirs(data_dir)
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    return candidates[0]
