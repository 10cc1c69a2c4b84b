"""Data: on-device task samplers and loaders of real data sets.

``sinusoid``: the MAML regression tasks. ``omniglot``: loading (arrays, folders or
zips), downloads with checksums, and the standard class splits. ``episodes``:
N-way K-shot episodes sampled with ``jax.random`` inside jitted code. ``text``: text
corpora, CLINC150 and BANKING77 loaders and a word vocabulary built from training text.
``text_tasks``: masked-LM domain tasks, SMLMT and intent episodes. ``paths``:
where data is looked for (``--data-dir``, ``METAJAX_DATA_DIR``, ``../shared/data``).
"""
