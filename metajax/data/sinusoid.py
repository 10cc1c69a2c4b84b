"""Sinusoid regression tasks (Finn et al. 2017, sec. 5.1), sampled on the device.

A task is ``y = amplitude * sin(x - phase)`` with amplitude ~ U[0.1, 5.0],
phase ~ U[0, pi] and inputs ~ U[-5, 5]. Everything is drawn with ``jax.random``
inside the jitted step: no host data loop.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from metajax.tasks import Batch, Task


@dataclasses.dataclass(frozen=True)
class SinusoidDistribution:
    """The task distribution of the MAML paper's sinusoid benchmark.

    Attributes:
      amplitude: ``(low, high)`` of the uniform amplitude.
      phase: ``(low, high)`` of the uniform phase.
      x_range: ``(low, high)`` of the uniform inputs.
    """

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def sample_function(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Draws ``(amplitude, phase)`` of one task."""
        amp_key, phase_key = jax.random.split(key)
        amplitude = jax.random.uniform(
            amp_key, (), minval=self.amplitude[0], maxval=self.amplitude[1]
        )
        phase = jax.random.uniform(phase_key, (), minval=self.phase[0], maxval=self.phase[1])
        return amplitude, phase

    def sample_batch(self, key: jax.Array, amplitude, phase, num_points: int) -> Batch:
        """Draws ``num_points`` examples ``(x [N, 1], y [N, 1])`` of one function."""
        x = jax.random.uniform(key, (num_points, 1), minval=self.x_range[0], maxval=self.x_range[1])
        return Batch(x, sinusoid(x, amplitude, phase))

    def sample_task(self, key: jax.Array, *, shots: int = 10, queries: int = 10) -> Task:
        """Draws one task: ``shots`` support and ``queries`` query points of one sinusoid."""
        fn_key, support_key, query_key = jax.random.split(key, 3)
        amplitude, phase = self.sample_function(fn_key)
        return Task(
            support=self.sample_batch(support_key, amplitude, phase, shots),
            query=self.sample_batch(query_key, amplitude, phase, queries),
        )


def sinusoid(x: jax.Array, amplitude, phase) -> jax.Array:
    """``amplitude * sin(x - phase)``."""
    return amplitude * jnp.sin(x - phase)
