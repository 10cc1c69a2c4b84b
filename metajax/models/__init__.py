"""Models: pure ``init``/``apply`` functions over parameter pytrees."""

from metajax.models.mlp import MLP

__all__ = ["MLP"]
