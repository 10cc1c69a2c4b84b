"""A byte-pair-encoding subword vocabulary, learned from the training text offline.

The vocabulary splits each word of :func:`metajax.data.text.tokenize` (lower-cased
words and single punctuation marks) into pieces, WordPiece-style: a word's first
piece is written plainly and every later piece carries a ``##`` prefix, so
``"unkindness"`` may become ``["un", "##kind", "##ness"]`` and decoding glues
``##`` pieces to the piece before. The pieces are learned by byte-pair encoding
(Sennrich et al. 2016) over the word counts of the training text: start from the
characters seen there, then repeatedly merge the most frequent adjacent pair
(ties: the lexicographically smallest pair) until the vocabulary has ``size``
entries. Counting words first makes the result independent of the order of the
texts, and the same texts always give the same merges.

Encoding a word applies the learned merges in the order they were learned (the
lowest-ranked adjacent pair first), which reproduces the training segmentation.
A character never seen in the training text becomes ``<unk>`` on its own; the rest
of the word is still encoded. WikiText's literal ``<unk>`` is the unknown token.

:class:`SubwordVocab` has the interface of :class:`metajax.data.text.Vocab`
(``encode``, ``encode_word``, ``decode``, ``len``, the special tokens ``<pad>``,
``<unk>``, ``<mask>`` at ids 0, 1, 2) and is saved with a run as JSON
(:func:`metajax.data.text.save_vocab`).

Example:
  >>> vocab = train_bpe(["the cat sat on the mat"], size=40)
  >>> vocab.decode(vocab.encode("The mat!"))
  'the mat !'

Reference: Sennrich, Haddow, Birch, "Neural Machine Translation of Rare Words with
Subword Units", ACL 2016; Wu et al., "Google's Neural Machine Translation System"
(WordPiece's ``##`` continuation convention), 2016.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
from collections.abc import Iterable

from metajax.data.text import SPECIALS, UNK, UNK_ID, tokenize

CONTINUATION = "##"


def _symbols(word: str) -> list[str]:
    """A word's characters, the later ones marked as continuations."""
    return [word[0], *(CONTINUATION + c for c in word[1:])]


def _join(first: str, second: str) -> str:
    # The second symbol of a pair is never word-initial, so it always carries "##".
    return first + second[len(CONTINUATION) :]


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """``symbols`` with every occurrence of ``pair`` merged, left to right."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(_join(*pair))
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


@dataclasses.dataclass(frozen=True)
class SubwordVocab:
    """A BPE subword vocabulary: ``tokens[i]`` is the piece of id ``i``.

    Attributes:
      tokens: the special tokens, the characters, then the merged pieces.
      merges: the learned pairs, in the order they were learned.
    """

    tokens: tuple[str, ...]
    merges: tuple[tuple[str, str], ...]

    def __post_init__(self):
        if self.tokens[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"a SubwordVocab must start with the special tokens {SPECIALS}.")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})
        object.__setattr__(self, "_ranks", {tuple(p): r for r, p in enumerate(self.merges)})
        object.__setattr__(self, "_cache", {})

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, SubwordVocab)
            and self.tokens == other.tokens
            and self.merges == other.merges
        )

    def __hash__(self) -> int:
        return hash((self.tokens, self.merges))

    def pieces(self, word: str) -> list[str]:
        """The pieces of one pre-tokenised word (unknown characters stay single)."""
        symbols = _symbols(word)
        ranks = self._ranks
        while len(symbols) > 1:
            best = min(
                range(len(symbols) - 1),
                key=lambda i: ranks.get((symbols[i], symbols[i + 1]), len(ranks)),
            )
            pair = (symbols[best], symbols[best + 1])
            if pair not in ranks:
                break
            symbols = _merge(symbols, pair)
        return symbols

    def encode_word(self, word: str) -> list[int]:
        """Piece ids of one pre-tokenised word (cached)."""
        ids = self._cache.get(word)
        if ids is None:
            if word == UNK:
                ids = [UNK_ID]
            else:
                ids = [self._index.get(p, UNK_ID) for p in self.pieces(word)]
            self._cache[word] = ids
        return list(ids)

    def encode(self, text: str) -> list[int]:
        """Piece ids of ``text`` (characters never seen in training become ``UNK_ID``)."""
        return [i for word in tokenize(text) for i in self.encode_word(word)]

    def id(self, piece: str) -> int:
        return self._index.get(piece, UNK_ID)

    def decode(self, ids: Iterable[int]) -> str:
        """Words separated by spaces; ``##`` pieces joined to the piece before."""
        out: list[str] = []
        for i in ids:
            if i == 0:  # padding
                continue
            piece = self.tokens[i]
            if piece.startswith(CONTINUATION) and out:
                out[-1] += piece[len(CONTINUATION) :]
            else:
                out.append(piece)
        return " ".join(out)

    def to_json(self) -> dict:
        return {
            "kind": "bpe",
            "tokens": list(self.tokens),
            "merges": [list(p) for p in self.merges],
        }

    @classmethod
    def from_json(cls, data: dict) -> SubwordVocab:
        if data.get("kind") != "bpe":
            raise ValueError(f"not a BPE vocabulary (kind {data.get('kind')!r}).")
        return cls(tuple(data["tokens"]), tuple((a, b) for a, b in data["merges"]))


def word_counts(texts: Iterable[str]) -> collections.Counter:
    """Counts of the pre-tokenised words of ``texts`` (``<unk>`` left out)."""
    counts = collections.Counter()
    for text in texts:
        counts.update(tokenize(text))
    counts.pop(UNK, None)
    return counts


def train_bpe(texts: Iterable[str], size: int, *, min_pair_count: int = 2) -> SubwordVocab:
    """Learns a BPE vocabulary of ``size`` entries from ``texts``.

    Each merge takes the adjacent pair with the highest count over all words
    (word counts times occurrences in the word), ties broken by the smaller pair,
    and merges it everywhere, left to right. Pair counts are updated only for the
    words that contain the merged pair and the best pair is kept in a heap with
    lazy deletion, so training on the ~38k distinct words here takes seconds.

    Args:
      texts: the training text (held-out text must not be included).
      size: total vocabulary size: the 3 special tokens, every character seen
        (word-initial and ``##`` continuation forms) and the merged pieces.
      min_pair_count: stop early once the best pair occurs fewer times.

    Returns:
      A :class:`SubwordVocab`; the same for the same texts, in any order.
    """
    counts = word_counts(texts)
    words = sorted(counts)
    freqs = [counts[w] for w in words]
    segments = [_symbols(w) for w in words]
    alphabet = sorted({s for seg in segments for s in seg})
    if len(SPECIALS) + len(alphabet) > size:
        raise ValueError(
            f"vocabulary size {size} is below the {len(SPECIALS)} special tokens plus the "
            f"{len(alphabet)} characters of the text."
        )
    tokens = [*SPECIALS, *alphabet]
    known = set(tokens)
    merges: list[tuple[str, str]] = []

    pair_counts: collections.Counter = collections.Counter()
    where: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    for i, seg in enumerate(segments):
        for pair in zip(seg, seg[1:]):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in pair_counts.items()]
    heapq.heapify(heap)

    while len(tokens) < size and heap:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative:
            continue  # stale entry: the count changed since it was pushed
        if -negative < min_pair_count:
            break
        merges.append(pair)
        new = _join(*pair)
        if new not in known:
            known.add(new)
            tokens.append(new)
        changed = set()
        for i in where.pop(pair):
            seg, n = segments[i], freqs[i]
            for old in zip(seg, seg[1:]):
                pair_counts[old] -= n
                changed.add(old)
            merged = _merge(seg, pair)
            segments[i] = merged
            old_pairs = set(zip(seg, seg[1:]))
            new_pairs = set(zip(merged, merged[1:]))
            for gone in old_pairs - new_pairs:
                if gone != pair:
                    where[gone].discard(i)
            for p in zip(merged, merged[1:]):
                pair_counts[p] += n
                where[p].add(i)
                changed.add(p)
        pair_counts.pop(pair, None)
        for p in changed:
            count = pair_counts.get(p, 0)
            if count > 0:
                heapq.heappush(heap, (-count, p))
            elif p != pair:
                pair_counts.pop(p, None)
                where.pop(p, None)
    return SubwordVocab(tuple(tokens), tuple(merges))


__all__ = ["CONTINUATION", "SubwordVocab", "train_bpe", "word_counts"]
