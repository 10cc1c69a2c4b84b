#!/usr/bin/env python3
"""Build a minimal copy of learn2learn (its MAML only) for a machine without it.

    python benchmarks/peers/make_minimal_l2l.py DEST
    PYTHONPATH=DEST python benchmarks/peers/torch_peers.py --peers learn2learn ...

``DEST/learn2learn`` gets the installed learn2learn's unmodified
``algorithms/maml.py``, ``algorithms/base_learner.py`` and ``utils/__init__.py``,
plus a ``learn2learn/__init__.py`` (``__version__`` from the installed
``_version.py``) and an ``algorithms/__init__.py`` that import only what
``l2l.algorithms.MAML`` needs.  Those files need only torch: no compiled
extension, no gym, no torchvision.  learn2learn 0.2.0 is only published as an
sdist that does not build on recent Pythons (see README.md), so copying its
pure-Python MAML files is the practical way to run it elsewhere.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import shutil
import sys

COPIED = ("algorithms/maml.py", "algorithms/base_learner.py", "utils/__init__.py")


def installed_learn2learn_dir() -> str:
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("learn2learn is not installed here")
    return list(spec.submodule_search_locations)[0]


def installed_version(src: str) -> str:
    """``__version__`` from ``_version.py``, read without importing the package."""
    with open(os.path.join(src, "_version.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise SystemExit(f"no __version__ in {src}/_version.py")


def build(dest: str, src: str | None = None) -> str:
    src = src or installed_learn2learn_dir()
    version = installed_version(src)
    pkg = os.path.join(dest, "learn2learn")
    if os.path.exists(pkg):
        shutil.rmtree(pkg)
    for rel in COPIED:
        os.makedirs(os.path.dirname(os.path.join(pkg, rel)), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), os.path.join(pkg, rel))
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write(
            f'"""Minimal copy of learn2learn {version}: only ``learn2learn.algorithms.MAML``.\n\n'
            "Made by metajax's benchmarks/peers/make_minimal_l2l.py from the unmodified\n"
            "algorithms/maml.py, algorithms/base_learner.py and utils/__init__.py of\n"
            f"learn2learn {version}; this file and algorithms/__init__.py import only what\n"
            "MAML needs (no vision/gym/data/text/optim/nn subpackages, no torchvision).\n"
            '"""\n\n'
            f"__version__ = {version!r}\n\n"
            "from . import algorithms  # noqa: E402,F401\n"
            "from .utils import clone_module, detach_module, update_module  # noqa: E402,F401\n"
        )
    with open(os.path.join(pkg, "algorithms", "__init__.py"), "w") as f:
        f.write(
            '"""Minimal learn2learn.algorithms: MAML only."""\n\n'
            "from .maml import MAML, maml_update  # noqa: F401\n"
        )
    return pkg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", help="directory to put on PYTHONPATH (DEST/learn2learn is replaced)")
    ap.add_argument("--src", default=None, help="learn2learn package dir (default: installed)")
    a = ap.parse_args(argv)
    pkg = build(a.dest, a.src)
    print(f"wrote {pkg} (learn2learn {installed_version(a.src or installed_learn2learn_dir())})")
    for root, _, files in sorted(os.walk(pkg)):
        for name in sorted(files):
            print("  " + os.path.relpath(os.path.join(root, name), a.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
