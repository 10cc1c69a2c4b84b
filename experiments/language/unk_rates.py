"""<unk> rates of the word and BPE vocabularies, the build time, and a unigram reference.

Both vocabularies are built from the training text only (``language.shared_vocab``)
and measured on the training text and on the held-out text of issue 6. Run from the
repository root:

  python experiments/language/unk_rates.py --sizes 3000 8000 --out experiments/language/unk_rates.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from metajax.data import text as text_data
from metajax.recipes import language


def held_out_text(data_dir=None) -> dict[str, list[str]]:
    books = text_data.load_text_sources(language.HELD_OUT_SOURCES, data_dir)
    clinc = text_data.load_clinc150(("test",), data_dir)
    clinc_held = [
        t
        for t, y in zip(clinc.texts, clinc.labels)
        if clinc.domains[y] in language.HELD_OUT_DOMAINS
    ]
    texts, utterances = language.load_training_text(data_dir)
    return {
        "training text": [*texts.values(), *utterances],
        "held-out books (Chesterton, Whitman)": list(books.values()),
        "CLINC150 test, held-out domains": clinc_held,
        "BANKING77 test": list(text_data.load_banking77(("test",), data_dir).texts),
    }


def unigram_reference(vocab, train: list[str], held_out: list[str]) -> dict:
    """Cross-entropy (nats) and accuracy on the held-out non-``<unk>`` tokens of the
    training-text unigram distribution, add-one smoothed (the masked-LM targets'
    trivial baseline)."""
    counts = np.zeros(len(vocab), np.float64)
    for text in train:
        np.add.at(counts, np.asarray(vocab.encode(text), np.int64), 1)
    counts += 1  # add-one smoothing: a piece absorbed by later merges may never occur
    counts[: len(text_data.SPECIALS)] = 0
    log_p = np.log(np.maximum(counts, 1e-300) / counts.sum())
    ids = np.concatenate([np.asarray(vocab.encode(t), np.int64) for t in held_out])
    ids = ids[ids >= len(text_data.SPECIALS)]
    return {
        "unigram_nats": float(-log_p[ids].mean()),
        "unigram_accuracy": float((ids == counts.argmax()).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    corpora = held_out_text()
    rows = []
    for size in args.sizes:
        for tokenizer in ("word", "bpe"):
            start = time.perf_counter()
            vocab = language.shared_vocab(size, None, tokenizer)
            seconds = time.perf_counter() - start
            books = "held-out books (Chesterton, Whitman)"
            reference = unigram_reference(vocab, corpora["training text"], corpora[books])
            for name, texts in corpora.items():
                words = sum(len(text_data.tokenize(t)) for t in texts)
                tokens = sum(len(vocab.encode(t)) for t in texts)
                rows.append(
                    {
                        "tokenizer": tokenizer,
                        "vocab_size": len(vocab),
                        "build_seconds": round(seconds, 2),
                        "text": name,
                        "unk_per_token": text_data.unknown_rate(vocab, texts),
                        "unk_per_word": text_data.unknown_rate(vocab, texts, per="word"),
                        "tokens_per_word": tokens / words,
                        **(reference if name == books else {}),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
