"""Tests of metajax.data.episodes: on-device N-way K-shot sampling (Vinyals et al., 2016)."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.data.episodes import sample_episode, sample_episode_padded
from metajax.tasks import Task

NUM_CLASSES, EXAMPLES, SIZE = 12, 20, 4
WAYS, SHOTS, QUERIES = 5, 2, 3


def _identity_images() -> np.ndarray:
    """uint8 images whose pixel (0, 0) is the class and pixel (0, 1) the example index."""
    images = np.zeros((NUM_CLASSES, EXAMPLES, SIZE, SIZE), np.uint8)
    images[:, :, 0, 0] = np.arange(NUM_CLASSES)[:, None]
    images[:, :, 0, 1] = np.arange(EXAMPLES)[None, :]
    images[:, :, 1, 1] = 255  # a constant "ink" pixel, to check the scaling to [0, 1]
    return images


IMAGES = jnp.asarray(_identity_images())


def _identities(inputs) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.rint(np.asarray(inputs) * 255).astype(int)
    return pixels[..., 0, 0, 0], pixels[..., 0, 1, 0]  # class, example


# Jitted once per setting: eager op-by-op dispatch would dominate the test time.
_sample_jit = jax.jit(sample_episode, static_argnames=("ways", "shots", "queries"))
_padded_jit = jax.jit(
    sample_episode_padded,
    static_argnames=("ways", "shots", "queries", "max_ways", "max_shots", "max_queries"),
)


def _sample(key, **overrides) -> Task:
    settings = dict(ways=WAYS, shots=SHOTS, queries=QUERIES) | overrides
    return _sample_jit(key, IMAGES, **settings)


def test_episode_structure():
    task = _sample(jax.random.key(0))
    for batch, per_class in ((task.support, SHOTS), (task.query, QUERIES)):
        n = WAYS * per_class
        chex.assert_shape(batch.inputs, (n, SIZE, SIZE, 1))
        chex.assert_shape((batch.targets, batch.weights), (n,))
        assert batch.inputs.dtype == jnp.float32
        assert batch.targets.dtype == jnp.int32 and batch.weights.dtype == jnp.float32
        np.testing.assert_array_equal(batch.weights, np.ones(n))
        np.testing.assert_array_equal(batch.targets, np.repeat(np.arange(WAYS), per_class))
        np.testing.assert_array_equal(batch.inputs[:, 1, 1, 0], np.ones(n))  # 255 -> 1.0
        assert float(batch.inputs.min()) >= 0.0 and float(batch.inputs.max()) <= 1.0

    support_class, support_example = _identities(task.support.inputs)
    query_class, query_example = _identities(task.query.inputs)
    # Each label names one class, the same in support and query; classes are distinct.
    label_to_class = {}
    for targets, classes in (
        (task.support.targets, support_class),
        (task.query.targets, query_class),
    ):
        for label, cls in zip(np.asarray(targets), classes, strict=True):
            assert label_to_class.setdefault(int(label), int(cls)) == cls
    assert sorted(label_to_class) == list(range(WAYS))
    assert len(set(label_to_class.values())) == WAYS
    # Per class, K + Q distinct examples with no overlap between support and query.
    for label, cls in label_to_class.items():
        support = set(support_example[np.asarray(task.support.targets) == label])
        query = set(query_example[np.asarray(task.query.targets) == label])
        assert len(support) == SHOTS and len(query) == QUERIES
        assert not support & query
        assert cls in support_class and cls in query_class


def test_same_key_same_episode_and_different_keys_differ():
    first = _sample(jax.random.key(3))
    chex.assert_trees_all_equal(first, _sample(jax.random.key(3)))
    second = _sample(jax.random.key(4))
    assert not np.array_equal(first.support.inputs, second.support.inputs)


@jax.jit
def _sample_tasks(keys, images):
    sample = functools.partial(
        sample_episode, images=images, ways=WAYS, shots=SHOTS, queries=QUERIES
    )
    return jax.vmap(sample)(keys)


def test_labels_are_randomly_assigned_and_all_classes_are_used():
    tasks = _sample_tasks(jax.random.split(jax.random.key(5), 200), IMAGES)
    support_class, _ = _identities(tasks.support.inputs)  # [200, WAYS * SHOTS]
    class_of_label0 = support_class[:, 0]
    # A fixed class-to-label map (e.g. sorted classes) would make label 0 the smallest.
    assert (class_of_label0 != support_class.min(axis=1)).any()
    assert len(set(class_of_label0.tolist())) == NUM_CLASSES
    assert set(support_class.ravel().tolist()) == set(range(NUM_CLASSES))


def test_jit_vmap_and_eager_agree():
    keys = jax.random.split(jax.random.key(7), 200)
    batched = _sample_tasks(keys, IMAGES)
    chex.assert_shape(batched.support.inputs, (200, WAYS * SHOTS, SIZE, SIZE, 1))
    chex.assert_shape(batched.query.targets, (200, WAYS * QUERIES))
    for i in range(3):
        chex.assert_trees_all_equal(jax.tree.map(lambda x, i=i: x[i], batched), _sample(keys[i]))
    # No jit at all, and float images in [0, 1] are used as they are.
    float_images = IMAGES.astype(jnp.float32) / 255.0
    eager = sample_episode(keys[0], float_images, ways=WAYS, shots=SHOTS, queries=QUERIES)
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x[0], batched), eager)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(ways=NUM_CLASSES + 1, shots=1, queries=1), "exceeds the 12 classes"),
        (dict(ways=2, shots=10, queries=11), "examples per class"),
        (dict(ways=0, shots=1, queries=1), "ways >= 1"),
    ],
)
def test_bad_settings_raise(settings, message):
    with pytest.raises(ValueError, match=message):
        sample_episode(jax.random.key(0), IMAGES, **settings)


def test_bad_images_raise():
    with pytest.raises(ValueError, match="num_classes, examples_per_class"):
        sample_episode(jax.random.key(0), IMAGES[0], ways=2, shots=1, queries=1)


# ------------------------------------------------------------------------ padded

MAX = dict(max_ways=7, max_shots=3, max_queries=4)


def _check_padded(padded: Task, key, ways: int, shots: int, queries: int) -> None:
    reference = _sample(key, ways=ways, shots=shots, queries=queries)
    for batch, ref, per_class, max_per_class in (
        (padded.support, reference.support, shots, MAX["max_shots"]),
        (padded.query, reference.query, queries, MAX["max_queries"]),
    ):
        n = MAX["max_ways"] * max_per_class
        chex.assert_shape(batch.inputs, (n, SIZE, SIZE, 1))
        real = (np.arange(MAX["max_ways"])[:, None] < ways) & (
            np.arange(max_per_class)[None, :] < per_class
        )
        real = real.reshape(-1)
        np.testing.assert_array_equal(batch.weights, real.astype(np.float32))
        targets = np.asarray(batch.targets)
        assert ((targets >= 0) & (targets < ways)).all()
        assert (targets[~real] == 0).all()
        assert (np.asarray(batch.inputs)[~real] == 0).all()
        # The real examples are exactly the unpadded episode, in the same order.
        np.testing.assert_array_equal(np.asarray(batch.inputs)[real], ref.inputs)
        np.testing.assert_array_equal(targets[real], ref.targets)


def test_padded_static_settings_match_unpadded():
    key = jax.random.key(21)
    padded = _padded_jit(key, IMAGES, ways=WAYS, shots=SHOTS, queries=QUERIES, **MAX)
    _check_padded(padded, key, WAYS, SHOTS, QUERIES)


def test_padded_traced_settings_share_one_program():
    traces = 0

    @jax.jit
    def sample(key, images, ways, shots, queries):
        nonlocal traces
        traces += 1
        return sample_episode_padded(key, images, ways=ways, shots=shots, queries=queries, **MAX)

    key = jax.random.key(22)
    # Unpadded, full (max_*) and partly padded with no queries.
    settings = np.array([[WAYS, SHOTS, QUERIES], [7, 3, 4], [2, 1, 0]], np.int32)
    for ways, shots, queries in settings.tolist():
        padded = sample(key, IMAGES, jnp.int32(ways), jnp.int32(shots), jnp.int32(queries))
        _check_padded(padded, key, ways, shots, queries)
    assert traces == 1

    # Settings may vary across a vmapped batch of tasks, too (in another order).
    settings = settings[::-1]
    keys = jax.random.split(key, 3)
    batched = jax.vmap(sample, in_axes=(0, None, 0, 0, 0))(keys, IMAGES, *settings.T)
    chex.assert_shape(batched.support.weights, (3, MAX["max_ways"] * MAX["max_shots"]))
    for i, (ways, shots, queries) in enumerate(settings):
        task = jax.tree.map(lambda x, i=i: x[i], batched)
        _check_padded(task, keys[i], int(ways), int(shots), int(queries))


def test_padded_bad_settings_raise():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="ways <= 7"):
        sample_episode_padded(key, IMAGES, ways=8, shots=1, queries=1, **MAX)
    with pytest.raises(ValueError, match="max_shots \\+ max_queries"):
        sample_episode_padded(
            key, IMAGES, ways=2, shots=1, queries=1, max_ways=2, max_shots=10, max_queries=11
        )
