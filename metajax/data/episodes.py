"""On-device N-way K-shot episode sampling (Vinyals et al., 2016).

A whole split lives on the accelerator as one ``uint8 [num_classes, examples_per_class,
H, W]`` array (Omniglot's largest split, 4800 x 20 x 28 x 28, is 75 MB). An episode is
sampled from it with ``jax.random`` alone, so sampling is a pure, jittable function of a
key: it runs inside the jitted train step, a batch of tasks is a ``vmap`` over keys, and
``fold_in(key, step)`` replays the same tasks after a restart. No host round trip, no
input pipeline.

Episode layout (both functions):

* ``ways`` distinct classes; label ``l`` names the ``l``-th sampled class;
* per class, ``shots + queries`` distinct examples: the first ``shots`` go to the support
  set, the next ``queries`` to the query set, so support and query never share an image;
* examples are label-major: ``support.targets == [0]*shots + [1]*shots + ...``;
* ``inputs`` are ``float32 [N, H, W, 1]`` in ``[0, 1]`` (``uint8 / 255``: ink = 1 for
  :mod:`metajax.data.omniglot` images), ``targets`` ``int32 [N]``, ``weights``
  ``float32 [N]``.

Labels are assigned by a uniformly random permutation per episode: the classes are the
first ``ways`` entries of a random permutation of all classes, so which class gets label
``l`` is uniform and independent of class index. This matters for MAML-style training,
where a fixed class-to-label map would let the initialisation memorise labels.

For evaluation at several ``ways``/``shots`` with one compiled program,
:func:`sample_episode_padded` returns fixed ``max_*`` shapes with weight 0 on padding;
its real examples are exactly those of :func:`sample_episode` with the same key.

Reference:
  Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra (2016), Matching networks for one
  shot learning. NeurIPS. (The N-way K-shot episode protocol.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from metajax.tasks import Batch, Task


def _check_images(images: jax.Array) -> None:
    if images.ndim != 4:
        raise ValueError(
            "images must be [num_classes, examples_per_class, height, width], got shape "
            f"{images.shape}."
        )
    if images.dtype != jnp.uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {images.dtype}.")


def _check_counts(images: jax.Array, ways: int, shots: int, queries: int, prefix: str = "") -> None:
    """Static checks; ``prefix`` is ``"max_"`` when checking the padded shapes."""
    num_classes, examples_per_class = images.shape[:2]
    p = prefix
    if ways < 1 or shots < 1 or queries < 0:
        raise ValueError(
            f"Need {p}ways >= 1, {p}shots >= 1 and {p}queries >= 0; got {p}ways={ways}, "
            f"{p}shots={shots}, {p}queries={queries}."
        )
    if ways > num_classes:
        raise ValueError(f"{p}ways={ways} exceeds the {num_classes} classes in images.")
    if shots + queries > examples_per_class:
        raise ValueError(
            f"{p}shots + {p}queries = {shots + queries} exceeds the {examples_per_class} "
            "examples per class; support and query examples must be distinct."
        )


def _sample_slots(key: ArrayLike, images: jax.Array, num_slots: int) -> tuple[jax.Array, jax.Array]:
    """Draws ``num_slots`` distinct classes and a random example order for each.

    Both are prefix-stable in ``num_slots``: slot ``l`` gets the same class and example
    order whatever the number of slots, which is what makes padded episodes contain
    exactly the unpadded one.

    Returns:
      ``classes`` int ``[num_slots]`` and ``orders`` int ``[num_slots, examples_per_class]``
      (each row a permutation of the example indices).
    """
    num_classes, examples_per_class = images.shape[:2]
    class_key, example_key = jax.random.split(key)
    # A prefix of a random permutation: distinct classes in uniformly random order.
    classes = jax.random.permutation(class_key, num_classes)[:num_slots]
    # fold_in (not split(key, num_slots)) so slot l's key does not depend on num_slots.
    slot_keys = jax.vmap(lambda slot: jax.random.fold_in(example_key, slot))(jnp.arange(num_slots))
    orders = jax.vmap(lambda k: jax.random.permutation(k, examples_per_class))(slot_keys)
    return classes, orders


def _gather(images: jax.Array, classes: jax.Array, examples: jax.Array) -> jax.Array:
    """Returns ``float32 [slots * n, H, W, 1]`` for ``examples`` ``[slots, n]`` of ``classes``."""
    # One gather of just the selected images, never of whole classes.
    pixels = images[classes[:, None], examples]
    pixels = pixels.reshape(-1, *images.shape[2:], 1)
    if images.dtype == jnp.uint8:
        return pixels.astype(jnp.float32) / 255.0
    return pixels.astype(jnp.float32)


def sample_episode(
    key: ArrayLike, images: ArrayLike, *, ways: int, shots: int, queries: int
) -> Task:
    """Samples one N-way K-shot episode from a split held on device.

    Args:
      key: a PRNG key (``jax.random.key``); the episode is a pure function of it.
      images: ``[num_classes, examples_per_class, H, W]``, ``uint8`` (scaled by 1/255)
        or float in ``[0, 1]``; for Omniglot a :class:`~metajax.data.omniglot.ClassSplit`'s
        ``images`` put on device once.
      ways: classes per episode (N), static.
      shots: support examples per class (K), static.
      queries: query examples per class, static; ``shots + queries`` must not exceed
        ``examples_per_class``.

    Returns:
      A :class:`~metajax.tasks.Task` with ``support`` of ``ways * shots`` and ``query``
      of ``ways * queries`` examples: ``inputs`` ``float32 [N, H, W, 1]``, ``targets``
      ``int32 [N]`` (label-major, see the module docstring), ``weights`` ones.

    Example:
      A jitted sampler of a meta-batch of 32 tasks. Pass ``images`` as an argument
      rather than closing over it, so it is not baked into the program as a constant::

        images = jax.device_put(load_split("vinyals", "train").images)

        @jax.jit
        def sample_tasks(key, images):
            sample = functools.partial(
                sample_episode, images=images, ways=5, shots=1, queries=15
            )
            return jax.vmap(sample)(jax.random.split(key, 32))

        tasks = sample_tasks(jax.random.fold_in(key, step), images)
        tasks.support.inputs.shape  # (32, 5, 28, 28, 1)

    Reference:
      Vinyals et al. (2016), Matching networks for one shot learning. NeurIPS.
    """
    images = jnp.asarray(images)
    _check_images(images)
    _check_counts(images, ways, shots, queries)
    classes, orders = _sample_slots(key, images, ways)
    labels = jnp.arange(ways, dtype=jnp.int32)

    def batch(examples: jax.Array) -> Batch:
        per_class = examples.shape[1]
        return Batch(
            inputs=_gather(images, classes, examples),
            targets=jnp.repeat(labels, per_class),
            weights=jnp.ones(ways * per_class, jnp.float32),
        )

    return Task(support=batch(orders[:, :shots]), query=batch(orders[:, shots : shots + queries]))


def sample_episode_padded(
    key: ArrayLike,
    images: ArrayLike,
    *,
    ways: ArrayLike,
    shots: ArrayLike,
    queries: ArrayLike,
    max_ways: int,
    max_shots: int,
    max_queries: int,
) -> Task:
    """Samples an episode padded to fixed shapes, so one program serves many settings.

    The support set has ``max_ways * max_shots`` slots (query: ``max_ways *
    max_queries``), laid out ``[max_ways, max_shots]`` label-major. Slot ``(l, s)``
    is real (weight 1) iff ``l < ways`` and ``s < shots`` (``q < queries`` for the
    query). Padding has weight 0, target 0 (in range for any head) and all-zero
    inputs. The real examples, in order, are exactly those of
    :func:`sample_episode` with the same key, so padded and unpadded evaluation agree.
    Losses and accuracies must be weighted means (see :mod:`metajax.losses`);
    models that mix examples (batch norm with batch statistics) still see padding.

    ``ways``, ``shots`` and ``queries`` may be traced integers (e.g. a ``vmap`` or
    ``lax.scan`` over settings); they are validated only when concrete.

    Args:
      key: a PRNG key.
      images: as for :func:`sample_episode`.
      ways: classes in the episode, ``1 <= ways <= max_ways``.
      shots: support examples per class, ``1 <= shots <= max_shots``.
      queries: query examples per class, ``0 <= queries <= max_queries``.
      max_ways: static number of class slots.
      max_shots: static support slots per class.
      max_queries: static query slots per class; ``max_shots + max_queries`` must not
        exceed ``examples_per_class``.

    Returns:
      A :class:`~metajax.tasks.Task` with ``max_ways * max_shots`` support and
      ``max_ways * max_queries`` query examples, weights 1 on real examples and 0 on
      padding.

    Example:
      One compiled evaluator for 5- and 20-way, 1- and 5-shot (Python ints passed to a
      jitted function are traced, so every setting reuses the same program)::

        @jax.jit
        def evaluate(params, key, images, ways, shots):
            task = sample_episode_padded(
                key, images, ways=ways, shots=shots, queries=15,
                max_ways=20, max_shots=5, max_queries=15,
            )
            return accuracy(params, task)  # a mean weighted by task.query.weights

        for ways, shots in [(5, 1), (5, 5), (20, 1), (20, 5)]:
            evaluate(params, key, images, ways, shots)

    Reference:
      Vinyals et al. (2016), Matching networks for one shot learning. NeurIPS.
    """
    images = jnp.asarray(images)
    _check_images(images)
    _check_counts(images, max_ways, max_shots, max_queries, prefix="max_")
    concrete = {
        name: int(value)
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries))
        if not isinstance(value, jax.core.Tracer)
    }
    for name, low, high in (
        ("ways", 1, max_ways),
        ("shots", 1, max_shots),
        ("queries", 0, max_queries),
    ):
        if name in concrete and not low <= concrete[name] <= high:
            raise ValueError(f"Need {low} <= {name} <= {high}, got {name}={concrete[name]}.")

    classes, orders = _sample_slots(key, images, max_ways)
    labels = jnp.arange(max_ways, dtype=jnp.int32)
    real_class = labels < ways

    def batch(examples: jax.Array, count: ArrayLike) -> Batch:
        per_class = examples.shape[1]
        real = real_class[:, None] & (jnp.arange(per_class)[None, :] < count)
        real = real.reshape(-1)
        inputs = _gather(images, classes, examples)
        return Batch(
            inputs=jnp.where(real[:, None, None, None], inputs, 0.0),
            targets=jnp.where(real, jnp.repeat(labels, per_class), 0),
            weights=real.astype(jnp.float32),
        )

    # Queries start right after the real shots, as in sample_episode; the slice stays
    # in bounds because shots + max_queries <= max_shots + max_queries <= examples.
    query_examples = jax.lax.dynamic_slice_in_dim(orders, shots, max_queries, axis=1)
    return Task(support=batch(orders[:, :max_shots], shots), query=batch(query_examples, queries))
