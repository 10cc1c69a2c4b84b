"""A small transformer encoder (Flax linen), used through pure parameter pytrees.

Pre-LayerNorm encoder blocks (self-attention + GELU MLP, each residual) over
learned token and position embeddings, with two heads:

* ``mlm``: per-position logits over the vocabulary (masked-token prediction);
* ``features``: the mean of the final hidden states over non-padding positions
  (``[B, width]``), and ``classify``: a linear ``cls_head`` on those features
  (zero-initialised, so every class starts equally likely).

Token id ``pad_id`` (0 by the convention of :mod:`metajax.data.text`) is padding:
it is never attended to and never pooled.

Parameters are a plain pytree ``{"params": {"embed", "pos_embed", "block_0", ...,
"final_norm", "mlm_head", "cls_head"}}``; optional bottleneck adapters
(``adapter_rank > 0``, Houlsby et al. 2019) live inside each block under
``adapter_down``/``adapter_up`` with a zero-initialised up-projection, so a model
with adapters starts as the same function as one without. :func:`adapt_subset`
builds the inner loop's parameter mask (:func:`metajax.inner.adapt_mask`) for the
usual parameter-efficient choices.

Example:
  >>> model = TransformerEncoder(vocab_size=4000, num_classes=5)
  >>> params = model.init(jax.random.key(0), jnp.zeros((2, 32), jnp.int32))
  >>> logits = model.apply(params, tokens, method=model.mlm)  # [B, T, vocab]
  >>> feats = model.apply(params, tokens, method=model.features)  # [B, width]

Reference: Vaswani et al., "Attention Is All You Need", 2017; Devlin et al.,
"BERT", 2019 (masked-LM head); Houlsby et al., "Parameter-Efficient Transfer
Learning for NLP", ICML 2019 (adapters).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PAD_ID = 0


class EncoderBlock(nn.Module):
    """Pre-LN self-attention and MLP, each with a residual connection."""

    width: int
    heads: int
    mlp_dim: int
    adapter_rank: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        h = nn.LayerNorm(name="attn_norm")(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.heads, qkv_features=self.width, name="attn"
        )(h, h, mask=mask)
        x = x + h
        h = nn.LayerNorm(name="mlp_norm")(x)
        h = nn.Dense(self.mlp_dim, name="mlp_in")(h)
        h = nn.Dense(self.width, name="mlp_out")(nn.gelu(h))
        x = x + h
        if self.adapter_rank:
            a = nn.Dense(self.adapter_rank, name="adapter_down")(x)
            a = nn.Dense(self.width, kernel_init=nn.initializers.zeros, name="adapter_up")(
                nn.gelu(a)
            )
            x = x + a
        return x


class TransformerEncoder(nn.Module):
    """Token encoder with a masked-LM head and a pooled classification head.

    Attributes:
      vocab_size: number of token ids (including the special ones).
      num_classes: outputs of ``cls_head`` (the "ways" of an episode).
      width: model width.
      depth: number of encoder blocks.
      heads: attention heads.
      mlp_dim: hidden width of each block's MLP.
      max_len: longest sequence (size of the learned position table).
      adapter_rank: bottleneck width of per-block adapters (0: none).
      pad_id: the padding token id.
    """

    vocab_size: int
    num_classes: int = 5
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 256
    max_len: int = 64
    adapter_rank: int = 0
    pad_id: int = PAD_ID

    def setup(self):
        self.embed = nn.Embed(
            self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02)
        )
        self.pos_embed = self.param(
            "pos_embed", nn.initializers.normal(0.02), (self.max_len, self.width)
        )
        self.blocks = [
            EncoderBlock(self.width, self.heads, self.mlp_dim, self.adapter_rank, name=f"block_{i}")
            for i in range(self.depth)
        ]
        self.final_norm = nn.LayerNorm()
        self.mlm_head = nn.Dense(self.vocab_size)
        self.cls_head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros)

    def encode(self, tokens: jax.Array) -> jax.Array:
        """``[B, T]`` token ids -> ``[B, T, width]`` final hidden states."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length]; got shape {tokens.shape}.")
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len {self.max_len}.")
        valid = tokens != self.pad_id
        x = self.embed(tokens) + self.pos_embed[None, : tokens.shape[1]]
        mask = nn.make_attention_mask(valid, valid)
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x)

    def mlm(self, tokens: jax.Array) -> jax.Array:
        """Masked-LM logits ``[B, T, vocab_size]``."""
        return self.mlm_head(self.encode(tokens))

    def features(self, tokens: jax.Array) -> jax.Array:
        """Mean of the final hidden states over non-padding positions, ``[B, width]``."""
        hidden = self.encode(tokens)
        valid = (tokens != self.pad_id).astype(hidden.dtype)[..., None]
        return jnp.sum(hidden * valid, 1) / jnp.maximum(jnp.sum(valid, 1), 1.0)

    def classify(self, tokens: jax.Array) -> jax.Array:
        """Class logits ``[B, num_classes]`` from the pooled features."""
        return self.cls_head(self.features(tokens))

    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Both heads (``init`` goes through here, so every parameter is created)."""
        hidden = self.encode(tokens)
        valid = (tokens != self.pad_id).astype(hidden.dtype)[..., None]
        pooled = jnp.sum(hidden * valid, 1) / jnp.maximum(jnp.sum(valid, 1), 1.0)
        return self.mlm_head(hidden), self.cls_head(pooled)


HEADS = ("mlm_head", "cls_head")


def adapt_subset(name: str, depth: int):
    """A parameter mask function for :func:`metajax.inner.adapt_mask`.

    Args:
      name: ``"heads"`` (``mlm_head`` and ``cls_head``), ``"last"`` (the last
        block, the final norm and the heads), ``"adapters"`` (every block's
        adapters and the heads; needs ``adapter_rank > 0``) or ``"all"``.
      depth: number of blocks of the model.

    Returns:
      ``params -> mask`` (or ``None`` for ``"all"``).
    """
    keys = {
        "heads": set(HEADS),
        "last": {*HEADS, f"block_{depth - 1}", "final_norm"},
        "adapters": {*HEADS, "adapter_down", "adapter_up"},
    }
    if name == "all":
        return None
    if name not in keys:
        raise ValueError(f"adapt subset must be one of {sorted([*keys, 'all'])}, got {name!r}.")
    wanted = keys[name]

    def mask_fn(params: Any):
        def leaf(path, _):
            names = {getattr(p, "key", None) for p in path}
            return bool(names & wanted)

        mask = jax.tree_util.tree_map_with_path(leaf, params)
        if name == "adapters" and not any(
            {getattr(p, "key", None) for p in path} & {"adapter_down", "adapter_up"}
            for path, _ in jax.tree_util.tree_leaves_with_path(params)
        ):
            raise ValueError("adapt='adapters' needs a model built with adapter_rank > 0.")
        return mask

    return mask_fn


__all__ = ["PAD_ID", "TransformerEncoder", "adapt_subset"]
