"""Language task builders, drawn on the device and reproducible from a key.

Three families, all returning :class:`metajax.Task`:

1. **Domain-adaptation masked-LM tasks** (:func:`sample_mlm_task`): one text source
   per task; support and query are passages of ``seq_len`` tokens from that
   source with masked positions (:func:`metajax.losses.mask_tokens`). Support
   passages come from the first half of the source and query passages from the
   second half, so the query never repeats support text. Batches carry
   ``inputs`` (corrupted tokens), ``targets`` (original tokens) and per-token
   ``weights`` (1 exactly at masked, non-padding, non-``<unk>`` positions).
2. **SMLMT** (Bansal et al. 2020, :func:`build_smlmt_pool` +
   :func:`sample_episode`): pick ``ways`` words, ``shots + queries`` sentences
   containing each, replace the word by ``<mask>`` everywhere in the sentence;
   the label is which of the chosen words was masked. With a subword vocabulary
   (:mod:`metajax.data.subword`) a word is several pieces and every piece of it is
   masked (whole-word masking), so no piece gives the word away.
3. **N-way K-shot intent episodes** (:func:`build_class_pool` +
   :func:`sample_episode`) over a subset of intents (e.g. held-out CLINC150 domains).

The host builds fixed-size arrays once (:class:`TokenStreams`, :class:`ClassPool`);
the samplers are pure jittable functions of ``(key, data)``, so they run inside
the jitted train step and the same key gives the same task bit for bit. Labels of
an episode are ``0..ways-1`` in the random order the classes were drawn.

Reference: Bansal, Jha, Munkhdalai, McCallum, "Self-Supervised Meta-Learning for
Few-Shot Natural Language Classification Tasks", EMNLP 2020.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metajax.data.subword import word_counts
from metajax.data.text import (
    MASK_ID,
    PAD_ID,
    UNK_ID,
    IntentData,
    Vocab,
    pad_sequences,
    split_sentences,
    tokenize,
)
from metajax.losses import mask_tokens
from metajax.tasks import Batch, Task


class TokenStreams(NamedTuple):
    """Several token streams concatenated: source ``s`` is
    ``tokens[starts[s] : starts[s] + lengths[s]]``."""

    tokens: jax.Array
    starts: jax.Array
    lengths: jax.Array


def make_token_streams(vocab, texts: Mapping[str, str]) -> TokenStreams:
    """Encodes each text into one stream (in the order of ``texts``)."""
    encoded = [np.asarray(vocab.encode(t), np.int32) for t in texts.values()]
    lengths = np.asarray([len(e) for e in encoded], np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
    return TokenStreams(
        jnp.asarray(np.concatenate(encoded)), jnp.asarray(starts), jnp.asarray(lengths)
    )


def mask_passages(key: jax.Array, tokens: jax.Array, rate: float) -> Batch:
    """A masked-LM batch from ``[B, T]`` tokens: ``<pad>`` and ``<unk>`` are never targets."""
    inputs, weights = mask_tokens(key, tokens, rate=rate, mask_id=MASK_ID, pad_id=PAD_ID)
    weights = weights * (tokens != UNK_ID)
    return Batch(inputs, tokens, weights)


def sample_mlm_task(
    key: jax.Array,
    streams: TokenStreams,
    source_ids: jax.Array,
    *,
    support: int,
    query: int,
    seq_len: int,
    rate: float = 0.15,
) -> Task:
    """One domain-adaptation masked-LM task.

    Args:
      key: PRNG key; the same key gives the same task.
      streams: the encoded sources.
      source_ids: ``[S]`` indices of the sources to draw the task's source from
        (e.g. the meta-training sources).
      support: passages in the support set.
      query: passages in the query set.
      seq_len: tokens per passage (every source needs ``>= 2 * seq_len`` tokens).
      rate: masking rate.

    Returns:
      ``Task(support=Batch([support, T]...), query=Batch([query, T]...))``.
    """
    k_src, k_sup, k_qry, k_msup, k_mqry = jax.random.split(key, 5)
    source = source_ids[jax.random.randint(k_src, (), 0, source_ids.shape[0])]
    start, length = streams.starts[source], streams.lengths[source]
    half = length // 2

    def passages(k, lo, hi, n):
        # Windows start uniformly in [lo, hi - seq_len].
        offsets = jax.random.randint(k, (n,), 0, jnp.maximum(hi - lo - seq_len, 0) + 1)
        index = start + lo + offsets[:, None] + jnp.arange(seq_len)[None, :]
        return jnp.take(streams.tokens, index, mode="clip")

    support_tokens = passages(k_sup, 0, half, support)
    query_tokens = passages(k_qry, half, length, query)
    return Task(
        support=mask_passages(k_msup, support_tokens, rate),
        query=mask_passages(k_mqry, query_tokens, rate),
    )


class ClassPool(NamedTuple):
    """Sentences grouped into classes, as fixed-size arrays.

    Attributes:
      sentences: ``[M, T]`` padded token ids.
      members: ``[C, max_members]`` sentence indices of each class (padded with 0).
      counts: ``[C]`` valid entries of each row of ``members``.
      class_tokens: ``[C]`` word to replace by ``<mask>`` in the class's sentences
        (SMLMT: the class's word, as a value of ``word_ids``), or -1 for none
        (labelled data).
      word_ids: ``[M, T]`` the word each token belongs to (every piece of a word
        carries the word's id; -1 for none), or ``None``: the tokens themselves
        (a word vocabulary, where a word is one token).
    """

    sentences: jax.Array
    members: jax.Array
    counts: jax.Array
    class_tokens: jax.Array
    word_ids: jax.Array | None = None


def _pack_members(groups: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(g) for g in groups)
    members = np.zeros((len(groups), width), np.int32)
    for i, g in enumerate(groups):
        members[i, : len(g)] = g
    return members, np.asarray([len(g) for g in groups], np.int32)


_WORD_RE = re.compile(r"^[a-z][a-z']*$")


def _smlmt_word_id(vocab, texts: Sequence[str], skip_most_frequent: int):
    """``word -> class id or -1``: the words that may be SMLMT classes.

    A word vocabulary keeps its historical rule: a word's class id is its token id,
    and the ``skip_most_frequent`` first vocabulary words are not classes. Any other
    vocabulary ranks the words of ``texts`` by count (ties a-z) and uses the rank,
    skipping the most frequent ones and words with an unknown piece.
    """
    if isinstance(vocab, Vocab):
        first_word = 3 + skip_most_frequent

        def word_id(word):
            i = vocab.id(word)
            return i if i >= first_word and _WORD_RE.match(word) else -1

        return word_id
    counts = word_counts(texts)
    ranks = {w: r for r, w in enumerate(sorted(counts, key=lambda w: (-counts[w], w)))}

    def word_id(word):
        r = ranks.get(word, -1)
        if r < skip_most_frequent or not _WORD_RE.match(word):
            return -1
        return r if UNK_ID not in vocab.encode_word(word) else -1

    return word_id


def build_smlmt_pool(
    vocab,
    texts: Iterable[str],
    *,
    seq_len: int,
    min_sentences: int,
    max_per_word: int = 64,
    skip_most_frequent: int = 50,
    min_tokens: int = 5,
    seed: int = 0,
) -> ClassPool:
    """The SMLMT classes: words with at least ``min_sentences`` sentences.

    Args:
      vocab: a word :class:`~metajax.data.text.Vocab` or a subword vocabulary
        (:class:`~metajax.data.subword.SubwordVocab`); with subwords every piece of
        the class word is masked.
      texts: unlabelled text; split into sentences of ``min_tokens`` to ``seq_len``
        tokens (longer ones are truncated).
      seq_len: sentence length ``T``.
      min_sentences: a word becomes a class if it occurs in this many sentences
        (at least ``shots + queries`` of the episodes to be drawn).
      max_per_word: at most this many sentences are kept per word (a random
        subset, fixed by ``seed``).
      skip_most_frequent: the most frequent words (function words) are not classes.
      min_tokens: shortest sentence kept.
      seed: seed of the sentence subset.

    Returns:
      A :class:`ClassPool` whose ``class_tokens`` are the words' ids in ``word_ids``.
    """
    texts = list(texts)
    word_id = _smlmt_word_id(vocab, texts, skip_most_frequent)
    sentences, sentence_words = [], []
    for text in texts:
        for sentence in split_sentences(text):
            ids, words = [], []
            for word in tokenize(sentence):
                pieces = vocab.encode_word(word)
                ids.extend(pieces)
                words.extend([word_id(word)] * len(pieces))
            if len(ids) >= min_tokens:
                sentences.append(ids[:seq_len])
                sentence_words.append(words[:seq_len])
    order = np.random.default_rng(seed).permutation(len(sentences))
    groups: dict[int, list[int]] = {}
    for i in order:
        for word in set(sentence_words[i]):
            if word >= 0:
                group = groups.setdefault(word, [])
                if len(group) < max_per_word:
                    group.append(int(i))
    words = sorted(w for w, g in groups.items() if len(g) >= min_sentences)
    if len(words) < 2:
        raise ValueError(
            f"only {len(words)} words occur in >= {min_sentences} sentences; SMLMT needs more text."
        )
    members, counts = _pack_members([groups[w] for w in words])
    word_ids = np.full((len(sentences), seq_len), -1, np.int32)
    for i, ws in enumerate(sentence_words):
        word_ids[i, : len(ws)] = ws
    return ClassPool(
        jnp.asarray(pad_sequences(sentences, seq_len)),
        jnp.asarray(members),
        jnp.asarray(counts),
        jnp.asarray(np.asarray(words, np.int32)),
        jnp.asarray(word_ids),
    )


def build_class_pool(vocab, data: IntentData, *, seq_len: int) -> ClassPool:
    """A pool of labelled utterances; class ``c`` of the pool is ``data`` label ``c``.

    Classes without examples get count 0 (never pass them to :func:`sample_episode`).
    """
    groups: list[list[int]] = [[] for _ in data.label_names]
    for i, label in enumerate(data.labels):
        groups[int(label)].append(i)
    if not any(groups):
        raise ValueError("the intent data set is empty.")
    members, counts = _pack_members([g or [0] for g in groups])
    counts = np.where([bool(g) for g in groups], counts, 0).astype(np.int32)
    return ClassPool(
        jnp.asarray(pad_sequences([vocab.encode(t) for t in data.texts], seq_len)),
        jnp.asarray(members),
        jnp.asarray(counts),
        jnp.full((len(groups),), -1, jnp.int32),
    )


def classes_with_at_least(pool: ClassPool, n: int, classes: Sequence[int] | None = None):
    """The classes (optionally among ``classes``) with at least ``n`` members, as an array."""
    counts = np.asarray(pool.counts)
    candidates = range(len(counts)) if classes is None else classes
    return jnp.asarray([c for c in candidates if counts[c] >= n], jnp.int32)


def sample_episode(
    key: jax.Array,
    pool: ClassPool,
    class_ids: jax.Array,
    *,
    ways: int,
    shots: int,
    queries: int,
    with_classes: bool = False,
) -> Task | tuple[Task, jax.Array]:
    """One N-way K-shot episode (SMLMT or labelled, depending on the pool).

    Args:
      key: PRNG key; the same key gives the same episode.
      pool: the classes and their sentences.
      class_ids: ``[C']`` classes to draw from (each with ``>= shots + queries``
        members; see :func:`classes_with_at_least`).
      ways: classes per episode, N.
      shots: support examples per class, K.
      queries: query examples per class.
      with_classes: also return the ``[ways]`` pool classes of labels ``0..ways-1``.

    Returns:
      A task whose support is ``[ways * shots, T]`` tokens with labels in
      ``[0, ways)`` (class-major order) and whose query is ``[ways * queries, T]``.
    """
    if class_ids.shape[0] < ways:
        raise ValueError(f"{ways}-way episodes need >= {ways} classes; got {class_ids.shape[0]}.")
    k_classes, k_members = jax.random.split(key)
    chosen = jax.random.choice(k_classes, class_ids, (ways,), replace=False)
    per_class = shots + queries
    max_members = pool.members.shape[1]

    def draw(k, c):
        # A uniformly random subset without replacement among the valid members.
        u = jax.random.uniform(k, (max_members,))
        u = jnp.where(jnp.arange(max_members) < pool.counts[c], u, 2.0)
        return pool.members[c, jnp.argsort(u)[:per_class]]

    rows = jax.vmap(draw)(jax.random.split(k_members, ways), chosen)  # [ways, K+Q]
    tokens = pool.sentences[rows]  # [ways, K+Q, T]
    words = tokens if pool.word_ids is None else pool.word_ids[rows]
    word = pool.class_tokens[chosen][:, None, None]
    # Every token of the class word (all its pieces, with a subword vocabulary).
    tokens = jnp.where((word >= 0) & (words == word), MASK_ID, tokens)
    labels = jnp.broadcast_to(jnp.arange(ways, dtype=jnp.int32)[:, None], rows.shape)
    seq_len = tokens.shape[-1]

    def batch(sl):
        t = tokens[:, sl].reshape(-1, seq_len)
        return Batch(t, labels[:, sl].reshape(-1), jnp.ones(t.shape[:1], jnp.float32))

    task = Task(support=batch(slice(0, shots)), query=batch(slice(shots, per_class)))
    return (task, chosen) if with_classes else task


__all__ = [
    "ClassPool",
    "TokenStreams",
    "build_class_pool",
    "build_smlmt_pool",
    "classes_with_at_least",
    "make_token_streams",
    "mask_passages",
    "sample_episode",
    "sample_mlm_task",
]
