"""Experiment recipes: a typed config plus ``train``/``evaluate`` library functions.

The CLI and ``experiments/`` only parse a config and call these, so tests can call
exactly what users run.
"""
