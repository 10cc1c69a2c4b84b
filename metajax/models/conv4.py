"""The MAML paper's conv4 learner, as pure functions with selectable convolutions.

Architecture (Finn et al. 2017, following Vinyals et al. 2016): four blocks of
[3x3 convolution with ``channels`` filters ("same" padding), batch norm, ReLU,
2x2 max-pool], then a linear head. (ReLU is applied after the pool: the same
function, since ReLU is monotone, and a quarter of the elementwise work.) On
28x28 Omniglot the feature map goes 28 -> 14 -> 7 -> 3 -> 1, so the head sees
``channels`` features.

Batch norm is *transductive*, as in MAML: it normalises with the statistics of the
batch it is applied to (the support set during adaptation, the query set when
evaluating), in training and at test time alike. ``example_mask`` excludes padded
examples (weight 0) from those statistics, so padding changes nothing. Two
non-transductive alternatives:

* Running statistics (``init(..., running_stats=True)``): each ``bn*`` layer also
  holds ``mean`` and ``var`` leaves, an exponential moving average of the batch
  statistics seen in meta-training (:mod:`metajax.running_stats` updates them in the
  train step; gradients never reach them). ``apply(..., running=True)`` normalises
  with them. With MAML++'s per-step batch norm (``maml(per_step_params=
  batch_norm_mask)``) they get the per-step axis too: one set of statistics per inner
  step (MAML++'s BNRS).
* Population statistics of given parameters over many batches
  (:func:`population_stats`, "precise BN"), passed with ``batch_stats=...``.

Convolution formulations (``conv=``), numerically the same function:

* ``"auto"`` (the default): ``"winograd_fused"`` on CPU, ``"im2col"`` on GPU, ``"xla"`` on
  TPU (:func:`resolve_conv`). On the 2-core CPU (2026-12-02, alternating rounds in one
  process, ``benchmarks/results/conv_formulations_fused.md``) ``"im2col_fused"`` takes
  the second-order W1 meta-step from 0.460 to 0.404 s and W2 from 2.491 to 1.830 s;
  on a slower host (2026-12-06, ``benchmarks/results/winograd_rules.md``)
  ``"winograd_fused"`` takes W2 from 4.50 to 4.11 s and leaves W1 as it was (the
  same program). Neither has been measured on a GPU, which keeps ``"im2col"``. Measured on an H200 (jax 0.11.2, cuDNN 9.19; W1: 5-way
  1-shot, 1 query, conv4-64, meta-batch 32, second-order MAML, tasks vmapped;
  ``benchmarks/results/gpu/task_parallel_gpu*.md``): 3.34 ms per meta-step with
  im2col against 14.3 ms with ``"xla"``, whose per-task weights become grouped
  convolutions there too. The TPU choice is not measured: its matrix unit runs
  convolutions natively.

* ``"xla"``: ``lax.conv_general_dilated``. Under ``vmap`` over tasks with per-task
  (adapted) weights, JAX turns this into a grouped convolution
  (``feature_group_count = tasks``); XLA:CPU runs those, and their gradients,
  extremely slowly (jax-ml/jax#13800).
* ``"im2col"``: the 3x3 patches are gathered with nine static slices of the padded
  input and contracted with the ``[9 * C_in, C_out]`` kernel by one matmul.
  Under ``vmap`` per-task weights become a *batched matmul*.
* ``"im2col_fused"``: ``"im2col"`` convolutions, with each block rearranged so that
  only the convolution's output is written at full resolution (:func:`_fused_block`):
  the max-pool runs before the batch-norm affine map (they commute, with the channels
  of negative scale negated), and the grayscale first block takes its batch
  statistics from the 9 x 9 covariance of its patches instead of two reductions over
  its 28x28x64 output. On a W2 task (75 query images, forward and backward) the first
  block took 77 ms against 61 ms for the rest of the network timed apart, and 15 ms
  fused (``benchmarks/conv4_block_costs.py``, ``benchmarks/results/conv4_block_costs.log``).
* ``"winograd_fused"``: ``"im2col_fused"``, except that a block whose input has even
  height and width, at least 8 channels and at least ``WINOGRAD_MIN_TILES`` 2x2
  output tiles (:func:`_winograd_pays`) convolves by Winograd F(2x2, 3x3)
  (Lavin & Gray 2016: 16 multiplications per 2x2 outputs and channel pair instead of
  36, as 16 matmuls ``[tiles, C_in] x [C_in, C_out]``; ``WINOGRAD_TILE = 4`` gives
  F(4x4, 3x3), measured slower on the CPU). The 2x2 output tiles are the
  max-pool's windows, so the block keeps the convolution as its four window corners
  and pools them directly (:func:`_winograd_block`). In conv4 on 28x28 images that is
  the second block (14x14x64), in calls of 25 images or more: W2's 75 query images,
  not W1's 5. The output transform is one ``[4, 16]`` product so
  that XLA computes each corner, and each corner's gradient, once; written as
  elementwise sums, the backward pass recomputed them per use and was slower than
  im2col.
* ``"winograd"``: every convolution by Winograd F(2x2, 3x3), unfused (for tests and
  other backends).
* ``"im2col_vjp"``: ``"im2col"`` with a hand-written VJP whose input gradient is the
  convolution of the output gradient with the flipped, transposed kernel. The same
  function, and the same gradients of every order up to rounding
  (``tests/test_conv4.py``); not faster on this CPU (below), kept so that other
  backends can be measured (``benchmarks/conv_formulations.py``).

Where the time goes on the 2-core CPU (forward, 2400 images, layer by layer): layer 2
writes a patch tensor 9x its input, and writing it costs more than its matmul
(0.79 s vs 0.30 s); layer 1's batch norm, ReLU and pool, on the largest
activation, cost more than its convolution. Measured in the full second-order MAML
step, these alternatives were *slower* and are not used: nine fused multiply-adds
for the grayscale first layer (+40%), max-pool as strided slices (+15%), and
gathering only the three horizontal taps with shifted partial outputs (2x faster
forward, slower backward). ReLU after the pool (used) is neutral for speed.
Convolving a task's 75 query images in chunks of 25, 15 or 5 (``lax.map`` over the
chunks, so a chunk's patches stay in cache) did not help either: 0.110-0.119 s per
task for forward and backward against 0.099-0.112 s unchunked (W2's query pass,
2026-11-29, two training runs sharing the CPU). Per task, the ``"xla"`` formulation
is as fast as im2col outside a loop (0.13 s) but 20x slower inside ``lax.map``.
``"im2col_vjp"`` (a forward-shaped matmul for the input gradient instead of a
``[N*H*W, 9*C]`` patch gradient scattered back through the nine slices) is not faster
in the full step: W1 0.322 against 0.303 s, W2 1.848 against 1.729 s per meta-step
(``lax.map``, alternating rounds in one process, load average 1.7;
``benchmarks/results/conv_formulations.md``, 2026-12-02). XLA's YNNPACK dot fusion
(``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot``) made the W1 step 2.9x
slower (0.866 s) and left layer 2's matmuls as they were (197 / 110 / 202 GFLOP/s
against 200 / 111 / 210 for forward, weight and input gradient;
``benchmarks/results/conv_formulations_ynn.md``). Neither is the default.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from metajax import runtime

ConvImpl = Literal[
    "auto", "xla", "im2col", "im2col_vjp", "im2col_fused", "winograd", "winograd_fused"
]
BN_EPS = 1e-5


def init(
    key: jax.Array,
    *,
    ways: int,
    channels: int = 64,
    in_channels: int = 1,
    blocks: int = 4,
    image_size: int = 28,
    dtype=jnp.float32,
    running_stats: bool = False,
) -> dict[str, Any]:
    """Initial parameters: Glorot-uniform kernels, zero biases, unit BN scales.

    Args:
      key: PRNG key.
      ways: number of output classes of the head.
      channels: filters per convolution (64 in the MAML paper's Omniglot net).
      in_channels: image channels.
      blocks: number of conv blocks.
      image_size: input height/width (to size the head).
      running_stats: also hold batch-norm running statistics, ``bn*`` leaves ``mean``
        (zeros) and ``var`` (ones), as PyTorch initialises them. They are state, not
        parameters: ``apply`` stops their gradient.

    Returns:
      ``{"conv0": {"w": [3, 3, C_in, C], "b": [C]}, "bn0": {"scale", "bias"}, ...,
      "head": {"w": [F, ways], "b": [ways]}}`` (``bn*`` also ``mean``, ``var`` with
      ``running_stats``).
    """
    params: dict[str, Any] = {}
    keys = jax.random.split(key, blocks + 1)
    glorot = jax.nn.initializers.glorot_uniform()
    size, c_in = image_size, in_channels
    for i in range(blocks):
        params[f"conv{i}"] = {
            "w": glorot(keys[i], (3, 3, c_in, channels), dtype),
            "b": jnp.zeros((channels,), dtype),
        }
        params[f"bn{i}"] = {
            "scale": jnp.ones((channels,), dtype),
            "bias": jnp.zeros((channels,), dtype),
        }
        if running_stats:
            params[f"bn{i}"]["mean"] = jnp.zeros((channels,), dtype)
            params[f"bn{i}"]["var"] = jnp.ones((channels,), dtype)
        size, c_in = size // 2, channels
    features = size * size * channels
    params["head"] = {
        "w": glorot(keys[-1], (features, ways), dtype),
        "b": jnp.zeros((ways,), dtype),
    }
    return params


def batch_norm_mask(params: dict[str, Any]) -> dict[str, Any]:
    """Mask of the batch-norm leaves (``bn*``): MAML++'s per-step parameters.

    For ``maml(..., per_step_params=batch_norm_mask)``: the scales and biases (BNWB)
    and, where the model has them, the running statistics (BNRS) become per-step.
    """

    def mask(name, leaves):
        is_bn = name.startswith("bn")
        return jax.tree.map(lambda _: is_bn, leaves)

    return {name: mask(name, leaves) for name, leaves in params.items()}


STATS_KEYS = ("mean", "var")


def running_stats_mask(params: dict[str, Any]) -> dict[str, Any]:
    """Mask of the running-statistics leaves (``bn*/mean``, ``bn*/var``)."""
    return {
        name: {k: name.startswith("bn") and k in STATS_KEYS for k in leaves}
        if isinstance(leaves, dict)
        else jax.tree.map(lambda _: False, leaves)
        for name, leaves in params.items()
    }


def has_running_stats(params: dict[str, Any]) -> bool:
    """Whether ``params`` holds batch-norm running statistics (``init(running_stats=True)``)."""
    return any(jax.tree.leaves(running_stats_mask(params)))


def batch_statistics(
    params: dict[str, Any],
    images: ArrayLike,
    *,
    conv: ConvImpl = "auto",
    example_mask: jax.Array | None = None,
) -> dict[str, dict[str, jax.Array]]:
    """The batch statistics each batch-norm layer normalises ``images`` with.

    The forward pass of :func:`apply` with batch statistics (transductive), under
    ``stop_gradient``: what a running average of the statistics is made of.

    Returns:
      ``{"bn0": {"mean": [C], "var": [C]}, ...}`` (biased variance, the one used to
      normalise).
    """
    _, used = _forward(jax.lax.stop_gradient(params), images, conv, example_mask, None)
    return {name: {"mean": mean, "var": var} for name, (mean, var) in used.items()}


def update_running_stats(
    params: dict[str, Any], batch_stats: dict[str, dict[str, jax.Array]], momentum: float
) -> dict[str, Any]:
    """``params`` with each running statistic moved towards ``batch_stats``.

    ``running <- (1 - momentum) * running + momentum * batch`` (PyTorch's convention;
    its default momentum is 0.1).

    Args:
      params: conv4 parameters holding running statistics; a per-step layout
        (``[steps + 1, C]`` leaves) takes one row of statistics per inner step.
      batch_stats: ``{"bn0": {"mean", "var"}, ...}`` with leaves ``[steps + 1, C]``:
        row ``k`` is what the forward pass after ``k`` inner steps normalised with
        (see :func:`metajax.running_stats.per_step_statistics`). Single-row
        statistics (``[C]`` leaves) average the rows first.
      momentum: weight of the new statistics, in ``(0, 1]``.
    """
    if not has_running_stats(params):
        raise ValueError(
            "params hold no batch-norm running statistics; create them with "
            "conv4.init(..., running_stats=True)."
        )
    new = dict(params)
    for name, stats in batch_stats.items():
        layer = dict(params[name])
        for key in STATS_KEYS:
            running, batch = layer[key], jnp.asarray(stats[key], layer[key].dtype)
            if batch.ndim == running.ndim + 1:  # several passes, one set of statistics
                batch = jnp.mean(batch, axis=0)
            if batch.shape != running.shape:
                raise ValueError(
                    f"{name}/{key}: batch statistics of shape {stats[key].shape} do not fit "
                    f"running statistics of shape {running.shape}."
                )
            layer[key] = (1.0 - momentum) * running + momentum * batch
        new[name] = layer
    return new


def _fused_block(x, conv_params, bn_params, example_mask, stats, winograd=False):
    """One conv4 block, ``"im2col_fused"``: pooled before the batch-norm affine map.

    The same function as conv -> batch norm -> max-pool -> ReLU, arranged so that no
    full-resolution tensor but the convolution's output is ever written:

    * Batch norm with fixed statistics is the per-channel affine map ``a * z + c``
      of the convolution ``z`` (``a = scale / sqrt(var + eps)``), and a max over a
      window commutes with it: ``max(a z + c) = |a| max(sign(a) z) + c``. So ``z``
      (its channels of negative scale negated) is pooled first and the affine map and
      ReLU run at a quarter of the size; in the backward pass the
      gradients of ``a`` and ``c`` are quarter-size sums too, and ``z``'s gradient is
      one pass.
    * When the patches are narrower than the output (``9 * C_in <= C_out``: the
      grayscale first layer, 9 against 64), the batch statistics come from the
      patches' moments instead of a reduction over ``z``: ``mean = mu_P W + b`` and
      ``var = w_c^T Cov_P w_c`` per channel, with ``Cov_P`` the ``[9 C_in, 9 C_in]``
      (centred) covariance of the patches.

    With ``winograd`` (``"winograd_fused"``), a block that :func:`_winograd_pays`
    accepts is :func:`_winograd_block` instead.

    Returns:
      ``(pooled activations, (mean, var))``, the statistics it normalised with.
    """
    n, h, wd, c_in = x.shape
    w, b = conv_params["w"], conv_params["b"]
    kernel = w.reshape(9 * c_in, -1)
    from_patches = stats is None and 9 * c_in <= kernel.shape[1]
    if winograd and not from_patches and _winograd_pays(x.shape):
        return _winograd_block(x, conv_params, bn_params, example_mask, stats)
    corner_major = from_patches and h % 2 == 0 and wd % 2 == 0
    if corner_major:  # rows (window corner, n, i, j): the pool reads 4 contiguous blocks
        patches = _corner_patches(x)
        rows_per_example = h * wd // 4
    else:
        patches = _patches(x)
        rows_per_example = h * wd
    z = None  # the convolution [N*H*W, C_out] without the bias, when the statistics need it
    if stats is not None:
        mean, var = stats
    elif from_patches:
        if example_mask is None:
            mu = jnp.mean(patches, axis=0)
            centred = patches - mu
            cov = jnp.dot(centred.T, centred) / patches.shape[0]
        else:
            m = jnp.repeat(example_mask.astype(x.dtype), rows_per_example)
            m = (jnp.tile(m, 4) if corner_major else m)[:, None]
            count = jnp.maximum(jnp.sum(m), 1.0)
            mu = jnp.sum(patches * m, axis=0) / count
            centred = (patches - mu) * m
            cov = jnp.dot(centred.T, centred) / count
        mean = mu @ kernel + b
        var = jnp.maximum(jnp.einsum("kc,kl,lc->c", kernel, cov, kernel), 0.0)
    else:
        z = jnp.dot(patches, kernel)
        z_mean, var = _moments(z.reshape(n, h, wd, -1), example_mask)
        mean = z_mean + b
    a = bn_params["scale"] * jax.lax.rsqrt(var + BN_EPS)
    shift = bn_params["bias"] + a * (b - mean)  # batch norm of z + b is a * z + shift
    # max(a z) = |a| max(sign(a) z): one pool, over z with the channels of negative
    # scale negated (a max-pool and a min-pool selected by sign would send the
    # backward pass through both). When z is not needed otherwise, the sign goes into
    # the kernel's columns (exact), so that the product is not written twice.
    sign = jnp.where(a >= 0, 1.0, -1.0).astype(kernel.dtype)
    signed = jnp.dot(patches, kernel * sign) if z is None else z * sign
    if corner_major:  # the pool of max_pool_2x2, on contiguous corners
        pooled = max_of_corners(signed.reshape(2, 2, n, h // 2, wd // 2, -1))
    else:
        pooled = max_pool_2x2(signed.reshape(n, h, wd, -1))
    return jax.nn.relu((a * sign) * pooled + shift), (mean, var)


def _winograd_block(x, conv_params, bn_params, example_mask, stats):
    """:func:`_fused_block` with the convolution by Winograd F(2x2, 3x3) (or
    F(4x4, 3x3) with ``WINOGRAD_TILE = 4``).

    The output tiles are made of whole max-pool windows, so the convolution is kept as
    its four window corners (:func:`_winograd_corners`) and never interleaved into a
    full-resolution tensor: the pool is a ``maximum`` of the four, and the batch
    statistics are sums over them. Where the output's size is not a multiple of the
    tile, the last tiles reach past it: those corners are masked out of the statistics,
    and the pool (which drops an odd last row, as :func:`max_pool_2x2` does) does not
    reach them.
    """
    n, h, wd, _ = x.shape
    b = conv_params["b"]
    y = _winograd_corners(x, conv_params["w"], WINOGRAD_TILE)  # [2, 2, N, TH, TW, C]
    if stats is not None:
        mean, var = stats
    else:
        th, tw = y.shape[3:5]
        # weights[dy, dx, 0, i, j, 0] = 1 where 2i + dy < H and 2j + dx < W
        rows = jnp.arange(th)[None, :] < (h - jnp.arange(2)[:, None] + 1) // 2  # [dy, i]
        cols = jnp.arange(tw)[None, :] < (wd - jnp.arange(2)[:, None] + 1) // 2  # [dx, j]
        weights = (rows[:, None, None, :, None, None] & cols[None, :, None, None, :, None]).astype(
            x.dtype
        )
        if example_mask is None:
            count = float(n * h * wd)
        else:
            weights = weights * example_mask.astype(x.dtype)[:, None, None, None]
            count = jnp.maximum(jnp.sum(example_mask.astype(x.dtype)) * h * wd, 1.0)
        axes = (0, 1, 2, 3, 4)
        z_mean = jnp.sum(y * weights, axis=axes) / count
        var = jnp.sum(jnp.square(y - z_mean) * weights, axis=axes) / count
        mean = z_mean + b
    a = bn_params["scale"] * jax.lax.rsqrt(var + BN_EPS)
    shift = bn_params["bias"] + a * (b - mean)
    sign = jnp.where(a >= 0, 1.0, -1.0).astype(y.dtype)
    pooled = max_of_corners(y[:, :, :, : h // 2, : wd // 2] * sign)
    return jax.nn.relu((a * sign) * pooled + shift), (mean, var)


def resolve_conv(impl: ConvImpl) -> ConvImpl:
    """The formulation ``"auto"`` stands for on the default backend; others unchanged."""
    if impl == "auto":
        return {"cpu": "winograd_fused", "tpu": "xla"}.get(jax.default_backend(), "im2col")
    return impl


def conv3x3(x: jax.Array, w: jax.Array, b: jax.Array, impl: ConvImpl = "auto") -> jax.Array:
    """3x3 "same" convolution, NHWC input, HWIO kernel.

    Args:
      x: ``[N, H, W, C_in]``.
      w: ``[3, 3, C_in, C_out]``.
      b: ``[C_out]``.
      impl: ``"auto"``, ``"xla"`` or ``"im2col"`` (see the module docstring).
    """
    impl = resolve_conv(impl)
    if impl == "xla":
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    elif impl == "im2col":
        y = _im2col_conv(x, w)
    elif impl == "im2col_vjp":
        y = _im2col_conv_vjp(x, w)
    elif impl == "im2col_fused":  # the convolution alone is im2col's
        y = _im2col_conv(x, w)
    elif impl in ("winograd", "winograd_fused"):
        y = _winograd_conv(x, w)
    else:
        raise ValueError(
            "conv impl must be 'auto', 'xla', 'im2col', 'im2col_vjp', 'im2col_fused', "
            f"'winograd' or 'winograd_fused', got {impl!r}."
        )
    return y + b


def _patches(x: jax.Array) -> jax.Array:
    """``[N, H, W, C] -> [N * H * W, 9 * C]``: the 3x3 "same" patches of every pixel."""
    n, h, wd, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # Patch order (dy, dx, c) matches w.reshape(9 * C_in, C_out) (HWIO).
    patches = jnp.concatenate(
        [padded[:, dy : dy + h, dx : dx + wd, :] for dy in range(3) for dx in range(3)], axis=-1
    )
    return patches.reshape(n * h * wd, 9 * c)


def _corner_patches(x: jax.Array) -> jax.Array:
    """:func:`_patches` of an even-sized input, rows ordered by 2x2 window corner.

    ``[N, H, W, C] -> [4 * N * H/2 * W/2, 9 * C]``: the rows of corner ``(dy, dx)``
    (in the order ``(0, 0), (0, 1), (1, 0), (1, 1)``) are the patches of the pixels
    ``(2i + dy, 2j + dx)``. The convolution's output is then the four corners of every
    pooling window as four contiguous blocks, so the pool and its gradient read and
    write whole blocks instead of strided slices of the full-resolution output.
    """
    n, h, wd, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    corners = []
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        taps = [
            padded[:, dy + ky : dy + ky + h : 2, dx + kx : dx + kx + wd : 2, :]
            for ky in range(3)
            for kx in range(3)
        ]
        corners.append(jnp.concatenate(taps, axis=-1).reshape(n * (h // 2) * (wd // 2), 9 * c))
    return jnp.concatenate(corners, axis=0)


def _im2col_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    n, h, wd, c = x.shape
    return jnp.dot(_patches(x), w.reshape(9 * c, -1)).reshape(n, h, wd, -1)


@jax.custom_vjp
def _im2col_conv_vjp(x: jax.Array, w: jax.Array) -> jax.Array:
    """:func:`_im2col_conv` whose input gradient is a convolution too (see the bwd)."""
    return _im2col_conv(x, w)


def _im2col_conv_vjp_fwd(x, w):
    return _im2col_conv(x, w), (x, w)


def _im2col_conv_vjp_bwd(residuals, g):
    # Autodiff of im2col computes the input gradient as g @ W^T, a [N*H*W, 9*C_in]
    # patch gradient, then scatters it back with the transpose of the nine slices.
    # For a stride-1 "same" 3x3 convolution the input gradient is the "same"
    # convolution of g with the spatially flipped, transposed kernel: one more
    # im2col product, with a forward-shaped matmul. The weight gradient is
    # autodiff's; the patches of x are recomputed rather than kept. The backward
    # rule is itself differentiated for second-order meta-gradients.
    x, w = residuals
    c_out = w.shape[3]
    dw = jnp.dot(_patches(x).T, g.reshape(-1, c_out)).reshape(w.shape)
    flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)  # [3, 3, C_out, C_in]
    return _im2col_conv(g, flipped).astype(x.dtype), dw.astype(w.dtype)


_im2col_conv_vjp.defvjp(_im2col_conv_vjp_fwd, _im2col_conv_vjp_bwd)

# Winograd F(m x m, 3x3) (Lavin & Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A per
# (m + 2) x (m + 2) input tile d (stride m) and m x m output tile. The channel sums
# become (m + 2)^2 matmuls [tiles, C_in] x [C_in, C_out]: per output, 16 / 4 = 4
# products for F(2x2, 3x3) and 36 / 16 = 2.25 for F(4x4, 3x3), against im2col's 9.
# Each matrix is given by its rows; B^T and A^T are applied by adds and constant
# multiplies (:func:`_combine`), G by a small einsum on the kernel.
_WINOGRAD = {
    2: dict(
        BT=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        G=((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0)),
        AT=((1, 1, 1, 0), (0, 1, -1, -1)),
    ),
    4: dict(
        BT=(
            (4, 0, -5, 0, 1, 0),
            (0, -4, -4, 1, 1, 0),
            (0, 4, -4, -1, 1, 0),
            (0, -2, -1, 2, 1, 0),
            (0, 2, -1, -2, 1, 0),
            (0, 4, 0, -5, 0, 1),
        ),
        G=(
            (1 / 4, 0.0, 0.0),
            (-1 / 6, -1 / 6, -1 / 6),
            (-1 / 6, 1 / 6, -1 / 6),
            (1 / 24, 1 / 12, 1 / 6),
            (1 / 24, -1 / 12, 1 / 6),
            (0.0, 0.0, 1.0),
        ),
        AT=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)),
    ),
}

# The output tile of "winograd_fused": 2 (F(2x2, 3x3), the pool's window) or 4
# (F(4x4, 3x3), four pool windows per tile; float32 error about 8x F(2x2)'s, ~1e-5
# relative). 4 is slower on the 2-core CPU although its matmuls are 26% fewer FLOPs
# on 14x14 (16 tiles of 36 products per image against 49 of 16): W1 +23% and W2 +27%
# per meta-step with tune_xla_cpu, W2 +5% with XLA's default flags against 2 with
# tune_xla_cpu, at twice the memory; the bigger transforms eat the matmuls' gain
# (benchmarks/results/winograd_f4_ab.md; after one matmul per tile entry, W1 +36%,
# W2 +34%).
WINOGRAD_TILE = 2

# Calls with fewer 2x2 output tiles keep im2col (see _winograd_pays).
WINOGRAD_MIN_TILES = 1200


def _winograd_pays(shape) -> bool:
    """Whether ``"winograd_fused"`` convolves an ``[N, H, W, C_in]`` input by Winograd.

    Even height and width, at least 8 input channels (the grayscale first layer keeps
    im2col and its patch-moment statistics), and at least ``WINOGRAD_MIN_TILES`` 2x2
    output tiles. Measured in the full second-order meta-step on the 2-core CPU
    (2026-12-06, alternating rounds in one process, nothing else running;
    ``benchmarks/results/winograd_rules.md``), seconds per meta-step, im2col / this
    rule / every even block / every block:

    * W2 (75 query images, 3675 tiles): 4.504 / 4.114 / 4.109 / 4.421;
    * W1 (5 images, 245 tiles per call): 0.989 / 0.981 / 1.055 / 1.265.

    So small calls stay on im2col, and so do the odd 7x7 and 3x3 blocks, whose last
    row and column of tiles is half padding. The block alone agrees: its gradient is
    slower through Winograd at 5 images, even at 10-20 and 1.15-1.28x faster from 30
    (``benchmarks/winograd_block_costs.py``,
    ``benchmarks/results/winograd_block_costs.log``).

    On a CPU split into one device per core (:func:`metajax.cpu_devices`, the step
    sharded over them) there is no tile threshold: every even block with 8 or more
    channels uses Winograd. Measured with 2 such devices on the same CPU, each looping
    over its 16 tasks, alternating rounds in one process
    (``benchmarks/results/winograd_rules_cpu_devices.md``, its command at its top),
    seconds per meta-step, im2col / every even block / this threshold:

    * W1: 0.796 / 0.639 / 0.785 (the threshold keeps W1's 5-image calls on im2col);
    * W2: 3.959 / 3.288 / 3.436.

    (With one multi-threaded device, W1 was slower with every even block: above.)

    Rechecked after the transforms got cheaper (split windows and added outputs), in
    one process each, alternating rounds: on one device the threshold still pays on W1
    (0.895 against 0.936 s with every even block; W2 equal within noise,
    ``benchmarks/results/winograd_rules_2026-12-06_evening.md``), and on 2 split devices
    Winograd for the odd blocks too is slower on W1 (0.536 against 0.480 s) and equal on
    W2 (``benchmarks/results/winograd_rules_cpu_devices_all.md``).
    """
    n, h, wd, c_in = shape
    min_tiles = 0 if runtime.cpu_devices_are_single_threaded() else WINOGRAD_MIN_TILES
    return h % 2 == 0 and wd % 2 == 0 and c_in >= 8 and n * h * wd // 4 >= min_tiles


def _combine(matrix, xs):
    """``[sum_j matrix[i][j] * xs[j] for i]`` by adds, subtracts and constant multiplies."""
    out = []
    for row in matrix:
        terms = sorted(((c, x) for c, x in zip(row, xs) if c != 0), key=lambda t: t[0] < 0)
        acc = None
        for c, x in terms:
            term = x if abs(c) == 1 else abs(c) * x
            if acc is None:
                acc = term if c > 0 else -term
            else:
                acc = acc + term if c > 0 else acc - term
        out.append(acc)
    return tuple(out)


def _winograd_conv(x: jax.Array, w: jax.Array, tile: int = 2) -> jax.Array:
    """3x3 "same" convolution (NHWC, HWIO) by Winograd F(tile x tile, 3x3); any H, W >= 1."""
    n, h, wd, _ = x.shape
    y = _winograd_corners(x, w, tile)  # [2, 2, N, th, tw, C]
    th, tw = y.shape[3:5]
    return y.transpose(2, 3, 0, 4, 1, 5).reshape(n, 2 * th, 2 * tw, -1)[:, :h, :wd]


def _winograd_corners(x: jax.Array, w: jax.Array, tile: int = 2) -> jax.Array:
    """The four corners of the 2x2 windows of a Winograd convolution's output.

    ``[2, 2, N, TH, TW, C_out]``, ``TH = tile / 2 * ceil(H / tile)`` (likewise
    ``TW``): ``[a, b, n, i, j]`` is the convolution's output at ``(n, 2i + a, 2j + b)``.
    Where the output's size is not a multiple of ``tile``, the last tiles reach past
    it, and so do the corners there (the convolution of the zero padding).
    """
    n, h, wd, c = x.shape
    if tile not in _WINOGRAD:
        raise ValueError(f"Winograd output tile must be one of {sorted(_WINOGRAD)}, got {tile!r}.")
    coeffs = _WINOGRAD[tile]
    bt, at, size = coeffs["BT"], coeffs["AT"], tile + 2
    th, tw = -(-h // tile), -(-wd // tile)  # output tiles
    padded = jnp.pad(
        x, ((0, 0), (1, tile * (th + 1) - 1 - h), (1, tile * (tw + 1) - 1 - wd), (0, 0))
    )
    v = []
    for t in _combine(bt, _strided_windows(padded, 1, th, tile)):  # [N, th, W', C]
        v.extend(_combine(bt, _strided_windows(t, 2, tw, tile)))
    g = jnp.asarray(coeffs["G"], w.dtype)
    u = jnp.einsum("ai,ijck,bj->abck", g, w, g).reshape(size * size, c, -1)  # G w G^T
    # One matmul [tiles, C_in] x [C_in, C_out] per tile entry k = size * i + j, on the
    # transformed windows as they come: a batched matmul needs them stacked (a copy),
    # its products split again for A^T, and reverse mode the same twice over.
    u = jax.lax.split(u, (1,) * (size * size))
    m = [
        jnp.dot(vk.reshape(n * th * tw, c), uk[0]).reshape(n, th, tw, -1)
        for vk, uk in zip(v, u, strict=True)
    ]
    # A^T m A by adds, one axis at a time (a matmul here made XLA transpose m and its
    # gradient in memory).
    half = [_combine(at, m[size * i : size * (i + 1)]) for i in range(size)]  # half[i][b]
    y = [_combine(at, [half[i][b] for i in range(size)]) for b in range(tile)]  # y[b][a]
    if tile == 2:
        return jnp.stack([jnp.stack([y[0][a], y[1][a]]) for a in range(2)])
    # output (tile * I + a, tile * J + b), a = 2 s + p and b = 2 q + r, is corner (p, r)
    # of window (tile / 2 * I + s, tile / 2 * J + q)
    half_tile = tile // 2
    grid = jnp.stack([y[b][a] for a in range(tile) for b in range(tile)])
    grid = grid.reshape(half_tile, 2, half_tile, 2, n, th, tw, -1)  # [s, p, q, r, N, I, J, C]
    return grid.transpose(1, 3, 4, 5, 0, 6, 2, 7).reshape(
        2, 2, n, half_tile * th, half_tile * tw, -1
    )


def _strided_windows(x: jax.Array, axis: int, count: int, tile: int) -> tuple[jax.Array, ...]:
    """``x[a : a + tile * count : tile]`` along ``axis`` for ``a = 0, ..., tile + 1``;
    ``x`` has ``tile * (count + 1)`` entries there.

    By phase, a reshape and ``lax.split`` followed by one-step shifts, so that reverse
    mode is a concatenate and one-entry pads rather than strided pads with interior
    padding, each tested at every element of the gradient.
    """
    shape = x.shape
    phases = x.reshape(shape[:axis] + (count + 1, tile) + shape[axis + 1 :])
    rows = shape[:axis] + (count + 1,) + shape[axis + 1 :]
    phase = [p.reshape(rows) for p in jax.lax.split(phases, (1,) * tile, axis=axis + 1)]
    head = lambda p: jax.lax.slice_in_dim(p, 0, count, axis=axis)
    tail = lambda p: jax.lax.slice_in_dim(p, 1, count + 1, axis=axis)
    return tuple(head(p) for p in phase) + (tail(phase[0]), tail(phase[1]))


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2 ("valid": odd sizes drop the last row/column).

    The maximum over each window by :func:`max_of_corners`, whose derivative takes
    one element of each window.
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :].reshape(n, h // 2, 2, w // 2, 2, c)
    return max_of_corners(x, (2, 4))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_of_corners(x: jax.Array, axes: tuple[int, int] = (0, 1)) -> jax.Array:
    """The maximum over two axes of size 2 (a pooling window's corners), removed.

    Its derivative takes, per output element, the derivative of one corner: the first
    maximal one in row-major order of the window (PyTorch's ``max_pool2d`` rule; a
    NaN counts as maximal, so it propagates as in ``jnp.maximum``). The
    winner comes from the forward pass's comparisons, and the derivative is a select
    of each corner's tangent on it, summed, linear in the tangent; the corners are
    taken by ``lax.split``, so reverse mode writes the window's gradient as one
    concatenate of four selects. A custom JVP, not a VJP, so that forward mode
    (iMAML's and TRPO's Hessian-vector products) and every order of differentiation
    work.

    Args:
      x: any array with size 2 along both of ``axes``.
      axes: the window's row and column axes, in increasing order.

    Other ways of writing it were worse:

    * ``max`` over the window's axes: its gradient marks the winners by testing
      ``x == max(x)``, and inside a jitted program XLA may recompute ``x`` (here, the
      batch-norm output) in a different fusion with different rounding, so the test
      can match no element and the gradient becomes 0/0 or wrong. That happened on
      XLA:CPU (jax 0.10.2): jitted conv4 gradients differed from eager ones and from
      PyTorch's, NaN in float64 (``tests/test_conv4.py``).
    * A chain of pairwise ``jnp.maximum`` of four sliced corners (this function's
      predecessor): correct, but its derivative re-tests three comparisons on the kept
      corners and splits ties in halves, and the transpose of the slices writes four
      zero-padded window-sized arrays and adds them. 3-7% slower on the W1 and W2
      meta-steps (``benchmarks/results/max_of_corners_ab.md``).
    * The tangent summed by a reduction over the window's axes: XLA:CPU hands it to
      YNNPACK, which took 7 ms for W1's first block (same file).
    """
    return _max_and_winner(x, axes)[0]


def _corners(x, axes):
    # lax.split, not slices: in reverse mode its transpose is one concatenate, where
    # slices become four zero-padded window-sized arrays added together.
    row, col = axes
    if not (0 <= row < col < x.ndim and x.shape[row] == x.shape[col] == 2):
        raise ValueError(f"max_of_corners: axes {axes} must be two increasing axes of size 2")
    shape = [d for i, d in enumerate(x.shape) if i not in axes]
    return tuple(
        corner.reshape(shape)
        for half in jax.lax.split(x, (1, 1), axis=row)
        for corner in jax.lax.split(half, (1, 1), axis=col)
    )


def _max_and_winner(x, axes):
    c00, c01, c10, c11 = _corners(x, axes)
    # Comparisons only (no equality test against a recomputed maximum): the winner
    # and the maximum come from the same selects, so they always agree. A NaN wins,
    # as in jnp.maximum and PyTorch, so that a NaN input is never pooled away.
    beats = lambda a, b: (a > b) | jnp.isnan(a)
    right_top = beats(c01, c00)
    right_bottom = beats(c11, c10)
    top = jnp.where(right_top, c01, c00)
    bottom = jnp.where(right_bottom, c11, c10)
    lower = beats(bottom, top)
    winner = jnp.where(lower, 2 + right_bottom.astype(jnp.uint8), right_top.astype(jnp.uint8))
    return jnp.where(lower, bottom, top), winner


@max_of_corners.defjvp
def _max_of_corners_jvp(axes, primals, tangents):
    (x,), (t,) = primals, tangents
    out, winner = _max_and_winner(x, axes)
    zero = jnp.zeros(out.shape, t.dtype)
    corners = _corners(t, axes)
    return out, sum(jnp.where(winner == k, c, zero) for k, c in enumerate(corners))


def batch_norm(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    *,
    example_mask: jax.Array | None = None,
    stats: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Batch norm over (N, H, W) with the batch's own statistics (transductive).

    Args:
      x: ``[N, H, W, C]``.
      scale, bias: ``[C]``.
      example_mask: optional ``[N]`` bools; masked-out examples do not enter the
        statistics.
      stats: optional ``(mean, var)`` to use instead of the batch statistics.
    """
    mean, var = _moments(x, example_mask) if stats is None else stats
    return (x - mean) * jax.lax.rsqrt(var + BN_EPS) * scale + bias


def apply(
    params: dict[str, Any],
    images: ArrayLike,
    *,
    conv: ConvImpl = "auto",
    example_mask: jax.Array | None = None,
    batch_stats: dict[str, tuple[jax.Array, jax.Array]] | None = None,
    running: bool = False,
    return_features: bool = False,
) -> jax.Array:
    """Logits of conv4 for a batch of images.

    Args:
      params: from :func:`init`.
      images: ``[N, H, W, C]`` float images.
      conv: convolution formulation (``"auto"``, ``"im2col"`` or ``"xla"``).
      example_mask: ``[N]`` bools excluding padding from batch-norm statistics.
      batch_stats: ``{"bn0": (mean, var), ...}`` fixed statistics to use instead of
        the batch's (non-transductive evaluation; see :func:`population_stats`).
      running: normalise with the running statistics held in ``params``
        (``init(running_stats=True)``), under ``stop_gradient``; each example is then
        classified on its own. Otherwise running statistics are ignored.
      return_features: return the ``[N, F]`` features before the head.

    Returns:
      ``[N, ways]`` logits (or features).
    """
    if running:
        if batch_stats is not None:
            raise ValueError("pass either batch_stats or running=True, not both.")
        if not has_running_stats(params):
            raise ValueError(
                "conv4.apply(running=True) needs params with running statistics "
                "(conv4.init(..., running_stats=True)); these have none."
            )
        batch_stats = {
            name: tuple(jax.lax.stop_gradient(layer[k]) for k in STATS_KEYS)
            for name, layer in params.items()
            if name.startswith("bn")
        }
    features, _ = _forward(params, images, conv, example_mask, batch_stats)
    if return_features:
        return features
    return features @ params["head"]["w"] + params["head"]["b"]


def _forward(params, images, conv, example_mask, batch_stats):
    """Features and the ``(mean, var)`` each batch-norm layer normalised with."""
    x = jnp.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"conv4 expects images [N, H, W, C]; got shape {x.shape}.")
    blocks = sum(1 for k in params if k.startswith("conv"))
    used = {}
    impl = resolve_conv(conv)
    for i in range(blocks):
        if impl in ("im2col_fused", "winograd_fused"):
            stats = None if batch_stats is None else batch_stats[f"bn{i}"]
            x, used[f"bn{i}"] = _fused_block(
                x,
                params[f"conv{i}"],
                params[f"bn{i}"],
                example_mask,
                stats,
                winograd=impl == "winograd_fused",
            )
            continue
        x = conv3x3(x, params[f"conv{i}"]["w"], params[f"conv{i}"]["b"], conv)
        if batch_stats is None:
            stats = _moments(x, example_mask)
        else:
            stats = batch_stats[f"bn{i}"]
        used[f"bn{i}"] = stats
        x = batch_norm(x, params[f"bn{i}"]["scale"], params[f"bn{i}"]["bias"], stats=stats)
        # relu(pool(x)) == pool(relu(x)) exactly (ReLU is monotone); pooling first
        # avoids max-pool ties between ReLU zeros and applies ReLU to 4x fewer values.
        x = jax.nn.relu(max_pool_2x2(x))
    return x.reshape(x.shape[0], -1), used


def _moments(x: jax.Array, example_mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    if example_mask is None:
        mean = jnp.mean(x, axis=(0, 1, 2))
        return mean, jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    m = example_mask.astype(x.dtype)[:, None, None, None]
    count = jnp.maximum(jnp.sum(m) * x.shape[1] * x.shape[2], 1.0)
    mean = jnp.sum(x * m, axis=(0, 1, 2)) / count
    return mean, jnp.sum(jnp.square(x - mean) * m, axis=(0, 1, 2)) / count


def population_stats(
    params: dict[str, Any], batches: ArrayLike, *, conv: ConvImpl = "auto"
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Population batch-norm statistics of ``params`` over many batches ("precise BN").

    Every batch is normalised with its own statistics, as in training; per layer,
    the population mean is the mean of the batch means and the population variance
    is the mean batch variance plus the variance of the batch means (the law of
    total variance). This is the non-transductive alternative to batch statistics:
    pass the result as ``apply(..., batch_stats=...)`` so each test example is
    classified on its own. Unlike an exponential moving average gathered during
    training, it is computed for the exact parameters it is used with (Wu & Johnson
    2021, "Rethinking 'batch' in BatchNorm").

    Args:
      params: from :func:`init`.
      batches: ``[B, N, H, W, C]`` images, ``B`` batches of ``N``.
      conv: convolution formulation.

    Returns:
      ``{"bn0": (mean, var), ...}``.
    """
    batches = jnp.asarray(batches)
    if batches.ndim != 5:
        raise ValueError(f"batches must be [B, N, H, W, C]; got shape {batches.shape}.")
    stats = jax.lax.map(lambda x: _forward(params, x, conv, None, None)[1], batches)
    return {
        name: (jnp.mean(mean, 0), jnp.mean(var, 0) + jnp.var(mean, 0))
        for name, (mean, var) in stats.items()
    }
