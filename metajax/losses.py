"""Per-example losses, weighted reductions and the masked token loss.

Every loss here returns *unreduced* per-example (or per-token) values; a reduction
is applied separately with :func:`weighted_mean`, which divides by the total weight
and is safe when every weight is zero. This is what lets one code path serve plain
batches, padded episodes (weight 0 on padding) and masked self-supervision
(weight 1 on masked positions only):

.. math::

   L_\\text{mask}(\\theta) = \\frac{\\sum_j w_j\\, L(x^j, y^j; \\theta)}{\\sum_j w_j}.

Shape, rank and dtype problems raise ``ValueError`` at trace time naming the
argument. Integer labels outside ``[0, num_classes)`` raise when the labels are
concrete; under ``jit`` (where values are unknown at trace time) they produce a
NaN loss for that example, which the training loop reports as an error, never a
silently wrong number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from metajax.tasks import Batch

LossFn = Callable[[Any, Batch], tuple[jax.Array, dict]]


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_labels(logits: jax.Array, labels: jax.Array, name: str = "labels") -> None:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name} must be integer class indices, got dtype {labels.dtype}.")
    if logits.ndim < 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits must have shape {name}.shape + (num_classes,); got logits "
            f"{logits.shape} and {name} {labels.shape}."
        )
    if _is_concrete(labels) and labels.size:
        labels_np = np.asarray(labels)
        num_classes = logits.shape[-1]
        bad = (labels_np < 0) | (labels_np >= num_classes)
        if bad.any():
            raise ValueError(
                f"{name} out of range [0, {num_classes}): found values "
                f"{sorted(set(labels_np[bad].tolist()))[:10]} (logits shape {logits.shape})."
            )


def _check_weights(weights: jax.Array, values_shape: tuple[int, ...], name: str = "weights"):
    if weights.shape != values_shape[: weights.ndim] or weights.ndim > len(values_shape):
        raise ValueError(
            f"{name} of shape {weights.shape} does not match the per-example values of "
            f"shape {values_shape}; it must equal their shape or a prefix of it."
        )
    if _is_concrete(weights) and weights.size and bool(np.any(np.asarray(weights) < 0)):
        raise ValueError(f"{name} must be non-negative; got min {float(np.min(weights))}.")


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels.

    Args:
      logits: ``[..., num_classes]`` unnormalised log-probabilities.
      labels: ``[...]`` integer class indices in ``[0, num_classes)``.

    Returns:
      ``[...]`` losses. An out-of-range label gives NaN for that example when the
      labels are traced (and a ``ValueError`` when they are concrete).

    Example:
      >>> softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))  # log(4) each
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    _check_labels(logits, labels)
    num_classes = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    safe_labels = jnp.clip(labels, 0, num_classes - 1)
    picked = jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    valid = (labels >= 0) & (labels < num_classes)
    return jnp.where(valid, -picked, jnp.nan)


def squared_error(predictions: ArrayLike, targets: ArrayLike) -> jax.Array:
    """Per-example squared error, summed over trailing (feature) axes.

    Args:
      predictions: ``[N, ...]``.
      targets: same shape as ``predictions``.

    Returns:
      ``[N]`` values ``sum_features (predictions - targets)**2``. For scalar outputs
      (``[N, 1]``), the mean of these is the usual MSE.
    """
    predictions = jnp.asarray(predictions)
    targets = jnp.asarray(targets)
    if predictions.shape != targets.shape:
        raise ValueError(
            f"predictions {predictions.shape} and targets {targets.shape} must have the same shape."
        )
    err = jnp.square(predictions - targets)
    return err.reshape(err.shape[0], -1).sum(-1) if err.ndim > 1 else err


def accuracy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Per-example 0/1 accuracy of ``argmax(logits)`` against integer labels."""
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    _check_labels(logits, labels)
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def weighted_mean(values: ArrayLike, weights: ArrayLike | None = None) -> jax.Array:
    """Weighted mean ``sum(w * v) / sum(w)``, 0 when every weight is 0.

    Safe at zero total weight: returns 0 with a finite, zero gradient with respect
    to the values and finite gradients with respect to the weights; masked-out
    values never enter the sum, so a non-finite value under weight 0 does not leak
    NaNs into gradients.
    Scaling all weights by a positive constant leaves the result unchanged.

    Args:
      values: per-example values, any shape.
      weights: non-negative weights with the same shape as ``values`` or a prefix
        of it (e.g. ``[N]`` for values ``[N, T]``), or ``None`` for a plain mean.

    Returns:
      A scalar.
    """
    values = jnp.asarray(values)
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(jnp.float32)
    if weights is None:
        weights = jnp.ones(values.shape, values.dtype)
    weights = jnp.asarray(weights)
    _check_weights(weights, values.shape)
    weights = jnp.broadcast_to(
        weights.reshape(weights.shape + (1,) * (values.ndim - weights.ndim)), values.shape
    ).astype(values.dtype)
    # where(), not multiplication: 0 * NaN is NaN, and masked-out entries must not
    # change the loss or any gradient.
    total = jnp.sum(jnp.where(weights > 0, weights * values, 0.0))
    denom = jnp.sum(weights)
    positive = denom > 0
    # Double where: the untaken branch must not be differentiated at denom == 0.
    return jnp.where(positive, total / jnp.where(positive, denom, 1.0), 0.0)


def masked_token_loss(
    logits: ArrayLike, targets: ArrayLike, weights: ArrayLike
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted masked-token loss of self-supervised training.

    ``L_mask = sum_j w_j CE(logits_j, targets_j) / sum_j w_j`` over positions ``j``;
    ``w_j`` is non-zero only at masked positions (see :func:`mask_tokens`).

    Args:
      logits: ``[B, T, V]``.
      targets: ``[B, T]`` integer token ids in ``[0, V)``.
      weights: ``[B, T]`` non-negative weights.

    Returns:
      ``(loss, {"accuracy": weighted token accuracy, "weight": total weight})``.
    """
    logits = jnp.asarray(logits)
    targets = jnp.asarray(targets)
    weights = jnp.asarray(weights)
    if logits.ndim != 3:
        raise ValueError(f"logits must be [B, T, V]; got shape {logits.shape}.")
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets must be [B, T] = {logits.shape[:2]}; got {targets.shape}.")
    if weights.shape != targets.shape:
        raise ValueError(
            f"weights must match targets [B, T] = {targets.shape}; got {weights.shape}."
        )
    ce = softmax_cross_entropy(logits, targets)
    acc = accuracy(logits, targets)
    return weighted_mean(ce, weights), {
        "accuracy": weighted_mean(acc, weights),
        "weight": jnp.sum(weights),
    }


def mask_tokens(
    key: jax.Array,
    tokens: ArrayLike,
    *,
    rate: float = 0.15,
    mask_id: int,
    pad_id: int | None = None,
    vocab_size: int | None = None,
    replace_prob: float = 1.0,
    random_prob: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Draws masked positions for masked-token self-supervision.

    Each non-padding position is selected independently with probability ``rate``.
    A selected position is replaced by ``mask_id`` with probability
    ``replace_prob``, by a uniformly random token with probability ``random_prob``
    (needs ``vocab_size``), and left unchanged otherwise (BERT uses 0.8/0.1/0.1).
    Padding is never selected.

    Args:
      key: a JAX PRNG key.
      tokens: ``[..., T]`` integer token ids.
      rate: probability that a position is selected.
      mask_id: the id written at selected positions.
      pad_id: padding id, never selected (``None``: no padding).
      vocab_size: needed when ``random_prob > 0``.
      replace_prob: probability that a selected position becomes ``mask_id``.
      random_prob: probability that it becomes a random token.

    Returns:
      ``(inputs, weights)``: the corrupted tokens, and float32 weights that are 1
      exactly at selected positions (the targets are the original ``tokens``).

    Reference: Devlin et al., "BERT", NAACL 2019.
    """
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}.")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}.")
    if replace_prob + random_prob > 1.0 + 1e-6:
        raise ValueError("replace_prob + random_prob must be at most 1.")
    if random_prob > 0 and vocab_size is None:
        raise ValueError("random_prob > 0 needs vocab_size.")
    select_key, action_key, random_key = jax.random.split(key, 3)
    selectable = jnp.ones(tokens.shape, bool) if pad_id is None else tokens != pad_id
    selected = jax.random.bernoulli(select_key, rate, tokens.shape) & selectable
    action = jax.random.uniform(action_key, tokens.shape)
    inputs = jnp.where(selected & (action < replace_prob), mask_id, tokens)
    if random_prob > 0:
        random_tokens = jax.random.randint(random_key, tokens.shape, 0, vocab_size, tokens.dtype)
        use_random = selected & (action >= replace_prob) & (action < replace_prob + random_prob)
        inputs = jnp.where(use_random, random_tokens, inputs)
    return inputs.astype(tokens.dtype), selected.astype(jnp.float32)


def _zero_masked_out(batch: Batch) -> tuple[Any, Any]:
    """Replaces float inputs/targets of weight-0 examples by zeros.

    A weight-0 example must change no gradient, and ``where`` after the loss is not
    enough: the backward pass of ``(pred - nan)**2`` is ``0 * nan = nan``. Zeroing
    the data first (the "double where") keeps padding with arbitrary contents inert.
    """
    weights = jnp.asarray(batch.weights)
    keep = weights.reshape(weights.shape[0], -1).sum(-1) > 0 if weights.ndim else None

    def clean(x):
        x = jnp.asarray(x)
        if keep is None or not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim == 0:
            return x
        if x.shape[0] != keep.shape[0]:
            return x
        return jnp.where(keep.reshape(keep.shape + (1,) * (x.ndim - 1)), x, jnp.zeros((), x.dtype))

    return jax.tree.map(clean, batch.inputs), jax.tree.map(clean, batch.targets)


def make_loss(
    apply_fn: Callable[[Any, Any], jax.Array],
    per_example_loss: Callable[[jax.Array, jax.Array], jax.Array],
    *,
    metrics: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] | None = None,
) -> LossFn:
    """Builds ``loss_fn(params, batch) -> (scalar, aux)`` from a model and a loss.

    Args:
      apply_fn: ``apply_fn(params, inputs) -> outputs``.
      per_example_loss: ``(outputs, targets) -> [N]`` unreduced losses, e.g.
        :func:`softmax_cross_entropy` or :func:`squared_error`.
      metrics: extra per-example metrics reported (weighted) in ``aux``, e.g.
        ``{"accuracy": accuracy}``.

    Returns:
      A pure loss function; ``aux`` holds each metric's weighted mean.

    Example:
      >>> loss_fn = make_loss(mlp_apply, softmax_cross_entropy, metrics={"accuracy": accuracy})
      >>> loss, aux = loss_fn(params, Batch(x, y))
    """
    metrics = dict(metrics or {})

    def loss_fn(params, batch: Batch):
        inputs, targets = _zero_masked_out(batch)
        outputs = apply_fn(params, inputs)
        values = per_example_loss(outputs, targets)
        aux = {
            name: weighted_mean(fn(outputs, targets), batch.weights) for name, fn in metrics.items()
        }
        return weighted_mean(values, batch.weights), aux

    return loss_fn


def as_loss_with_aux(loss_fn: Callable) -> LossFn:
    """Wraps a loss that returns a scalar or ``(scalar, aux)`` to always return a pair."""

    def wrapped(params, batch):
        out = loss_fn(params, batch)
        if isinstance(out, tuple):
            if len(out) != 2:
                raise ValueError("loss_fn must return a scalar or a (scalar, aux) pair.")
            loss, aux = out
        else:
            loss, aux = out, {}
        loss = jnp.asarray(loss)
        if loss.shape != ():
            raise ValueError(f"loss_fn must return a scalar loss, got shape {loss.shape}.")
        return loss, dict(aux) if isinstance(aux, dict) else {"aux": aux}

    return wrapped
