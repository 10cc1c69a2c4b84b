"""Proto-MAML: MAML whose linear head starts each task at the prototype classifier.

Triantafillou et al. (2020) observed that a prototypical network is a linear
classifier on the features: with class means :math:`c_k`,

.. math::

   -\\lVert f - c_k \\rVert^2 = 2\\, c_k^\\top f - \\lVert c_k \\rVert^2 - \\lVert f \\rVert^2,

and the last term is the same for every class, so the softmax over classes equals that
of a linear head with weights :math:`W_k = 2 c_k` and biases :math:`b_k = -\\lVert c_k
\\rVert^2`. Proto-MAML sets the head to these values from the task's support set (the
meta-parameters' encoder), then runs MAML's inner loop. The meta-gradient flows through
the inner steps and through the prototypes into the encoder. Bansal et al. (2020,
LEOPARD / SMLMT) initialise their few-shot text classifier the same way.

This is :func:`~metajax.algorithms.maml` with a per-task starting point: the learner's
``loss`` and ``adapt`` replace the head in the meta-parameters before the inner loop.
The head entries of the meta-parameters are overwritten and get no gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from metajax.algorithms.base import MetaLearner
from metajax.algorithms.maml import maml
from metajax.algorithms.protonet import EmbedFn, class_prototypes, embed_examples
from metajax.tasks import Batch, Task

Params = Any
SetHead = Callable[[Params, jax.Array, jax.Array], Params]


def prototype_head(prototypes: jax.Array, counts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Linear head ``(W [F, C], b [C])`` whose softmax equals the prototype classifier's.

    A class without support examples gets the lowest finite bias, so it is never
    predicted (as in :func:`~metajax.algorithms.protonet`).
    """
    weight = 2.0 * prototypes.T
    bias = -jnp.sum(jnp.square(prototypes), axis=-1)
    bias = jnp.where(counts > 0, bias, jnp.finfo(bias.dtype).min / 4)
    return weight, bias


def proto_maml(
    loss_fn: Callable,
    embed_fn: EmbedFn,
    set_head: SetHead,
    *,
    num_classes: int,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    **maml_kwargs,
) -> MetaLearner:
    """Proto-MAML.

    Args:
      loss_fn: ``(params, batch) -> scalar`` or ``(scalar, aux)`` of the model whose
        logits are ``features @ W + b`` (``W``, ``b`` being its head).
      embed_fn: ``(params, batch) -> [N, F]``: the features the head sees.
      set_head: ``(params, W [F, C], b [C]) -> params`` with the head replaced.
      num_classes: classes per episode.
      inner_lr, inner_steps, first_order, maml_kwargs: as :func:`maml` (options
        that change the meta-parameter structure, ``learn_inner_lr`` and
        ``learn_hyperparams``, are not supported).

    Returns:
      A :class:`MetaLearner` over the model parameters. Its ``params(meta)`` is the
      model with the meta-parameters' own head, which is what the train step's
      ``*_pre`` metrics evaluate; adaptation, and the eval step's "after 0 steps",
      start from the prototype head.

    Reference: Triantafillou et al., "Meta-Dataset", ICLR 2020, sec. 3.
    """
    if maml_kwargs.get("learn_inner_lr") or maml_kwargs.get("learn_hyperparams"):
        raise ValueError("proto_maml does not support learn_inner_lr or learn_hyperparams.")
    base = maml(loss_fn, inner_lr, inner_steps, first_order, **maml_kwargs)

    def with_prototype_head(meta_params: Params, support: Batch) -> Params:
        features = embed_examples(embed_fn, meta_params, support)
        weight, bias = prototype_head(*class_prototypes(features, support, num_classes))
        return set_head(meta_params, weight, bias)

    def loss(meta_params, task: Task, step=None):
        return base.loss(with_prototype_head(meta_params, task.support), task, step)

    def adapt(meta_params, support: Batch, **kwargs):
        return base.adapt(with_prototype_head(meta_params, support), support, **kwargs)

    return MetaLearner(base.init, loss, adapt, base.params, base.loss_fn, base.inner_steps)
