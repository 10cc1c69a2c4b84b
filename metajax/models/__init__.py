"""Models: pure ``init``/``apply`` functions over parameter pytrees."""

from metajax.models.mlp import MLP
from metajax.models.transformer import TransformerEncoder

__all__ = ["MLP", "TransformerEncoder"]
