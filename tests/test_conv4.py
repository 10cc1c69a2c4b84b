"""conv4: the convolution formulations agree, batch norm is transductive and masked."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax as mj
from metajax.models import conv4
from metajax.recipes.omniglot import classifier_loss


@pytest.fixture(scope="module")
def setup():
    params = conv4.init(jax.random.key(0), ways=5, channels=8)
    images = jax.random.uniform(jax.random.key(1), (10, 28, 28, 1))
    return params, images


def test_conv_formulations_agree_on_one_image_batch(setup):
    params, images = setup
    out = {
        impl: jax.jit(lambda p, x, i=impl: conv4.apply(p, x, conv=i))(params, images)
        for impl in ("xla", "im2col")
    }
    np.testing.assert_allclose(out["im2col"], out["xla"], rtol=1e-4, atol=1e-4)
    assert out["xla"].shape == (10, 5)


@pytest.mark.parametrize("c_in,size", [(1, 28), (16, 7), (16, 3)])
def test_conv3x3_formulations_agree_layer_by_layer(c_in, size):
    x = jax.random.normal(jax.random.key(0), (4, size, size, c_in))
    w = jax.random.normal(jax.random.key(1), (3, 3, c_in, 8))
    b = jax.random.normal(jax.random.key(2), (8,))
    ref = conv4.conv3x3(x, w, b, "xla")
    for impl in ("im2col", "im2col_vjp", "winograd"):
        np.testing.assert_allclose(conv4.conv3x3(x, w, b, impl), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("size", [14, 7, 3, 1])
def test_winograd_convolution_and_its_corners_equal_the_plain_convolution(size, tile):
    # F(2x2, 3x3) and F(4x4, 3x3) on sizes that are and are not multiples of the tile
    # (the last tiles reach into the padding), in float64 so that only the algebra is
    # tested; the corners are the 2x2 pool windows.
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (3, size, size, 5), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (3, 3, 5, 4), jnp.float64)
        ref = conv4.conv3x3(x, w, jnp.zeros(4, jnp.float64), "xla")
        np.testing.assert_allclose(conv4._winograd_conv(x, w, tile), ref, rtol=1e-12, atol=1e-12)
        corners = conv4._winograd_corners(x, w, tile)
        assert corners.shape[3] == tile // 2 * -(-size // tile)
        even = size // 2 * 2
        for a, b in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            np.testing.assert_allclose(
                corners[a, b, :, : size // 2, : size // 2], ref[:, a:even:2, b:even:2], atol=1e-12
            )


def test_winograd_rejects_an_unknown_tile():
    x, w = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))
    with pytest.raises(ValueError, match="tile must be one of"):
        conv4._winograd_corners(x, w, 3)


@pytest.mark.parametrize("c_in,size", [(1, 12), (4, 3)])
def test_im2col_vjp_gradients_of_first_and_second_order_match_xla(c_in, size):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, size, size, c_in), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (3, 3, c_in, 3), jnp.float64)
        b = jnp.zeros(3, jnp.float64)

        def loss(impl):
            return lambda x, w: jnp.sum(jnp.sin(conv4.conv3x3(x, w, b, impl)))

        def second(impl):  # what MAML's meta-gradient differentiates: an inner gradient
            return jax.grad(lambda w: jnp.sum(jax.grad(loss(impl), 0)(x, w) ** 2))(w)

        chex.assert_trees_all_close(
            jax.grad(loss("im2col_vjp"), (0, 1))(x, w),
            jax.grad(loss("xla"), (0, 1))(x, w),
            rtol=1e-9,
            atol=1e-9,
        )
        np.testing.assert_allclose(second("im2col_vjp"), second("xla"), rtol=1e-8, atol=1e-8)


def _tiny_float64_tasks():
    params = conv4.init(jax.random.key(0), ways=3, channels=4, image_size=16, dtype=jnp.float64)
    tasks = mj.Task(
        mj.Batch(
            jax.random.uniform(jax.random.key(2), (2, 3, 16, 16, 1), jnp.float64),
            jnp.tile(jnp.arange(3), (2, 1)),
            jnp.ones((2, 3)),
        ),
        mj.Batch(
            jax.random.uniform(jax.random.key(3), (2, 6, 16, 16, 1), jnp.float64),
            jnp.tile(jnp.arange(3).repeat(2), (2, 1)),
            jnp.ones((2, 6)),
        ),
    )
    return params, tasks


def _meta_grads(impl, params, tasks, *, vmapped):
    learner = mj.maml(classifier_loss(impl), inner_lr=0.4, inner_steps=1)
    grad = jax.grad(lambda p, t: learner.loss(p, t)[0])
    if vmapped:
        return jax.jit(jax.vmap(grad, in_axes=(None, 0)))(params, tasks)
    per_task = [jax.jit(grad)(params, jax.tree.map(lambda x, i=i: x[i], tasks)) for i in range(2)]
    return jax.tree.map(lambda *g: jnp.stack(g), *per_task)


@pytest.mark.parametrize(
    "impl",
    # im2col_fused equals im2col to second order in the fused-block tests below.
    ["im2col", pytest.param("im2col_fused", marks=pytest.mark.slow)],
)
def test_im2col_maml_meta_gradient_over_tasks_equals_plain_convolutions_task_by_task(impl):
    # float64: second-order gradients through batch norm on tiny batches are
    # ill-conditioned in float32. Reference: the plain XLA convolution, one task at a
    # time (no vmap, so no grouped convolution).
    with jax.enable_x64(True):
        params, tasks = _tiny_float64_tasks()
        reference = _meta_grads("xla", params, tasks, vmapped=False)
        chex.assert_trees_all_close(
            _meta_grads(impl, params, tasks, vmapped=True), reference, rtol=1e-8, atol=1e-10
        )


def test_xla_conv_under_vmapped_inner_loop_matches_task_by_task():
    # Failed before max_pool_2x2 stopped using an equality-based max gradient (the
    # adapted outputs differed from the task-by-task computation).
    with jax.enable_x64(True):
        params, tasks = _tiny_float64_tasks()
        chex.assert_trees_all_close(
            _meta_grads("xla", params, tasks, vmapped=True),
            _meta_grads("xla", params, tasks, vmapped=False),
            rtol=1e-8,
            atol=1e-10,
        )


def test_jitted_gradient_equals_eager_gradient_at_full_width():
    # Regression: with the pool written as ``max`` over a reshaped window axis, XLA
    # recomputed the batch-norm output in the backward fusion with other rounding,
    # the ``x == max`` winner test failed, and the jitted gradient was wrong (off by
    # 2.0 here, in float64), while eager matched PyTorch.
    with jax.enable_x64(True):
        params = conv4.init(jax.random.key(0), ways=5, channels=64, dtype=jnp.float64)
        images = jax.random.normal(jax.random.key(1), (5, 28, 28, 1), jnp.float64)

        def loss(p):
            return mj.softmax_cross_entropy(conv4.apply(p, images), jnp.arange(5)).mean()

        chex.assert_trees_all_close(
            jax.jit(jax.grad(loss))(params), jax.grad(loss)(params), rtol=1e-9, atol=1e-12
        )


def test_max_pool_gradient_goes_to_one_window_element():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    g = jax.jit(jax.grad(lambda x: conv4.max_pool_2x2(x).sum()))(x)
    windows = g.reshape(2, 3, 2, 3, 2, 3).sum(axis=(2, 4))
    np.testing.assert_array_equal(windows, np.ones((2, 3, 3, 3)))
    np.testing.assert_array_equal(jnp.sort(jnp.unique(g)), [0.0, 1.0])


def test_max_of_corners_gives_ties_to_the_first_corner_like_pytorch():
    # Windows (row-major): a tie of all four, a tie of the two right corners, a tie of
    # the bottom row, and a single maximum at the bottom right.
    x = jnp.array(
        [
            [[0.0, 0.0], [0.0, 0.0]],
            [[0.0, 2.0], [1.0, 2.0]],
            [[0.0, 1.0], [3.0, 3.0]],
            [[0, 1], [2, 5.0]],
        ]
    )  # [window, row, col]
    np.testing.assert_array_equal(conv4.max_of_corners(x, (1, 2)), [0.0, 2.0, 3.0, 5.0])
    g = jax.grad(lambda x: conv4.max_of_corners(x, (1, 2)).sum())(x)
    expected = np.zeros((4, 2, 2))
    expected[0, 0, 0] = expected[1, 0, 1] = expected[2, 1, 0] = expected[3, 1, 1] = 1.0
    np.testing.assert_array_equal(g, expected)
    # the pool on NHWC: PyTorch's max_pool2d rule on a constant image (all ties)
    g = jax.grad(lambda x: conv4.max_pool_2x2(x).sum())(jnp.ones((1, 4, 4, 1)))
    np.testing.assert_array_equal(g[0, :, :, 0], np.kron(np.ones((2, 2)), [[1, 0], [0, 0]]))
    # a NaN anywhere in a window is its maximum (not pooled away), and takes the gradient
    nan = jnp.array([[[1.0, jnp.nan], [0.0, 5.0]]])
    np.testing.assert_array_equal(conv4.max_of_corners(nan, (1, 2)), [jnp.nan])
    g = jax.grad(lambda x: jnp.sum(conv4.max_of_corners(x, (1, 2))))(nan)
    np.testing.assert_array_equal(g, [[[0.0, 1.0], [0.0, 0.0]]])
    with pytest.raises(ValueError, match=r"axes \(2, 1\) must be two increasing axes"):
        conv4.max_of_corners(x, (2, 1))


def test_max_of_corners_derivatives_of_every_mode_equal_the_max_reduction():
    # Away from ties its derivative is max's: reverse, forward (a Hessian-vector
    # product as iMAML forms it, jvp of grad) and reverse-over-reverse, in float64.
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (3, 2, 5, 2, 4), jnp.float64)
        v = jax.random.normal(jax.random.key(1), x.shape, jnp.float64)

        def loss(pool):
            return lambda x: jnp.sum(jnp.sin(pool(x)) * jnp.cos(x[:, 0, :, 0]))

        ours = loss(lambda x: conv4.max_of_corners(x, (1, 3)))
        ref = loss(lambda x: jnp.max(x, axis=(1, 3)))
        np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(ref)(x), rtol=1e-12)
        hvp = lambda f: jax.jvp(jax.grad(f), (x,), (v,))[1]
        np.testing.assert_allclose(hvp(ours), hvp(ref), rtol=1e-12, atol=1e-12)
        rr = lambda f: jax.grad(lambda x: jnp.vdot(jax.grad(f)(x), v))(x)
        np.testing.assert_allclose(rr(ours), rr(ref), rtol=1e-12, atol=1e-12)


def test_batch_norm_is_transductive_and_padding_is_excluded(setup):
    params, images = setup
    apply = jax.jit(conv4.apply, static_argnames="conv")
    full = apply(params, images)
    # transductive: an example's logits depend on the rest of its batch
    assert not np.allclose(apply(params, images[:5])[:5], full[:5], atol=1e-4)
    # a padded (masked-out) example changes nothing for the others
    padded = jnp.concatenate([images[:5], jnp.full((3, 28, 28, 1), 7.0)])
    mask = jnp.arange(8) < 5
    np.testing.assert_allclose(
        apply(params, padded, example_mask=mask)[:5],
        apply(params, images[:5]),
        rtol=1e-4,
        atol=1e-5,
    )


def test_max_pool_floor_and_shapes():
    x = jnp.arange(2 * 7 * 7 * 1, dtype=jnp.float32).reshape(2, 7, 7, 1)
    y = conv4.max_pool_2x2(x)
    assert y.shape == (2, 3, 3, 1)
    assert float(y[0, 0, 0, 0]) == float(x[0, 1, 1, 0])
    # the same as a reshape-max, and its gradient picks the arg-max
    ref = x[:, :6, :6].reshape(2, 3, 2, 3, 2, 1).max(axis=(2, 4))
    np.testing.assert_array_equal(y, ref)
    g = jax.grad(lambda x: conv4.max_pool_2x2(x).sum())(x)
    assert float(g.sum()) == 18.0 and float(g[0, 1, 1, 0]) == 1.0


def test_bad_image_rank_is_a_clear_error(setup):
    params, _ = setup
    with pytest.raises(ValueError, match=r"images \[N, H, W, C\]"):
        conv4.apply(params, jnp.zeros((28, 28, 1)))


def test_population_stats_of_one_batch_are_its_batch_stats(setup):
    params, images = setup
    apply = jax.jit(conv4.apply)  # eager, every small op compiles apart
    stats = jax.jit(conv4.population_stats)(params, images[None])
    np.testing.assert_allclose(
        apply(params, images, batch_stats=stats), apply(params, images), atol=1e-5
    )
    # with fixed statistics an example's logits no longer depend on its batch
    alone = apply(params, images[:3], batch_stats=stats)
    np.testing.assert_allclose(alone, apply(params, images, batch_stats=stats)[:3], atol=1e-5)


def test_population_variance_is_the_total_variance():
    params = conv4.init(jax.random.key(0), ways=5, channels=4)
    batches = jax.random.uniform(jax.random.key(1), (4, 6, 28, 28, 1))
    stats = conv4.population_stats(params, batches)
    # layer 0 sees the raw images: its population moments are those of all 24 images
    all_at_once = conv4.population_stats(params, batches.reshape(1, 24, 28, 28, 1))
    np.testing.assert_allclose(stats["bn0"][0], all_at_once["bn0"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["bn0"][1], all_at_once["bn0"][1], rtol=1e-4, atol=1e-6)


def _fused_case():
    # Full width (9 * C_in <= C_out in the first block only: patch-moment statistics
    # there, reductions over z in the others), negative batch-norm scales in some
    # channels (the min-pool branch), and a masked-out example.
    params = conv4.init(jax.random.key(0), ways=5, channels=16, dtype=jnp.float64)
    sign = jnp.where(jnp.arange(16) % 3 == 0, -1.0, 1.0)
    for name in ("bn0", "bn1", "bn2"):
        params[name] = dict(params[name], scale=params[name]["scale"] * sign)
    images = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1), jnp.float64)
    return params, images, jnp.arange(6) < 5


@pytest.mark.parametrize(
    "mode, all_sizes, tile",
    [
        ("batch", False, 2),
        ("masked", False, 2),
        ("given_stats", False, 2),
        ("masked", True, 2),
        ("masked", True, 4),
    ],
)
def test_fused_blocks_equal_conv_then_batch_norm_then_pool(mode, all_sizes, tile, monkeypatch):
    # "im2col_fused" pools before the batch-norm affine map and takes the first
    # block's statistics from the patches' moments: the same function, the same
    # gradients of first and second order. "winograd_fused" also convolves the
    # second block (14x14, even) by Winograd and pools its corners (the tile threshold
    # is lowered so that 6 images use it); with ``all_sizes`` the odd 7x7 and 3x3
    # blocks too (half-padded tiles, masked out of the statistics); with ``tile`` 4 by
    # F(4x4, 3x3), whose tiles reach past 14x14, 7x7 and 3x3 (more padding masked).
    monkeypatch.setattr(conv4, "WINOGRAD_MIN_TILES", 1)
    monkeypatch.setattr(conv4, "WINOGRAD_TILE", tile)
    assert conv4._winograd_pays((6, 14, 14, 16)) and not conv4._winograd_pays((6, 7, 7, 16))
    if all_sizes:
        monkeypatch.setattr(conv4, "_winograd_pays", lambda shape: shape[-1] >= 8)
    with jax.enable_x64(True):
        params, images, mask = _fused_case()
        kwargs = {"masked": dict(example_mask=mask)}.get(mode, {})
        if mode == "given_stats":
            kwargs = dict(batch_stats=conv4.population_stats(params, images[None]))

        @jax.jit  # one program per mode (eager, every primitive is compiled apart)
        def outputs(p):
            out = {}
            for impl in ("im2col", "im2col_fused", "winograd_fused"):

                def f(p, impl=impl):
                    logits = conv4.apply(p, images, conv=impl, **kwargs)
                    return jnp.sum(jnp.sin(logits) * mask[:, None])

                grad_norm = lambda p, f=f: optax.tree.norm(jax.grad(f)(p))  # second order
                stats = conv4.batch_statistics(p, images, conv=impl)
                out[impl] = (f(p), jax.grad(f)(p), jax.grad(grad_norm)(p), stats)
            return out

        out = outputs(params)
        ref, ref_grad, ref_second, ref_stats = out["im2col"]
        for impl in ("im2col_fused", "winograd_fused"):
            fused, fused_grad, fused_second, fused_stats = out[impl]
            np.testing.assert_allclose(fused, ref, rtol=1e-12)
            chex.assert_trees_all_close(fused_grad, ref_grad, rtol=1e-9, atol=1e-9)
            chex.assert_trees_all_close(fused_second, ref_second, rtol=1e-8, atol=1e-8)
            # The statistics it reports (what running averages are made of) are the same.
            chex.assert_trees_all_close(fused_stats, ref_stats, rtol=1e-10, atol=1e-12)


def test_winograd_threshold_is_dropped_on_single_threaded_cpu_devices(monkeypatch):
    # W1's 5-image calls on the 14x14x64 block: 245 2x2 tiles, under the threshold of a
    # multi-threaded CPU; every even block on a CPU split by metajax.cpu_devices.
    w1_block = (5, 14, 14, 64)
    monkeypatch.setenv("XLA_FLAGS", "")
    assert not conv4._winograd_pays(w1_block) and conv4._winograd_pays((75, 14, 14, 64))
    monkeypatch.setenv(
        "XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false"
    )
    assert conv4._winograd_pays(w1_block)
    assert not conv4._winograd_pays((5, 7, 7, 64)) and not conv4._winograd_pays((5, 28, 28, 1))
