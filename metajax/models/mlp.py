"""Multi-layer perceptrons (Flax), used through pure parameter pytrees."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """ReLU MLP whose last layer is named ``head`` (what ANIL adapts).

    Attributes:
      hidden: widths of the hidden layers, e.g. ``(40, 40)`` for the MAML
        sinusoid network.
      outputs: width of the output layer.
    """

    hidden: Sequence[int] = (40, 40)
    outputs: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
        return nn.Dense(self.outputs, name="head")(x)
