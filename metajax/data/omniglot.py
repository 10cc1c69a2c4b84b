"""Omniglot (Lake et al., 2015): loading, downloading and the standard class splits.

Omniglot has 1,623 handwritten characters from 50 alphabets, each drawn once by 20
people. The *background* set (30 alphabets, 964 characters) and the *evaluation* set
(20 alphabets, 659 characters) are loaded together into one :class:`OmniglotData`:

* ``images``: ``uint8 [1623, 20, 28, 28]``, **ink = 255, background = 0**, the inverse
  of the PNG polarity, so that ``images / 255`` has ink = 1 and a mostly-zero input;
* ``names``: ``"Alphabet/characterNN"``, the naming of the canonical folders and of the
  Vinyals split files;
* ``background``: ``bool [1623]``, True for the 964 background characters.

Order: background characters first, then evaluation; within each set sorted by alphabet
folder name (Python string order), then by character number. Drawings of a character
are in drawer order (file suffix ``_01`` .. ``_20``).

Sources, tried in this order for each set under every search root (``<data_dir>/omniglot``
and then ``<data_dir>`` itself, so ``--data-dir`` may also point at an Omniglot folder):

1. ``omniglot28/<set>_28x28.npz``: pre-resized arrays (fast path);
2. ``images_<set>/<Alphabet>/characterNN/*.png``: the canonical folder layout;
3. ``images_<set>.zip`` in the root, ``original/`` or ``reconstructed/``: the canonical
   zips (what :func:`download_omniglot` fetches), read without extracting.

PNGs are downsampled 105 -> 28 with ``PIL.Image.convert("L").resize((28, 28), LANCZOS)``,
an antialiased grayscale resize, which is exactly how the ``omniglot28`` arrays were made,
so every source gives the same pixels. Decoding 32,460 PNGs takes a while, so the result
is cached as an ``.npz`` (default ``~/.cache/metajax/omniglot``), written atomically.

Splits: :func:`vinyals_split` (Vinyals et al., 2016; the split of most few-shot papers)
and :func:`maml_split` (the protocol of Finn et al., 2017), both with rotations by
multiples of 90 degrees as extra classes. Their class lists are pinned by sha256
checksums (:data:`EXPECTED_CHECKSUMS`) so two machines train and test on the same classes.

References:
  Lake, B. M., Salakhutdinov, R., Tenenbaum, J. B. (2015). Human-level concept learning
  through probabilistic program induction. Science 350(6266), 1332-1338.
  Vinyals, O., Blundell, C., Lillicrap, T., Kavukcuoglu, K., Wierstra, D. (2016). Matching
  networks for one shot learning. NeurIPS.
  Finn, C., Abbeel, P., Levine, S. (2017). Model-agnostic meta-learning for fast adaptation
  of deep networks. ICML.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import tempfile
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from metajax.data.paths import ENV_VAR, candidate_data_dirs, resolve_data_dir

NUM_BACKGROUND = 964
NUM_EVALUATION = 659
NUM_CHARACTERS = NUM_BACKGROUND + NUM_EVALUATION
DRAWINGS_PER_CHARACTER = 20
IMAGE_SIZE = 28
SUBSETS = ("background", "evaluation")
_EXPECTED_COUNTS = {"background": NUM_BACKGROUND, "evaluation": NUM_EVALUATION}

# Bump when the cached arrays' meaning changes (polarity, resize, order), so stale
# caches are ignored instead of silently reused.
_CACHE_FORMAT = 1

Source = Literal["auto", "arrays", "png"]
PathLike = str | os.PathLike

_CHARACTER_DIR = re.compile(r"^character(\d+)$")
_CLASS_NAME = re.compile(r"^(?P<character>[^/]+/character\d+)/rot(?P<degrees>\d{3})$")


# --------------------------------------------------------------------------- loading


# eq=False: a field-wise == on arrays is ambiguous; identity is what makes sense here.
@dataclasses.dataclass(frozen=True, eq=False)
class OmniglotData:
    """All Omniglot characters at 28x28, ink = 255.

    Attributes:
      images: ``uint8 [num_characters, 20, 28, 28]``; 255 = ink, 0 = background (read-only).
      names: ``"Alphabet/characterNN"`` per character, background characters first, then
        evaluation, each sorted by alphabet and character number.
      background: ``bool [num_characters]``, True for characters of the background set.
    """

    images: np.ndarray
    names: tuple[str, ...]
    background: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))
        shape = (len(self.names), DRAWINGS_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE)
        if self.images.shape != shape or self.images.dtype != np.uint8:
            raise ValueError(
                f"OmniglotData.images must be uint8 {shape}, got "
                f"{self.images.dtype} {self.images.shape}."
            )
        if self.background.shape != (len(self.names),) or self.background.dtype != bool:
            raise ValueError(
                f"OmniglotData.background must be bool [{len(self.names)}], got "
                f"{self.background.dtype} {self.background.shape}."
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError("OmniglotData.names has duplicates.")

    @property
    def num_characters(self) -> int:
        """Number of characters (1623 for the full data set)."""
        return len(self.names)


@dataclasses.dataclass
class _Subset:
    """One of the two Omniglot sets as read from a source, in canonical order."""

    names: list[str]
    images: np.ndarray  # uint8 [n, 20, 28, 28], ink = 255


def default_cache_dir() -> Path:
    """Where decoded PNG sources are cached: ``$XDG_CACHE_HOME/metajax/omniglot``.

    ``XDG_CACHE_HOME`` defaults to ``~/.cache``.
    """
    root = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(root).expanduser() / "metajax" / "omniglot"


def _search_roots(data_dir: PathLike | None) -> list[Path]:
    base = resolve_data_dir(data_dir)
    roots = [base / "omniglot", base]
    return list(dict.fromkeys(roots))


def _array_candidates(root: Path, subset: str) -> list[Path]:
    return [root / "omniglot28" / f"{subset}_28x28.npz"]


def _folder_candidates(root: Path, subset: str) -> list[Path]:
    return [root / f"images_{subset}"]


def _zip_candidates(root: Path, subset: str) -> list[Path]:
    name = f"images_{subset}.zip"
    # original/ holds canonical downloads; reconstructed/ holds the pixel-identical
    # re-encoding that ships with the shared data (see its README).
    return [root / name, root / "original" / name, root / "reconstructed" / name]


def _candidates(roots: Sequence[Path], subset: str, source: Source) -> list[Path]:
    kinds: list[Callable[[Path, str], list[Path]]] = []
    if source in ("auto", "arrays"):
        kinds.append(_array_candidates)
    if source in ("auto", "png"):
        kinds += [_folder_candidates, _zip_candidates]
    # Kind-major order: every root is searched for arrays before any PNG source.
    return [path for kind in kinds for root in roots for path in kind(root, subset)]


def _missing_data_error(
    data_dir: PathLike | None, looked: Mapping[str, list[Path]], source: Source
) -> FileNotFoundError:
    lines = [f"Omniglot data not found (source={source!r})."]
    for subset, paths in looked.items():
        lines.append(f"Looked for the {subset} set in:")
        lines += [f"  {path}" for path in paths]
    considered = ", ".join(str(path) for path in candidate_data_dirs(data_dir))
    lines += [
        f"Data directories considered: {considered}.",
        f"Point metajax at the data with the {ENV_VAR} environment variable or the "
        "--data-dir flag (the directory that contains omniglot/).",
        "To download the canonical zips on a machine with internet access, run",
        "  metajax download omniglot --data-dir DIR",
        "or, from Python,",
        "  from metajax.data.omniglot import download_omniglot",
        "  download_omniglot('DIR/omniglot')",
        "and copy DIR to offline machines.",
    ]
    return FileNotFoundError("\n".join(lines))


def _sort_key(name: str) -> tuple[str, int]:
    alphabet, character = name.split("/")
    return alphabet, int(_CHARACTER_DIR.match(character).group(1))


def _read_arrays(path: Path, alphabets: frozenset[str] | None) -> _Subset:
    with np.load(path, allow_pickle=False) as arrays:
        images = arrays["images"]
        alphabet_names = arrays["alphabets"]
        names = [
            f"{alphabet_names[a]}/character{c:02d}"
            for a, c in zip(arrays["alphabet_idx"], arrays["char_in_alphabet"], strict=True)
        ]
    expected = (len(names), DRAWINGS_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE)
    if images.shape != expected or images.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected uint8 {expected} images, got {images.dtype} {images.shape}."
        )
    order = sorted(
        (i for i, name in enumerate(names) if alphabets is None or name.split("/")[0] in alphabets),
        key=lambda i: _sort_key(names[i]),
    )
    # The arrays store the PNG polarity (255 = paper); flip so that ink is high.
    return _Subset([names[i] for i in order], 255 - images[order])


def _png_member(parts: Sequence[str]) -> tuple[str, str] | None:
    """Returns ``(character name, file name)`` for ``.../Alphabet/characterNN/x.png``."""
    if len(parts) < 3 or not parts[-1].lower().endswith(".png"):
        return None
    # Archives made on macOS may carry resource-fork twins; they are not images.
    if parts[-1].startswith("._") or any(part == "__MACOSX" for part in parts):
        return None
    alphabet, character, filename = parts[-3:]
    if not _CHARACTER_DIR.match(character):
        return None
    return f"{alphabet}/{character}", filename


def _index_pngs(
    members: Iterable[str], alphabets: frozenset[str] | None
) -> dict[str, list[tuple[str, str]]]:
    """Groups member paths into ``{character name: [(file name, member), ...]}``."""
    index: dict[str, list[tuple[str, str]]] = {}
    for member in members:
        parsed = _png_member(member.replace("\\", "/").split("/"))
        if parsed is None:
            continue
        name, filename = parsed
        if alphabets is not None and name.split("/")[0] not in alphabets:
            continue
        index.setdefault(name, []).append((filename, member))
    return index


def _to_28x28(png: io.BytesIO | Path) -> np.ndarray:
    with Image.open(png) as image:
        # LANCZOS gives an antialiased grayscale image; a direct resize of the 1-bit
        # image would silently fall back to NEAREST and keep it binary.
        small = image.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return 255 - np.asarray(small, dtype=np.uint8)


def _decode_pngs(
    index: Mapping[str, list[tuple[str, str]]],
    read: Callable[[str], io.BytesIO | Path],
    where: Path,
) -> _Subset:
    names = sorted(index, key=_sort_key)
    images = np.empty((len(names), DRAWINGS_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i, name in enumerate(names):
        drawings = sorted(index[name])
        if len(drawings) != DRAWINGS_PER_CHARACTER:
            raise ValueError(
                f"{where}: {name} has {len(drawings)} PNGs, expected {DRAWINGS_PER_CHARACTER}."
            )
        for j, (_, member) in enumerate(drawings):
            images[i, j] = _to_28x28(read(member))
    return _Subset(names, images)


def _png_fingerprint(path: Path) -> str:
    """A cheap identity for a PNG source: size and mtime of a zip, listing of a folder."""
    if path.is_file():
        stat = path.stat()
        return f"zip:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*.png")):
        digest.update(f"{file.relative_to(path)}\t{file.stat().st_size}\n".encode())
    return "dir:" + digest.hexdigest()


def _check_count(where: Path, subset: str, count: int, alphabets: frozenset[str] | None) -> None:
    if alphabets is None and count != _EXPECTED_COUNTS[subset]:
        raise ValueError(
            f"{where}: the {subset} set has {count} characters, expected "
            f"{_EXPECTED_COUNTS[subset]}; the source is incomplete (pass alphabets=... "
            "to load a subset on purpose)."
        )


def _read_png_source(path: Path, subset: str, alphabets: frozenset[str] | None) -> _Subset:
    # Counts are checked before decoding, so an incomplete source fails in seconds.
    if path.is_dir():
        members = [str(file.relative_to(path)) for file in path.rglob("*.png")]
        index = _index_pngs(members, alphabets)
        _check_count(path, subset, len(index), alphabets)
        return _decode_pngs(index, lambda member: path / member, path)
    with zipfile.ZipFile(path) as archive:
        index = _index_pngs(archive.namelist(), alphabets)
        _check_count(path, subset, len(index), alphabets)
        return _decode_pngs(index, lambda member: io.BytesIO(archive.read(member)), path)


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Writes ``arrays`` to ``path`` so that readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez_compressed(file, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_png_sources(
    sources: Mapping[str, Path], alphabets: frozenset[str] | None, cache_path: Path | None
) -> dict[str, _Subset]:
    if cache_path is not None and cache_path.is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as cached:
                return {
                    subset: _Subset(cached[f"{subset}_names"].tolist(), cached[f"{subset}_images"])
                    for subset in sources
                }
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
            warnings.warn(f"Ignoring unreadable Omniglot cache {cache_path}: {error}", stacklevel=3)
    subsets = {s: _read_png_source(path, s, alphabets) for s, path in sources.items()}
    if cache_path is not None:
        arrays = {}
        for subset, data in subsets.items():
            arrays[f"{subset}_names"] = np.array(data.names, dtype=str)
            arrays[f"{subset}_images"] = data.images
        try:
            _save_npz_atomic(cache_path, **arrays)
        except OSError as error:  # A read-only home must not stop training.
            warnings.warn(f"Could not write Omniglot cache {cache_path}: {error}", stacklevel=3)
    return subsets


def load_omniglot(
    data_dir: PathLike | None = None,
    *,
    source: Source = "auto",
    alphabets: Iterable[str] | None = None,
    cache_dir: PathLike | None = None,
    cache: bool = True,
) -> OmniglotData:
    """Loads every Omniglot character as 28x28 ``uint8`` images with ink = 255.

    See the module docstring for the order of characters and the sources searched.

    Args:
      data_dir: the data directory (holding ``omniglot/``); ``None`` resolves it with
        :func:`metajax.data.paths.resolve_data_dir` (``METAJAX_DATA_DIR``, then
        ``../shared/data``).
      source: ``"auto"`` (arrays, else PNG folders, else zips), ``"arrays"`` (only the
        ``omniglot28`` arrays) or ``"png"`` (only PNG folders or zips).
      alphabets: if given, load only characters of these alphabet folder names (e.g.
        ``["Tagalog"]``); useful to read a PNG source quickly. Unknown names raise.
      cache_dir: where decoded PNG sources are cached (default :func:`default_cache_dir`).
        The arrays source is fast and never cached.
      cache: set False to neither read nor write the cache.

    Returns:
      An :class:`OmniglotData`; with ``alphabets=None`` it holds all 1623 characters
      (964 background, then 659 evaluation).

    Raises:
      FileNotFoundError: no source for a set; the message lists every path tried.
      ValueError: a source is incomplete or malformed, or ``alphabets`` names an
        alphabet that is not in the data.

    Example:
      >>> data = load_omniglot()
      >>> data.images.shape, int(data.background.sum())
      ((1623, 20, 28, 28), 964)

    Reference:
      Lake, Salakhutdinov & Tenenbaum (2015), Human-level concept learning through
      probabilistic program induction. Science 350(6266).
    """
    if source not in ("auto", "arrays", "png"):
        raise ValueError(f"source must be 'auto', 'arrays' or 'png', got {source!r}.")
    wanted = None if alphabets is None else frozenset(alphabets)
    roots = _search_roots(data_dir)
    looked = {subset: _candidates(roots, subset, source) for subset in SUBSETS}
    found = {
        subset: next((p for p in paths if p.exists()), None) for subset, paths in looked.items()
    }
    if any(path is None for path in found.values()):
        missing = {subset: looked[subset] for subset, path in found.items() if path is None}
        raise _missing_data_error(data_dir, missing, source)

    subsets = {s: _read_arrays(p, wanted) for s, p in found.items() if p.suffix == ".npz"}
    png_sources = {s: p for s, p in found.items() if p.suffix != ".npz"}
    if png_sources:
        cache_path = None
        if cache:
            key = json.dumps(
                {
                    "format": _CACHE_FORMAT,
                    "alphabets": None if wanted is None else sorted(wanted),
                    "sources": {
                        s: [str(p.resolve()), _png_fingerprint(p)] for s, p in png_sources.items()
                    },
                },
                sort_keys=True,
            )
            digest = hashlib.sha256(key.encode()).hexdigest()[:16]
            cache_root = (
                Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
            )
            cache_path = cache_root / f"omniglot28_{digest}.npz"
        subsets.update(_load_png_sources(png_sources, wanted, cache_path))

    for subset in SUBSETS:
        _check_count(found[subset], subset, len(subsets[subset].names), wanted)
    if wanted is not None:
        present = {name.split("/")[0] for s in SUBSETS for name in subsets[s].names}
        if unknown := sorted(wanted - present):
            raise ValueError(f"Unknown Omniglot alphabets {unknown}; present: {sorted(present)}.")

    images = np.concatenate([subsets[s].images for s in SUBSETS])
    images.setflags(write=False)
    background = np.concatenate(
        [np.full(len(subsets[s].names), s == "background") for s in SUBSETS]
    )
    background.setflags(write=False)
    names = tuple(name for s in SUBSETS for name in subsets[s].names)
    return OmniglotData(images=images, names=names, background=background)


# ------------------------------------------------------------------------ download

_GITHUB = "https://github.com/brendenlake/omniglot/raw/master/python/"


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A file to download and the size and md5 it must have.

    Attributes:
      url: any URL ``urllib`` opens (``https://``, ``file://``).
      size: size in bytes.
      md5: lowercase hex md5 digest.
    """

    url: str
    size: int
    md5: str


# The canonical zips of brendenlake/omniglot and their published sizes and md5s.
OMNIGLOT_ZIPS: dict[str, RemoteFile] = {
    "images_background.zip": RemoteFile(
        _GITHUB + "images_background.zip", 9_464_212, "68d2efa1b9178cc56df9314c21c6e718"
    ),
    "images_evaluation.zip": RemoteFile(
        _GITHUB + "images_evaluation.zip", 6_462_886, "6b91aef0f799c5bb55b94e3f2daec811"
    ),
}


# ``url -> response``: a context manager with ``read(n) -> bytes``, like ``urlopen``.
Opener = Callable[[str], Any]


class DownloadError(OSError):
    """A download failed, or its size or md5 did not match."""


def _verify_file(path: Path, expected: RemoteFile) -> str | None:
    """Returns why ``path`` does not match ``expected``, or None when it does."""
    size = path.stat().st_size
    if size != expected.size:
        return f"size {size:,} B, expected {expected.size:,} B"
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected.md5.lower():
        return f"md5 {digest.hexdigest()}, expected {expected.md5.lower()}"
    return None


def _fetch(remote: RemoteFile, part: Path, opener: Opener, chunk_size: int) -> None:
    """Streams ``remote`` into ``part``, stopping early once it is too long."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    try:
        with opener(remote.url) as response, open(part, "wb") as out:
            while chunk := response.read(chunk_size):
                size += len(chunk)
                if size > remote.size:
                    raise DownloadError(
                        f"{remote.url}: got more than the expected {remote.size:,} B."
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except DownloadError:
        raise
    except OSError as error:  # urllib's URLError and HTTPError are OSErrors too.
        raise DownloadError(f"Could not download {remote.url}: {error}") from error
    if size != remote.size:
        raise DownloadError(
            f"{remote.url}: got {size:,} B, expected {remote.size:,} B (truncated download)."
        )
    if digest.hexdigest() != remote.md5.lower():
        raise DownloadError(
            f"{remote.url}: md5 {digest.hexdigest()} does not match the published "
            f"{remote.md5.lower()} (corrupt download)."
        )


def download_omniglot(
    dest: PathLike,
    *,
    files: Mapping[str, RemoteFile] | None = None,
    opener: Opener | None = None,
    chunk_size: int = 1 << 20,
) -> Path:
    """Downloads the canonical Omniglot zips into ``dest`` and verifies them.

    Each file is streamed to ``<name>.part``; only when its size and md5 match the
    published ones is it renamed (atomically) to ``<name>``, so a final name always
    holds a verified file. On any failure the partial file is deleted. A file already
    at the final name is verified again: kept when it matches, otherwise deleted (so a
    failed retry leaves nothing unverified behind) and downloaded again.
    :func:`load_omniglot` then reads the zips directly (no extraction needed) when
    ``dest`` is ``<data_dir>/omniglot``.

    Args:
      dest: directory for the zips, normally ``<data_dir>/omniglot``; created if needed.
      files: ``{file name: RemoteFile}`` to fetch; default :data:`OMNIGLOT_ZIPS`. Tests
        pass ``file://`` URLs here to run offline.
      opener: ``url -> binary response`` usable as a context manager; default
        ``urllib.request.urlopen`` with a 60 s timeout.
      chunk_size: bytes per read while streaming.

    Returns:
      ``dest`` as a :class:`~pathlib.Path`.

    Raises:
      DownloadError: a fetch failed, or a file's size or md5 did not match.

    Example:
      >>> download_omniglot(resolve_data_dir() / "omniglot")  # doctest: +SKIP

    Reference:
      Lake, Salakhutdinov & Tenenbaum (2015); data at github.com/brendenlake/omniglot.
    """
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    if opener is None:

        def opener(url: str):
            return urllib.request.urlopen(url, timeout=60)

    for name, remote in (OMNIGLOT_ZIPS if files is None else files).items():
        final = dest / name
        if final.exists():
            problem = _verify_file(final, remote)
            if problem is None:
                continue
            # Never trust an unverified file: drop it so a failed retry leaves nothing
            # that the loader could pick up.
            warnings.warn(f"Re-downloading {final}: {problem}.", stacklevel=2)
            final.unlink()
        part = dest / f"{name}.part"
        try:
            _fetch(remote, part, opener, chunk_size)
            os.replace(part, final)
        finally:
            part.unlink(missing_ok=True)
    return dest


# -------------------------------------------------------------------------- splits

ROTATIONS = (0, 90, 180, 270)
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "vinyals": ("train", "val", "test", "trainval"),
    "maml": ("train", "val", "test", "trainval"),
}
MAML_NUM_TRAIN_CHARACTERS = 1200
MAML_NUM_VAL_CHARACTERS = 100
MAML_SEED = 1

# sha256 of "\n".join(class names) of each split, computed once from the shared data
# (NumPy 2.4; the Vinyals ones equal the sha256 of each split file without its final
# newline). The MAML ones hold for seed=MAML_SEED only. A mismatch means a different
# class list (an edited split file, a changed NumPy shuffle), so results would not be
# comparable; the split functions raise.
EXPECTED_CHECKSUMS: dict[tuple[str, str], str] = {
    ("vinyals", "train"): "16ce2fdd6e167792430b6085d2b60a1fb317c2a634cc8df1fe299b11fbc81320",
    ("vinyals", "val"): "e4b1922a00228517b260689e24c498bcd5df11e81e82cb32197d01e5639a5884",
    ("vinyals", "test"): "0d1c2bcec24fd424d0566bb0c9daa2d813e575ab477e61d6c43a57011ee5a235",
    ("vinyals", "trainval"): "22472e8543be245863d592868966139b46013d2d7fccaf2c2e1d11c636b43449",
    ("maml", "trainval"): "606d59d70368990ec4decdb36e942cde8ae693c76eadad2bb59d22c1fd2fc2fc",
    ("maml", "train"): "35b2c381e84a40be298b810162239629e72f907db9ce890e0ab457290b235782",
    ("maml", "val"): "3ca37e730df85d62fbd2b8abc721d401643d4477d3f36b36212c2dade186c81b",
    ("maml", "test"): "773d15912cc21be7568b12e0a82bc81471d23fb0588a1472d760f8b1648d75c8",
}


@dataclasses.dataclass(frozen=True, eq=False)
class ClassSplit:
    """The classes of one split, rotations applied.

    Attributes:
      images: ``uint8 [num_classes, 20, 28, 28]``, ink = 255 (read-only).
      names: class names ``"Alphabet/characterNN/rotDDD"``.
      checksum: :func:`class_list_checksum` of ``names``.
    """

    images: np.ndarray
    names: tuple[str, ...]
    checksum: str

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))
        if self.images.ndim != 4 or self.images.shape[0] != len(self.names):
            raise ValueError(
                f"ClassSplit.images must be [{len(self.names)}, examples, height, width], "
                f"got {self.images.shape}."
            )

    @property
    def num_classes(self) -> int:
        """Number of classes in the split."""
        return len(self.names)


def class_list_checksum(names: Iterable[str]) -> str:
    r"""Returns the sha256 hex digest of ``"\n".join(names)`` (UTF-8); order matters."""
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def _make_split(
    data: OmniglotData, class_names: Sequence[str], protocol: str, split: str, check: bool
) -> ClassSplit:
    """Gathers and rotates the images of ``class_names`` and checks the checksum.

    ``rotDDD`` means the character's images rotated counter-clockwise by DDD degrees,
    ``np.rot90(image, k=DDD // 90)``; the same direction as ``PIL.Image.rotate(DDD)``
    used by the prototypical-networks loader that ships these split files.
    """
    checksum = class_list_checksum(class_names)
    expected = EXPECTED_CHECKSUMS.get((protocol, split))
    if check and expected is not None and checksum != expected:
        raise ValueError(
            f"The {protocol}/{split} class list has sha256 {checksum}, expected {expected}: "
            "these are not the standard classes, so results would not be comparable."
        )
    index = {name: i for i, name in enumerate(data.names)}
    characters = np.empty(len(class_names), np.int64)
    turns = np.empty(len(class_names), np.int64)
    for i, class_name in enumerate(class_names):
        match = _CLASS_NAME.match(class_name)
        if match is None or int(match["degrees"]) not in ROTATIONS:
            raise ValueError(
                f"Bad class name {class_name!r}; expected 'Alphabet/characterNN/rotDDD'."
            )
        if match["character"] not in index:
            raise ValueError(
                f"Character {match['character']!r} of class {class_name!r} is not in the "
                "loaded data (was it loaded with alphabets=...?)."
            )
        characters[i] = index[match["character"]]
        turns[i] = int(match["degrees"]) // 90
    images = np.empty((len(class_names), *data.images.shape[1:]), np.uint8)
    for k in range(4):
        rows = turns == k
        images[rows] = np.rot90(data.images[characters[rows]], k=k, axes=(-2, -1))
    images.setflags(write=False)
    return ClassSplit(images=images, names=tuple(class_names), checksum=checksum)


def _check_split(protocol: str, split: str) -> None:
    if split not in PROTOCOLS[protocol]:
        raise ValueError(f"{protocol} split must be one of {PROTOCOLS[protocol]}, got {split!r}.")


def vinyals_split(
    data: OmniglotData, split: str, *, data_dir: PathLike | None = None
) -> ClassSplit:
    """The class split of Vinyals et al. (2016), as used by most few-shot papers.

    Characters (not alphabets) are split into train 1028 / val 172 / test 423
    (trainval = train + val = 1200), and each character at 0/90/180/270 degrees is a
    separate class: train 4112, val 688, test 1692, trainval 4800 classes. Class names
    and their order are read from ``<data_dir>/omniglot/splits/vinyals/<split>.txt``
    (the files of Snell et al.'s prototypical networks); ``rotDDD`` is a
    counter-clockwise rotation by DDD degrees (``np.rot90`` with ``k = DDD // 90``).

    Args:
      data: the full data from :func:`load_omniglot`.
      split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"``.
      data_dir: the data directory, as for :func:`load_omniglot`.

    Returns:
      A :class:`ClassSplit` whose checksum matches :data:`EXPECTED_CHECKSUMS`.

    Raises:
      FileNotFoundError: the split file is missing (the message lists where it looked).
      ValueError: unknown split, checksum mismatch, or characters missing from ``data``.

    Example:
      >>> train = vinyals_split(load_omniglot(), "train")
      >>> train.images.shape
      (4112, 20, 28, 28)

    Reference:
      Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra (2016), Matching networks
      for one shot learning. NeurIPS.
    """
    _check_split("vinyals", split)
    looked = [root / "splits" / "vinyals" / f"{split}.txt" for root in _search_roots(data_dir)]
    path = next((p for p in looked if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"Vinyals split file {split}.txt not found; looked in:\n"
            + "\n".join(f"  {p}" for p in looked)
            + f"\nSet the data directory with {ENV_VAR} or --data-dir. The files are "
            "data/omniglot/splits/vinyals/ of github.com/jakesnell/prototypical-networks."
        )
    class_names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return _make_split(data, class_names, "vinyals", split, check=True)


def maml_split(data: OmniglotData, split: str, *, seed: int = MAML_SEED) -> ClassSplit:
    """The character split of the MAML paper (Finn et al., 2017), made reproducible.

    Protocol: all 1623 characters (background and evaluation pooled), sorted by name
    (``"Alphabet/characterNN"``, Python string order), are shuffled with
    ``np.random.default_rng(seed).permutation(1623)``; the first 1200 characters of the
    permuted order are ``"trainval"`` (the paper's 1200 training characters) and the
    remaining 423 are ``"test"``. As in cbfinn/maml's ``data_generator.py``, the last
    100 of those 1200 are held out as ``"val"`` and the first 1100 are ``"train"``.
    Every character at 0/90/180/270 degrees (counter-clockwise, ``np.rot90``) is a
    class, giving 4400 train, 400 val, 4800 trainval and 1692 test classes, listed
    sorted by character name, then rotation.

    cbfinn/maml shuffled ``os.listdir`` order with Python's ``random.seed(1)``, which
    depends on the file system, so its exact split cannot be reproduced; this keeps
    its sizes with a fixed permutation. MAML also resized the 1-bit images with
    nearest-neighbour, not LANCZOS; that is not done here.

    Args:
      data: the full data from :func:`load_omniglot`.
      split: ``"train"``, ``"val"``, ``"trainval"`` or ``"test"``.
      seed: the permutation seed; checksums are pinned for the default only.

    Returns:
      A :class:`ClassSplit`.

    Raises:
      ValueError: unknown split, ``data`` is not the full data set, or (default seed)
        a checksum mismatch.

    Example:
      >>> maml_split(load_omniglot(), "test").images.shape
      (1692, 20, 28, 28)

    Reference:
      Finn, Abbeel & Levine (2017), Model-agnostic meta-learning for fast adaptation of
      deep networks. ICML.
    """
    _check_split("maml", split)
    if data.num_characters != NUM_CHARACTERS:
        raise ValueError(
            f"maml_split needs all {NUM_CHARACTERS} characters, got {data.num_characters}."
        )
    characters = sorted(data.names)
    order = np.random.default_rng(seed).permutation(len(characters))
    n_train = MAML_NUM_TRAIN_CHARACTERS - MAML_NUM_VAL_CHARACTERS
    chosen = {
        "train": order[:n_train],
        "val": order[n_train:MAML_NUM_TRAIN_CHARACTERS],
        "trainval": order[:MAML_NUM_TRAIN_CHARACTERS],
        "test": order[MAML_NUM_TRAIN_CHARACTERS:],
    }[split]
    class_names = [
        f"{name}/rot{degrees:03d}"
        for name in sorted(characters[i] for i in chosen)
        for degrees in ROTATIONS
    ]
    return _make_split(data, class_names, "maml", split, check=seed == MAML_SEED)


def load_split(
    protocol: str,
    split: str,
    data_dir: PathLike | None = None,
    *,
    source: Source = "auto",
    cache_dir: PathLike | None = None,
) -> ClassSplit:
    """Loads Omniglot and returns one split: ``load_split("vinyals", "train")``.

    Args:
      protocol: ``"vinyals"`` (:func:`vinyals_split`) or ``"maml"`` (:func:`maml_split`).
      split: a split name of that protocol (see :data:`PROTOCOLS`).
      data_dir: the data directory, as for :func:`load_omniglot`.
      source: passed to :func:`load_omniglot`.
      cache_dir: passed to :func:`load_omniglot`.

    Returns:
      The :class:`ClassSplit`.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}.")
    _check_split(protocol, split)
    data = load_omniglot(data_dir, source=source, cache_dir=cache_dir)
    if protocol == "vinyals":
        return vinyals_split(data, split, data_dir=data_dir)
    return maml_split(data, split)
