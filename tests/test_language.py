"""Language meta-learning: masking, the masked loss, task builders, the transformer, smoke runs."""

from __future__ import annotations

import collections
import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax as mj
from metajax.data import subword, text_tasks
from metajax.data import text as text_data
from metajax.inner import adapt_mask
from metajax.models.transformer import TransformerEncoder, adapt_subset
from metajax.recipes import language

PAD, UNK, MASK = text_data.PAD_ID, text_data.UNK_ID, text_data.MASK_ID


def _has_text_data() -> bool:
    try:
        text_data.text_dir()
    except FileNotFoundError:
        return False
    return True


needs_data = pytest.mark.skipif(not _has_text_data(), reason="text data not found")


# ---------------------------------------------------------------- masking and the masked loss


def _padded_tokens(rng, rows=400, length=64):
    tokens = rng.integers(3, 50, size=(rows, length)).astype(np.int32)
    lengths = rng.integers(1, length + 1, size=rows)
    tokens[np.arange(length)[None, :] >= lengths[:, None]] = PAD
    return jnp.asarray(tokens)


def test_mask_tokens_rate_padding_and_weights():
    tokens = _padded_tokens(np.random.default_rng(0))
    inputs, weights = mj.mask_tokens(jax.random.key(1), tokens, rate=0.15, mask_id=MASK, pad_id=PAD)
    real = np.asarray(tokens != PAD)
    w = np.asarray(weights)
    # Rate: fraction of non-padding positions selected (about 12k of them, so +-0.01 is > 3 sigma).
    assert abs(w[real].mean() - 0.15) < 0.01
    # Padding is never selected and never changed.
    assert not w[~real].any()
    np.testing.assert_array_equal(np.asarray(inputs)[~real], PAD)
    # With replace_prob=1, the corrupted positions are exactly the weighted ones.
    np.testing.assert_array_equal(np.asarray(inputs) == MASK, w == 1)
    np.testing.assert_array_equal(np.asarray(inputs)[w == 0], np.asarray(tokens)[w == 0])
    assert set(np.unique(w)) <= {0.0, 1.0}


def test_mask_passages_never_targets_unknown_words():
    tokens = _padded_tokens(np.random.default_rng(2))
    tokens = jnp.where(tokens % 5 == 0, UNK, tokens)
    batch = text_tasks.mask_passages(jax.random.key(3), tokens, rate=0.5)
    w = np.asarray(batch.weights)
    assert not w[np.asarray(tokens) == UNK].any()
    assert not w[np.asarray(tokens) == PAD].any()
    assert w.sum() > 0
    np.testing.assert_array_equal(batch.targets, tokens)


def test_masked_token_loss_equals_hand_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4)).astype(np.float32)
    targets = rng.integers(0, 4, size=(2, 3)).astype(np.int32)
    weights = np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]], np.float32)
    loss, aux = mj.masked_token_loss(logits, targets, weights)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    expected = (weights * ce).sum() / weights.sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    correct = logits.argmax(-1) == targets
    np.testing.assert_allclose(aux["accuracy"], (weights * correct).sum() / weights.sum())
    # Masked-out positions change neither the loss nor its gradient.
    changed = logits.copy()
    changed[0, 1] = 100.0
    grad = jax.grad(lambda x: mj.masked_token_loss(x, targets, weights)[0])
    np.testing.assert_allclose(mj.masked_token_loss(changed, targets, weights)[0], loss)
    assert not np.asarray(grad(logits))[0, 1].any()


# ---------------------------------------------------------------- vocabulary and loaders


def test_vocab_is_deterministic_and_encodes_unknown_words():
    texts = ["The cat sat. The dog sat!", "A cat, a dog; the END"]
    vocab = text_data.build_vocab(texts, 8)
    assert vocab.tokens[:3] == ("<pad>", "<unk>", "<mask>")
    assert vocab.tokens[3:] == ("the", "a", "cat", "dog", "sat")  # by count, then a-z
    assert text_data.build_vocab(reversed(texts), 8) == vocab
    assert vocab.encode("the zebra sat") == [3, UNK, 7]
    assert text_data.tokenize("Don't <unk> panic!") == ["don't", "<unk>", "panic", "!"]


def test_missing_data_raises_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="METAJAX_DATA_DIR"):
        text_data.load_text_source("tinyshakespeare", data_dir=tmp_path)
    (tmp_path / "text" / "clinc150").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="domains.json"):
        text_data.load_clinc150(data_dir=tmp_path)


@needs_data
def test_intent_loaders():
    clinc = text_data.load_clinc150(("test",))
    assert len(clinc.label_names) == 150 and len(set(clinc.domains)) == 10
    assert np.bincount(clinc.labels, minlength=150).tolist() == [30] * 150
    banking = text_data.load_banking77(("test",))
    assert len(banking.label_names) == 77
    assert np.bincount(banking.labels, minlength=77).tolist() == [40] * 77


# ---------------------------------------------------------------- task builders


def _streams():
    # Distinct token values per position, so a passage tells where it came from.
    return text_tasks.TokenStreams(
        tokens=jnp.arange(3, 3 + 300, dtype=jnp.int32),
        starts=jnp.array([0, 100], jnp.int32),
        lengths=jnp.array([100, 200], jnp.int32),
    )


def test_mlm_task_is_reproducible_and_splits_each_source_in_halves():
    streams = _streams()
    sample = jax.jit(
        lambda k: text_tasks.sample_mlm_task(
            k, streams, jnp.array([0, 1]), support=6, query=5, seq_len=10, rate=0.3
        )
    )
    a, b, c = sample(jax.random.key(0)), sample(jax.random.key(0)), sample(jax.random.key(1))
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a.support.targets, c.support.targets)
    for key in range(20):
        task = sample(jax.random.key(key))
        sup, qry = np.asarray(task.support.targets) - 3, np.asarray(task.query.targets) - 3
        chex.assert_shape(task.support.inputs, (6, 10))
        # Contiguous windows of one source, support in its first half, query in its second.
        assert (np.diff(sup, axis=1) == 1).all() and (np.diff(qry, axis=1) == 1).all()
        source = 0 if sup.max() < 100 else 1
        start, length = (0, 100) if source == 0 else (100, 200)
        assert sup.min() >= start and sup.max() < start + length // 2
        assert qry.min() >= start + length // 2 and qry.max() < start + length
        w = np.asarray(task.support.weights)
        np.testing.assert_array_equal(np.asarray(task.support.inputs) == MASK, w == 1)


def _toy_text(words):
    """300 sentences of five filler words and one of ``words``, shuffled."""
    filler = ["we", "saw", "a", "big", "red", "ripe", "small", "fruit", "today"]
    rng = np.random.default_rng(0)
    sentences = []
    for _ in range(300):
        ws = list(rng.choice(filler, size=5)) + [str(rng.choice(words))]
        rng.shuffle(ws)
        sentences.append(" ".join(ws) + ".")
    return " ".join(sentences)


def _toy_pool():
    text = _toy_text(["apple", "pear", "plum", "fig", "kiwi", "lime"])
    vocab = text_data.build_vocab([text], 40)
    pool = text_tasks.build_smlmt_pool(
        vocab, [text], seq_len=8, min_sentences=10, skip_most_frequent=0, min_tokens=3
    )
    return vocab, pool


def test_smlmt_episodes_are_reproducible_with_consistent_labels():
    vocab, pool = _toy_pool()
    class_ids = jnp.arange(pool.counts.shape[0])
    sample = jax.jit(
        lambda k: text_tasks.sample_episode(
            k, pool, class_ids, ways=3, shots=2, queries=4, with_classes=True
        )
    )
    (task, chosen), (again, chosen2) = sample(jax.random.key(5)), sample(jax.random.key(5))
    chex.assert_trees_all_equal((task, chosen), (again, chosen2))
    assert len(set(np.asarray(chosen).tolist())) == 3
    sentences = np.asarray(pool.sentences)
    for key in range(10):
        task, chosen = sample(jax.random.key(key))
        for batch, per_class in ((task.support, 2), (task.query, 4)):
            labels = np.asarray(batch.targets)
            np.testing.assert_array_equal(labels, np.repeat(np.arange(3), per_class))
            for tokens, label in zip(np.asarray(batch.inputs), labels):
                word = int(pool.class_tokens[chosen[label]])
                assert MASK in tokens and word not in tokens
                # Un-masking gives a sentence of the pool that contains the class word.
                original = np.where(tokens == MASK, word, tokens)
                members = np.asarray(pool.members[chosen[label]])[: int(pool.counts[chosen[label]])]
                assert any(np.array_equal(original, sentences[m]) for m in members)
        # Support and query sentences are distinct draws.
        rows = {tuple(r) for r in np.asarray(task.support.inputs)}
        assert not rows & {tuple(r) for r in np.asarray(task.query.inputs)}


def test_smlmt_with_subwords_masks_every_piece_of_the_word():
    words = ["unkindness", "strawberry", "kingfisher", "bandana", "plum", "undertaking"]
    text = _toy_text(words)
    # A small vocabulary: the long words stay split into several pieces.
    vocab = subword.train_bpe([text], 60)
    assert max(len(vocab.encode_word(w)) for w in words) >= 3
    pool = text_tasks.build_smlmt_pool(
        vocab, [text], seq_len=32, min_sentences=10, skip_most_frequent=0, min_tokens=3
    )
    # Class ids of a subword pool are the words' frequency ranks (ties a-z).
    counts = subword.word_counts([text])
    id_to_word = dict(enumerate(sorted(counts, key=lambda w: (-counts[w], w))))
    class_ids = jnp.arange(pool.counts.shape[0])
    sample = jax.jit(
        lambda k: text_tasks.sample_episode(
            k, pool, class_ids, ways=3, shots=2, queries=3, with_classes=True
        )
    )
    sentences_arr = np.asarray(pool.sentences)
    multi_piece = 0
    for key in range(10):
        task, chosen = sample(jax.random.key(key))
        for batch in (task.support, task.query):
            for tokens, label in zip(np.asarray(batch.inputs), np.asarray(batch.targets)):
                word = id_to_word[int(pool.class_tokens[chosen[label]])]
                pieces = vocab.encode_word(word)
                multi_piece += len(pieces) > 1
                # The masked positions are exactly the pieces of the word's occurrences.
                members = np.asarray(pool.members[chosen[label]])[: int(pool.counts[chosen[label]])]
                unmasked = [
                    sentences_arr[m]
                    for m in members
                    if np.array_equal(
                        np.where(tokens == MASK, sentences_arr[m], tokens), sentences_arr[m]
                    )
                ]
                assert unmasked, "un-masking gives a pool sentence of the class"
                # Expected mask, word by word from the decoded sentence (none is truncated).
                expected, source = [], unmasked[0]
                for w in text_data.tokenize(vocab.decode(source)):
                    expected += [w == word] * len(vocab.encode_word(w))
                expected += [False] * (len(source) - len(expected))  # padding
                np.testing.assert_array_equal(tokens == MASK, expected)
                assert word not in vocab.decode(tokens).split(" ")
    assert multi_piece > 0


def test_intent_episodes_draw_only_the_given_classes():
    texts = [f"utterance {i} of class {c}" for c in range(6) for i in range(8)]
    data = text_data.IntentData(
        tuple(texts), np.repeat(np.arange(6), 8).astype(np.int32), tuple(map(str, range(6)))
    )
    vocab = text_data.build_vocab(texts, 30)
    pool = text_tasks.build_class_pool(vocab, data, seq_len=6)
    allowed = text_tasks.classes_with_at_least(pool, 5, [1, 3, 4])
    for key in range(10):
        task, chosen = text_tasks.sample_episode(
            jax.random.key(key), pool, allowed, ways=2, shots=2, queries=3, with_classes=True
        )
        assert set(np.asarray(chosen).tolist()) <= {1, 3, 4}
        for tokens, label in zip(np.asarray(task.query.inputs), np.asarray(task.query.targets)):
            assert vocab.decode(tokens).endswith(f"class {int(chosen[label])}")


# ---------------------------------------------------------------- the transformer


def test_transformer_heads_padding_and_adapt_subsets():
    model = TransformerEncoder(
        vocab_size=20, num_classes=3, width=16, depth=2, heads=2, mlp_dim=32, max_len=8
    )
    tokens = jnp.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]], jnp.int32)
    # Jitted (eager, every small op of the transformer compiles apart).
    params = jax.jit(model.init)(jax.random.key(0), tokens)
    apply = jax.jit(model.apply, static_argnames="method")
    chex.assert_shape(apply(params, tokens, method="mlm"), (2, 5, 20))
    chex.assert_shape(apply(params, tokens, method="features"), (2, 16))
    # Zero-initialised classification head: every class equally likely at first.
    np.testing.assert_array_equal(apply(params, tokens, method="classify"), 0.0)
    # Padding changes nothing: more padding, same features.
    longer = jnp.pad(tokens, ((0, 0), (0, 3)))
    np.testing.assert_allclose(
        apply(params, longer, method="features"),
        apply(params, tokens, method="features"),
        atol=1e-5,
    )
    last = adapt_mask(params, adapt_subset("last", 2))["params"]
    assert all(jax.tree.leaves(last["block_1"])) and not any(jax.tree.leaves(last["block_0"]))
    assert all(jax.tree.leaves(last["mlm_head"])) and not any(jax.tree.leaves(last["embed"]))
    with pytest.raises(ValueError, match="adapter_rank"):
        adapt_mask(params, adapt_subset("adapters", 2))
    with_adapters = TransformerEncoder(
        vocab_size=20,
        num_classes=3,
        width=16,
        depth=2,
        heads=2,
        mlp_dim=32,
        max_len=8,
        adapter_rank=4,
    )
    p2 = jax.jit(with_adapters.init)(jax.random.key(0), tokens)
    mask = adapt_mask(p2, adapt_subset("adapters", 2))["params"]
    assert all(jax.tree.leaves(mask["block_0"]["adapter_up"]))
    assert not any(jax.tree.leaves(mask["block_0"]["attn"]))
    # Zero-initialised adapters: the same function as without them.
    np.testing.assert_allclose(
        jax.jit(with_adapters.apply, static_argnames="method")(p2, tokens, method="mlm"),
        apply(params, tokens, method="mlm"),
        atol=1e-5,
    )


# ---------------------------------------------------------------- smoke runs on the real corpora


@needs_data
def test_meta_steps_on_real_corpora_decrease_the_query_loss():
    # The first 200k characters of two real sources keep tokenising cheap.
    texts = {
        name: text[:200_000]
        for name, text in text_data.load_text_sources(
            ["tinyshakespeare", "wikitext-2/valid"]
        ).items()
    }
    vocab = text_data.build_vocab(texts.values(), 400)
    streams = text_tasks.make_token_streams(vocab, texts)
    # Jitted sampler and init: one compile each instead of many eager dispatches.
    tasks = jax.jit(
        jax.vmap(
            lambda k: text_tasks.sample_mlm_task(
                k, streams, jnp.arange(2), support=4, query=4, seq_len=16, rate=0.3
            )
        )
    )(jax.random.split(jax.random.key(0), 2))
    model = TransformerEncoder(vocab_size=400, width=32, depth=1, heads=2, mlp_dim=64, max_len=16)
    params = jax.jit(model.init)(jax.random.key(1), tasks.support.inputs[0])
    learner = mj.maml(
        language.mlm_loss(model), inner_lr=0.1, inner_steps=1, adapt=adapt_subset("last", 1)
    )
    outer = optax.adam(3e-3)
    state = mj.init_train_state(learner, params, outer, jax.random.key(2))
    step = mj.jit_train_step(mj.make_train_step(learner, outer))
    losses = []
    for _ in range(8):
        state, metrics = step(state, tasks)
        losses.append(float(metrics["query_loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5
    # The inner step helps on the support-matched query, too.
    assert float(metrics["query_loss"]) < float(metrics["query_loss_pre"])


TINY = dict(vocab_size=300, width=16, depth=1, heads=2, mlp_dim=32, seq_len=12)


# The two recipe smoke tests compile a dozen programs (train and eval steps of several
# runs): about a minute on an idle 2-core CPU, several under load, so they are "slow".
@pytest.mark.slow
@needs_data
def test_text_mlm_recipe_smoke(tmp_path):
    common = dict(
        TINY,
        steps=4,
        meta_batch=2,
        support=2,
        query=2,
        steps_per_call=2,
        log_every=2,
        eval_every=0,
        checkpoint_every=4,
        progress=False,
    )
    pretrained = language.train_mlm(
        language.TextMLMTrain(workdir=str(tmp_path / "pretrain"), algorithm="pretrain", **common)
    )
    # MAML continued from the plain-MLM run starts at its parameters.
    maml_cfg = language.TextMLMTrain(
        workdir=str(tmp_path / "maml"), init_from=str(tmp_path / "pretrain"), **common
    )
    start = language.initial_mlm_state(maml_cfg.resolved())[0].meta_params
    chex.assert_trees_all_equal(start, pretrained.meta_params)
    language.train_mlm(maml_cfg)
    results = language.evaluate_mlm(
        language.TextMLMEval(
            workdirs=(str(tmp_path / "maml"), str(tmp_path / "pretrain")),
            steps=(1,),
            num_tasks=4,
            support=2,
            query=2,
            batch=4,
            out=str(tmp_path),
        )
    )
    assert set(results["runs"]) == {str(tmp_path / "maml"), str(tmp_path / "pretrain")}
    assert (tmp_path / "text_mlm_eval.md").exists()
    # Same vocabulary, same tasks: paired loss and accuracy differences after 0 and 1 steps.
    assert len(results["paired"]) == 2 * 2
    lines = (tmp_path / "maml" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
def test_smlmt_recipe_and_intent_eval_smoke(tmp_path, tokenizer):
    language.train_mlm(
        language.TextMLMTrain(
            workdir=str(tmp_path / "mlm"),
            steps=2,
            meta_batch=1,
            support=2,
            query=2,
            steps_per_call=2,
            log_every=2,
            eval_every=0,
            checkpoint_every=2,
            progress=False,
            algorithm="pretrain",
            **{**TINY, "tokenizer": tokenizer},
        )
    )
    language.train_smlmt(
        language.SMLMTTrain(
            workdir=str(tmp_path / "smlmt"),
            init_from=str(tmp_path / "mlm"),
            steps=2,
            meta_batch=2,
            ways=3,
            shots=1,
            queries=2,
            inner_steps=1,
            algorithm="proto-maml",
            hybrid_fraction=0.5,
            steps_per_call=2,
            log_every=2,
            eval_every=2,
            checkpoint_every=2,
            progress=False,
        )
    )
    config = json.loads((tmp_path / "smlmt" / "config.json").read_text())
    assert config["width"] == TINY["width"]  # model fields come from --init-from
    assert config["tokenizer"] == tokenizer
    # Both runs saved the same vocabulary, of the chosen kind.
    vocab = text_data.load_vocab(tmp_path / "mlm" / "vocab.json")
    assert isinstance(vocab, subword.SubwordVocab) == (tokenizer == "bpe")
    assert text_data.load_vocab(tmp_path / "smlmt" / "vocab.json") == vocab
    results = language.evaluate_intents(
        language.IntentEval(
            workdirs=(
                str(tmp_path / "smlmt"),
                str(tmp_path / "mlm"),
                f"{tmp_path / 'smlmt'}@proto-finetune",
            ),
            scratch=True,
            ways=3,
            shots=(1,),
            queries=2,
            episodes=3,
            batch=3,
            inner_steps=1,
            baseline=f"{tmp_path / 'mlm'}@prototypes",
            out=str(tmp_path),
        )
    )
    # (3 runs x 2 methods + 1 proto-finetune) x 2 datasets
    assert len(results["rows"]) == (3 * 2 + 1) * 2
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results["rows"])
    # Every other row against the baseline, per data set.
    assert len(results["paired"]) == (3 * 2 + 1 - 1) * 2
    assert "Paired accuracy differences" in (tmp_path / "intent_eval.md").read_text()


# ---------------------------------------------------------------- subword vocabulary and paired CIs


def _reference_bpe(texts, size):
    """Textbook BPE: recount every pair after every merge (slow, obviously right)."""
    counts = subword.word_counts(texts)
    segments = {w: subword._symbols(w) for w in counts}
    tokens = [*text_data.SPECIALS, *sorted({s for seg in segments.values() for s in seg})]
    merges = []
    while len(tokens) < size:
        pairs = collections.Counter()
        for w, seg in segments.items():
            for pair in zip(seg, seg[1:]):
                pairs[pair] += counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        new = subword._join(*best)
        if new not in tokens:
            tokens.append(new)
        segments = {w: subword._merge(seg, best) for w, seg in segments.items()}
    return tokens, merges, segments


SMALL_TEXT = (
    "The unkindness of kings, the kindness of strangers; kingdoms rise and fall. "
    "Aaaa! banana bandana. It's 2024 and the kingfisher's song is unkind, isn't it? "
) * 3


def test_bpe_matches_the_textbook_algorithm_and_is_deterministic():
    texts = [SMALL_TEXT, "a second, shorter text about kings and bananas."]
    vocab = subword.train_bpe(texts, 80)
    tokens, merges, segments = _reference_bpe(texts, 80)
    assert list(vocab.tokens) == tokens and list(vocab.merges) == merges
    assert len(vocab) == 80
    # Same text in any order, same merges.
    assert subword.train_bpe(list(reversed(texts)), 80) == vocab
    # Encoding a training word reproduces its training segmentation.
    for word, seg in segments.items():
        assert vocab.pieces(word) == seg, word
    assert vocab.encode("<unk>") == [UNK]


@needs_data
def test_round_trip_unknown_rate_and_json_on_real_text(tmp_path):
    train = [
        text[:150_000]
        for text in text_data.load_text_sources(["tinyshakespeare", "wikitext-2/valid"]).values()
    ]
    held_out = text_data.load_text_source("gutenberg/chesterton-brown")[:100_000]
    bpe = subword.train_bpe(train, 1000)
    words = text_data.build_vocab(train, 1000)
    # Round trip: the training text exactly (as pre-tokenised words); held-out words exactly
    # wherever no character is unknown.
    for text in train:
        text = text[:20_000].replace("<unk>", "")
        assert bpe.decode(bpe.encode(text)) == " ".join(text_data.tokenize(text))
    decoded = bpe.decode(bpe.encode(held_out)).split(" ")
    original = text_data.tokenize(held_out)
    assert len(decoded) == len(original)
    known = [d == o for d, o in zip(decoded, original) if UNK not in bpe.encode_word(o)]
    assert all(known) and len(known) > 0.99 * len(original)
    # <unk>: far rarer than with the word vocabulary of the same size.
    bpe_rate = text_data.unknown_rate(bpe, [held_out], per="word")
    word_rate = text_data.unknown_rate(words, [held_out], per="word")
    assert bpe_rate < 0.01 < 0.2 < word_rate
    assert text_data.unknown_rate(bpe, [held_out]) <= bpe_rate
    # Saved and loaded, both kinds are the same vocabulary.
    for vocab in (bpe, words):
        text_data.save_vocab(vocab, tmp_path / "vocab.json")
        again = text_data.load_vocab(tmp_path / "vocab.json")
        assert again == vocab and again.encode(held_out[:5000]) == vocab.encode(held_out[:5000])


def test_paired_ci_equals_a_hand_computation():
    a = np.array([0.6, 0.4, 0.8, 0.5, 0.7])
    b = np.array([0.5, 0.5, 0.6, 0.4, 0.4])
    d = a - b  # 0.1, -0.1, 0.2, 0.1, 0.3: mean 0.12, sample sd sqrt(0.022)
    result = language.paired_ci(a, b)
    t4 = 2.7764451  # t_{0.975, 4}; the values below are SciPy's stats.t.ppf
    np.testing.assert_allclose(result["difference"], 0.12, rtol=1e-12)
    np.testing.assert_allclose(result["ci"], t4 * np.sqrt(0.022) / np.sqrt(5), rtol=1e-6)
    np.testing.assert_allclose(result["low"], d.mean() - result["ci"], rtol=1e-12)
    for df, t in ((1, 12.7062047), (2, 4.3026527), (10, 2.2281389), (599, 1.9639322)):
        np.testing.assert_allclose(language.student_t_quantile(0.975, df), t, rtol=1e-6)


def test_paired_intent_comparisons_pair_rows_of_the_same_data_and_shots():
    rows = [
        {"run": r, "method": "prototypes", "dataset": ds, "shots": 1, "per_episode": v}
        for r, ds, v in (
            ("base", "clinc150", [0.2, 0.4, 0.6]),
            ("new", "clinc150", [0.4, 0.4, 0.9]),
            ("other", "clinc150", [0.2, 0.6, 0.6]),
            ("base", "banking77", [0.5, 0.5, 0.5]),
            ("new", "banking77", [0.6, 0.4, 0.8]),
        )
    ]
    out = language.paired_intent_comparisons(rows, "base@prototypes")
    assert [(p["a"], p["b"], p["dataset"]) for p in out] == [
        ("new@prototypes", "base@prototypes", "clinc150"),
        ("other@prototypes", "base@prototypes", "clinc150"),
        ("new@prototypes", "base@prototypes", "banking77"),
    ]
    np.testing.assert_allclose(out[0]["difference"], (0.2 + 0.0 + 0.3) / 3)
    assert len(language.paired_intent_comparisons(rows)) == 3 + 1  # every pair
    with pytest.raises(ValueError, match="baseline"):
        language.paired_intent_comparisons(rows, "missing@prototypes")


def test_run_vocab_is_saved_with_the_run_and_checked(tmp_path, monkeypatch):
    built = subword.train_bpe([SMALL_TEXT], 70)
    monkeypatch.setattr(language, "shared_vocab", lambda size, data_dir, tokenizer: built)
    cfg = language.TextMLMTrain(workdir=str(tmp_path / "run"), tokenizer="bpe", vocab_size=70)
    assert language._training_vocab(cfg) == built
    saved = text_data.load_vocab(tmp_path / "run" / "vocab.json")
    assert saved == built
    # Evaluation and resume read the file, not a rebuild.
    monkeypatch.setattr(language, "shared_vocab", lambda *a: pytest.fail("rebuilt"))
    assert language.run_vocab(cfg, cfg.workdir) == built
    # A run started --init-from this one gets its vocabulary and saves a copy.
    child = language.TextMLMTrain(workdir=str(tmp_path / "child"), init_from=cfg.workdir)
    (tmp_path / "run" / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    child = child.resolved()
    assert child.tokenizer == "bpe" and language._training_vocab(child) == built
    assert text_data.load_vocab(tmp_path / "child" / "vocab.json") == built
    # A word config does not accept a BPE vocab.json.
    with pytest.raises(ValueError, match="tokenizer=word"):
        language.run_vocab(language.TextMLMTrain(vocab_size=70), cfg.workdir)


def test_runs_older_than_the_tokenizer_option_are_word_runs(tmp_path):
    old = {f: v for f, v in dataclasses.asdict(language.TextMLMTrain()).items() if f != "tokenizer"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = language.TextMLMTrain(workdir="elsewhere", init_from=str(tmp_path)).resolved()
    assert cfg.tokenizer == "word"
