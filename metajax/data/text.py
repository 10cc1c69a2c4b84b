"""Text corpora, intent data sets and a word-level vocabulary that needs no download.

Data live under ``<data_dir>/text/`` (see :mod:`metajax.data.paths` and
``text/README.md`` in the data folder): ``gutenberg/*.txt`` (13 books),
``tinyshakespeare/input.txt``, ``wikitext-2/{valid,test}.txt``, ``clinc150/`` and
``banking77/``. Nothing here downloads anything; a missing file raises
``FileNotFoundError`` naming where it was looked for.

Tokenisation: lower-cased words (letters/digits with an optional apostrophe
suffix) and single punctuation marks, from one regular expression. WikiText's
``<unk>`` maps to the unknown token. The vocabulary is the ``size`` most frequent
words of the text it is built from (ties broken alphabetically, so it is the
same on every machine), after the special tokens ``<pad>`` (id 0), ``<unk>`` (1),
``<mask>`` (2). A subword vocabulary with the same interface is in
:mod:`metajax.data.subword`; :func:`save_vocab` / :func:`load_vocab` store either
kind as JSON, so a run's vocabulary travels with it.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from metajax.data.paths import ENV_VAR, candidate_data_dirs, resolve_data_dir

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
SPECIALS = (PAD, UNK, MASK)
PAD_ID, UNK_ID, MASK_ID = 0, 1, 2

_TOKEN_RE = re.compile(r"<unk>|[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")

GUTENBERG_BOOKS = (
    "austen-emma",
    "austen-persuasion",
    "austen-sense",
    "blake-poems",
    "chesterton-ball",
    "chesterton-brown",
    "chesterton-thursday",
    "melville-moby_dick",
    "milton-paradise",
    "shakespeare-caesar",
    "shakespeare-hamlet",
    "shakespeare-macbeth",
    "whitman-leaves",
)
# Every text source by name: one MLM "domain" each.
TEXT_SOURCES: dict[str, str] = {
    **{f"gutenberg/{b}": f"gutenberg/{b}.txt" for b in GUTENBERG_BOOKS},
    "tinyshakespeare": "tinyshakespeare/input.txt",
    "wikitext-2/valid": "wikitext-2/valid.txt",
    "wikitext-2/test": "wikitext-2/test.txt",
}


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens.

    Example:
      >>> tokenize("Don't panic, Arthur!")
      ["don't", 'panic', ',', 'arthur', '!']
    """
    return _TOKEN_RE.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class Vocab:
    """A word-level vocabulary: ``tokens[i]`` is the word of id ``i``."""

    tokens: tuple[str, ...]

    def __post_init__(self):
        if self.tokens[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"a Vocab must start with the special tokens {SPECIALS}.")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    def id(self, word: str) -> int:
        return self._index.get(word, UNK_ID)

    def encode_word(self, word: str) -> list[int]:
        """The ids of one pre-tokenised word: ``[id]`` (a subword vocabulary may give several)."""
        return [self._index.get(word, UNK_ID)]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (unknown words become ``UNK_ID``)."""
        return [self._index.get(t, UNK_ID) for t in tokenize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.tokens[i] for i in ids if i != PAD_ID)

    def to_json(self) -> dict:
        return {"kind": "word", "tokens": list(self.tokens)}

    @classmethod
    def from_json(cls, data: dict) -> Vocab:
        if data.get("kind") != "word":
            raise ValueError(f"not a word vocabulary (kind {data.get('kind')!r}).")
        return cls(tuple(data["tokens"]))


def build_vocab(texts: Iterable[str], size: int) -> Vocab:
    """The ``size - 3`` most frequent tokens of ``texts`` after the special tokens.

    Args:
      texts: the training text (held-out text must not be included).
      size: total vocabulary size including the three special tokens.

    Returns:
      A :class:`Vocab`; deterministic for the same texts and size.
    """
    if size <= len(SPECIALS):
        raise ValueError(f"vocabulary size must exceed {len(SPECIALS)}, got {size}.")
    counts = collections.Counter()
    for text in texts:
        counts.update(tokenize(text))
    for special in SPECIALS:
        counts.pop(special, None)
    words = sorted(counts, key=lambda w: (-counts[w], w))[: size - len(SPECIALS)]
    return Vocab(SPECIALS + tuple(words))


def save_vocab(vocab, path: str | os.PathLike) -> None:
    """Writes a :class:`Vocab` or :class:`~metajax.data.subword.SubwordVocab` as JSON (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(vocab.to_json(), f)
    os.replace(tmp, path)


def load_vocab(path: str | os.PathLike):
    """The vocabulary saved by :func:`save_vocab` (word or subword, by its ``kind``)."""
    with open(path) as f:
        data = json.load(f)
    if data.get("kind") == "bpe":
        from metajax.data.subword import SubwordVocab  # subword imports this module

        return SubwordVocab.from_json(data)
    return Vocab.from_json(data)


def unknown_rate(vocab, texts: Iterable[str], *, per: str = "token") -> float:
    """Fraction of ``<unk>`` in the encoded ``texts``.

    Args:
      vocab: a word or subword vocabulary.
      texts: the text to measure (e.g. held-out books).
      per: ``"token"``: unknown ids among all ids; ``"word"``: words (pre-tokens)
        with at least one unknown id among all words, comparable across vocabularies.
    """
    if per not in ("token", "word"):
        raise ValueError(f"per must be 'token' or 'word', got {per!r}.")
    unknown = total = 0
    for text in texts:
        for word in tokenize(text):
            ids = vocab.encode_word(word)
            if per == "token":
                unknown += ids.count(UNK_ID)
                total += len(ids)
            else:
                unknown += UNK_ID in ids
                total += 1
    return unknown / max(total, 1)


def text_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``<data_dir>/text``; raises ``FileNotFoundError`` naming where it looked."""
    root = resolve_data_dir(data_dir)
    path = root / "text"
    if not path.is_dir():
        looked = ", ".join(str(p / "text") for p in candidate_data_dirs(data_dir))
        raise FileNotFoundError(
            f"text data not found (looked in: {looked}). Set ${ENV_VAR} or pass --data-dir "
            "to the folder that holds text/ (tinyshakespeare, gutenberg, wikitext-2, clinc150, "
            "banking77); see that folder's README.md."
        )
    return path


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"missing data file {path}. The text data folder must hold the files listed in "
            f"its README.md (set ${ENV_VAR} or --data-dir to point at it)."
        )
    return path


def load_text_source(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """The raw text of one source in :data:`TEXT_SOURCES` (e.g. ``"gutenberg/austen-emma"``)."""
    if name not in TEXT_SOURCES:
        raise ValueError(f"unknown text source {name!r}; known: {sorted(TEXT_SOURCES)}.")
    path = _require(text_dir(data_dir) / TEXT_SOURCES[name])
    # Gutenberg has two ISO-8859-1 bytes (README); latin-1 is lossless for ASCII too.
    encoding = "latin-1" if name.startswith("gutenberg/") else "utf-8"
    with open(path, encoding=encoding) as f:
        text = f.read()
    if name.startswith("gutenberg/"):
        text = text.split("\n", 1)[1]  # line 1 is "[Title by Author Year]"
    return text


def load_text_sources(
    names: Sequence[str], data_dir: str | os.PathLike | None = None
) -> dict[str, str]:
    """``{name: text}`` for several sources."""
    return {name: load_text_source(name, data_dir) for name in names}


@dataclasses.dataclass(frozen=True)
class IntentData:
    """A labelled intent data set.

    Attributes:
      texts: utterances.
      labels: integer intent ids, ``[len(texts)]``.
      label_names: intent name of each id.
      domains: domain name of each intent id (CLINC150), or ``None``.
    """

    texts: tuple[str, ...]
    labels: np.ndarray
    label_names: tuple[str, ...]
    domains: tuple[str, ...] | None = None


def load_clinc150(
    splits: Sequence[str] = ("train",), data_dir: str | os.PathLike | None = None
) -> IntentData:
    """CLINC150 (Larson et al. 2019), the in-scope intents of the given splits.

    Intent ids follow ``domains.json`` (domain by domain, 15 intents each), so
    ``domains[label]`` is the intent's domain.
    """
    folder = text_dir(data_dir) / "clinc150"
    with open(_require(folder / "domains.json")) as f:
        domain_map = json.load(f)
    with open(_require(folder / "data_full.json")) as f:
        data = json.load(f)
    names, domains = [], []
    for domain, intents in domain_map.items():
        for intent in intents:
            names.append(intent)
            domains.append(domain)
    index = {n: i for i, n in enumerate(names)}
    texts, labels = [], []
    for split in splits:
        if split not in ("train", "val", "test"):
            raise ValueError(f"CLINC150 split must be train, val or test; got {split!r}.")
        for text, intent in data[split]:
            texts.append(text)
            labels.append(index[intent])
    return IntentData(tuple(texts), np.asarray(labels, np.int32), tuple(names), tuple(domains))


def load_banking77(
    splits: Sequence[str] = ("test",), data_dir: str | os.PathLike | None = None
) -> IntentData:
    """BANKING77 (Casanueva et al. 2020): 77 online-banking intents."""
    folder = text_dir(data_dir) / "banking77"
    with open(_require(folder / "categories.json")) as f:
        names = json.load(f)
    index = {n: i for i, n in enumerate(names)}
    texts, labels = [], []
    for split in splits:
        if split not in ("train", "test"):
            raise ValueError(f"BANKING77 split must be train or test; got {split!r}.")
        with open(_require(folder / f"{split}.csv"), newline="") as f:
            for row in csv.DictReader(f):
                texts.append(row["text"])
                labels.append(index[row["category"]])
    return IntentData(tuple(texts), np.asarray(labels, np.int32), tuple(names))


def split_sentences(text: str) -> list[str]:
    """Rough sentence split on ``.``, ``!``, ``?`` and ``;`` (enough for SMLMT)."""
    text = re.sub(r"\s+", " ", text)
    return [s.strip() for s in re.split(r"(?<=[.!?;])\s+", text) if s.strip()]


def pad_sequences(sequences: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """``[N, length]`` int32: each sequence truncated or padded with ``PAD_ID``."""
    out = np.full((len(sequences), length), PAD_ID, np.int32)
    for i, seq in enumerate(sequences):
        seq = list(seq)[:length]
        out[i, : len(seq)] = seq
    return out


__all__ = [
    "GUTENBERG_BOOKS",
    "MASK_ID",
    "PAD_ID",
    "TEXT_SOURCES",
    "UNK_ID",
    "IntentData",
    "Vocab",
    "build_vocab",
    "load_banking77",
    "load_clinc150",
    "load_text_source",
    "load_text_sources",
    "load_vocab",
    "pad_sequences",
    "save_vocab",
    "split_sentences",
    "text_dir",
    "tokenize",
    "unknown_rate",
]
