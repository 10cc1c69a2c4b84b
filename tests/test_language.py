"""Language meta-learning: masking, the masked loss, task builders, the transformer, smoke runs."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax as mj
from metajax.data import text as text_data
from metajax.data import text_tasks
from metajax.inner import adapt_mask
from metajax.models.transformer import TransformerEncoder, adapt_subset

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


def _toy_pool():
    words = ["apple", "pear", "plum", "fig", "kiwi", "lime"]
    filler = ["we", "saw", "a", "big", "red", "ripe", "small", "fruit", "today"]
    rng = np.random.default_rng(0)
    sentences = []
    for _ in range(300):
        ws = list(rng.choice(filler, size=5)) + [str(rng.choice(words))]
        rng.shuffle(ws)
        sentences.append(" ".join(ws) + ".")
    text = " ".join(sentences)
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
    params = model.init(jax.random.key(0), tokens)
    chex.assert_shape(model.apply(params, tokens, method=model.mlm), (2, 5, 20))
    chex.assert_shape(model.apply(params, tokens, method=model.features), (2, 16))
    # Zero-initialised classification head: every class equally likely at first.
    np.testing.assert_array_equal(model.apply(params, tokens, method=model.classify), 0.0)
    # Padding changes nothing: more padding, same features.
    longer = jnp.pad(tokens, ((0, 0), (0, 3)))
    np.testing.assert_allclose(
        model.apply(params, longer, method=model.features),
        model.apply(params, tokens, method=model.features),
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
    p2 = with_adapters.init(jax.random.key(0), tokens)
    mask = adapt_mask(p2, adapt_subset("adapters", 2))["params"]
    assert all(jax.tree.leaves(mask["block_0"]["adapter_up"]))
    assert not any(jax.tree.leaves(mask["block_0"]["attn"]))
    # Zero-initialised adapters: the same function as without them.
    np.testing.assert_allclose(
        with_adapters.apply(p2, tokens, method=with_adapters.mlm),
        model.apply(params, tokens, method=model.mlm),
        atol=1e-5,
    )


# ---------------------------------------------------------------- smoke runs on the real corpora


@needs_data
def test_meta_steps_on_real_corpora_decrease_the_query_loss():
    from metajax.recipes import language

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
    from metajax.recipes import language

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
    lines = (tmp_path / "maml" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]


@pytest.mark.slow
@needs_data
def test_smlmt_recipe_and_intent_eval_smoke(tmp_path):
    from metajax.recipes import language

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
            **TINY,
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
            out=str(tmp_path),
        )
    )
    # (3 runs x 2 methods + 1 proto-finetune) x 2 datasets
    assert len(results["rows"]) == (3 * 2 + 1) * 2
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results["rows"])
