"""Prototypical networks: classify by squared Euclidean distance to class means.

A task's "adaptation" computes one prototype per class, the weighted mean of the
support examples' embeddings,

.. math::

   c_k = \\frac{\\sum_i w_i [y_i = k]\\, f_\\theta(x_i)}{\\sum_i w_i [y_i = k]},

and a query example's logits are :math:`-\\lVert f_\\theta(x) - c_k \\rVert^2`. The
meta-loss is the weighted cross-entropy of those logits on the query set; its
gradient flows through both the query embeddings and the prototypes.

It runs on the same :class:`~metajax.Task` containers as the MAML family and
returns a :class:`~metajax.algorithms.MetaLearner`, so the train step, the eval
step (which reports accuracy "before" adaptation, i.e. chance, and after) and the
recipes need nothing special. Weight-0 (padding) examples enter neither the
prototypes nor the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from metajax import inner as inner_lib
from metajax.algorithms.base import MetaLearner, check_task
from metajax.losses import _zero_masked_out, accuracy, softmax_cross_entropy, weighted_mean
from metajax.tasks import Batch, Task

Params = Any
EmbedFn = Callable[[Params, Batch], jax.Array]


def embed_examples(embed_fn: EmbedFn, params: Params, batch: Batch) -> jax.Array:
    """``embed_fn(params, batch)`` with weight-0 inputs zeroed, checked to be ``[N, F]``."""
    inputs, targets = _zero_masked_out(batch)
    features = embed_fn(params, batch.replace(inputs=inputs, targets=targets))
    if features.ndim != 2 or features.shape[0] != targets.shape[0]:
        raise ValueError(
            f"embed_fn must return [N, F] features for N = {targets.shape[0]} examples; "
            f"got shape {features.shape}."
        )
    return features


def class_prototypes(
    features: jax.Array, support: Batch, num_classes: int
) -> tuple[jax.Array, jax.Array]:
    """Weighted class means ``[C, F]`` of ``features`` ``[N, F]``, and the weight per class ``[C]``.

    Weight-0 (padding) examples count for nothing; a class without support has a zero
    prototype and count 0.
    """
    labels = jax.nn.one_hot(support.targets, num_classes, dtype=features.dtype)
    weights = jnp.where(support.weights > 0, support.weights, 0).astype(features.dtype)
    weighted = labels * weights[:, None]  # [N, C]
    counts = jnp.sum(weighted, axis=0)
    safe = jnp.where(counts > 0, counts, 1.0)
    return (weighted.T @ features) / safe[:, None], counts


def protonet(embed_fn: EmbedFn, num_classes: int) -> MetaLearner:
    """Prototypical networks.

    Args:
      embed_fn: ``(params, batch) -> [N, F]`` embeddings. It gets the whole batch so
        that it can exclude padding from batch statistics; for conv4:
        ``lambda p, b: conv4.apply(p, b.inputs, example_mask=b.weights > 0,
        return_features=True)``. The inputs of weight-0 examples are zeroed first.
      num_classes: classes per episode (the "ways"); targets are integer labels in
        ``[0, num_classes)``.

    Returns:
      A :class:`MetaLearner` whose meta-parameters are the encoder parameters.
      ``adapt(theta, support)`` returns the nearest-prototype classifier
      ``{"encoder": theta, "prototypes": [C, F], "counts": [C]}`` (counts are the
      support weight per class; a class without support examples is never
      predicted); ``loss_fn(classifier, batch)`` is its weighted cross-entropy with
      ``accuracy`` in aux. ``params(theta)`` is the classifier without prototypes,
      which predicts uniformly (chance): the "before adaptation" numbers.

    Example:
      >>> learner = protonet(lambda p, b: mlp(p, b.inputs), num_classes=5)
      >>> loss, aux = learner.loss(params, task)

    Reference: Snell, Swersky, Zemel, "Prototypical Networks for Few-shot
    Learning", NeurIPS 2017.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")

    def embed(encoder, batch: Batch) -> jax.Array:
        return embed_examples(embed_fn, encoder, batch)

    def adapt_fn(encoder, support: Batch, *, steps=None, observe=None):
        """Computes the prototypes; ``steps`` only sizes the observations."""
        steps = 1 if steps is None else steps
        prototypes, counts = class_prototypes(embed(encoder, support), support, num_classes)
        classifier = {"encoder": encoder, "prototypes": prototypes, "counts": counts}
        observations = None
        if observe is not None:
            # No gradient steps: "after k steps" is the prototype classifier for k >= 1.
            before = observe(params(encoder))
            after = observe(classifier)
            observations = jax.tree.map(
                lambda b, a: jnp.concatenate([b[None], jnp.broadcast_to(a, (steps, *a.shape))]),
                before,
                after,
            )
        support_losses = jnp.zeros((0,), prototypes.dtype)
        return classifier, inner_lib.InnerResult(support_losses, observations)

    def logits_fn(classifier, batch: Batch) -> jax.Array:
        n = batch.targets.shape[0]
        if classifier.get("prototypes") is None:
            return jnp.zeros((n, num_classes))
        features = embed(classifier["encoder"], batch)
        prototypes = classifier["prototypes"]
        # The direct difference (not |f|^2 - 2 f.c + |c|^2): exact, and [N, C, F] is small.
        sq_dist = jnp.sum(jnp.square(features[:, None, :] - prototypes[None, :, :]), -1)
        present = classifier["counts"] > 0
        return jnp.where(present[None, :], -sq_dist, jnp.finfo(sq_dist.dtype).min)

    def loss_fn(classifier, batch: Batch):
        logits = logits_fn(classifier, batch)
        loss = weighted_mean(softmax_cross_entropy(logits, batch.targets), batch.weights)
        acc = weighted_mean(accuracy(logits, batch.targets), batch.weights)
        return loss, {"accuracy": acc}

    def params(encoder):
        return {"encoder": encoder, "prototypes": None, "counts": None}

    def loss(encoder, task: Task, step=None):
        del step  # no schedules
        check_task(task)
        classifier, _ = adapt_fn(encoder, task.support)
        query_loss, query_aux = loss_fn(classifier, task.query)
        aux = {"query_loss": query_loss, **{f"query_{k}": v for k, v in query_aux.items()}}
        return query_loss, aux

    return MetaLearner(
        init=lambda p: p,
        loss=loss,
        adapt=adapt_fn,
        params=params,
        loss_fn=loss_fn,
        inner_steps=1,
    )
