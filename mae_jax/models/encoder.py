"""The ViT encoder half that pretraining and fine-tuning share: patch
embedding, position embedding, optional cls token, the block stack and its
final norm.

`Encoder` is a base class, not a submodule: its parameters are attributes of
the model itself (`patch_embed`, `pos_embed`, `cls_token`, `encoder`,
`encoder_norm`), so a classifier's parameters have the same paths as the
pretrained MAE's and `config.init_from` copies them by name.

Shapes: B batch, L patches, K kept patches, P values per patch, D width.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mae_jax.models import position, tokenizers
from mae_jax.models.vit import (BlockStack, ViTSize, dense, layer_norm,
                                param_init)
from mae_jax.sharding import constrain


class Encoder(nnx.Module):

  def init_encoder(self, size: ViTSize, *, input_size: Sequence[int],
                   channels: int, pos_embed: str, cls_token: bool,
                   final_norm: bool, trainable_pos_embed: bool = False,
                   stack: dict, rngs: nnx.Rngs) -> None:
    """stack: the BlockStack options (dtype, attention, remat, ...).
    trainable_pos_embed: a fixed kind becomes a parameter initialized to its
    table (MAE fine-tuning trains the position embedding)."""
    self.patch = size.patch
    self.grid = tokenizers.grid_shape(tuple(input_size), self.patch)
    self.channels = channels
    patch_dim = math.prod(self.patch) * channels
    # A Linear on flattened patches == a stride-p convolution.
    self.patch_embed = dense(patch_dim, size.width, ('patch', 'embed'),
                             dtype=stack['dtype'], rngs=rngs)
    self.pos_embed = (position.trainable(pos_embed, self.grid, size.width,
                                         rngs=rngs)
                      if trainable_pos_embed else
                      position.build(pos_embed, self.grid, size.width,
                                     rngs=rngs))
    token_init = param_init(nnx.initializers.normal(0.02), (None, None, 'norm'))
    self.cls_token = (nnx.Param(token_init(rngs.params(), (1, 1, size.width)))
                      if cls_token else None)
    self.encoder = BlockStack(size.depth, size.width, size.mlp_dim,
                              size.num_heads, **stack, rngs=rngs)
    self.encoder_norm = (layer_norm(size.width, dtype=stack['dtype'],
                                    rngs=rngs) if final_norm else None)

  @property
  def num_patches(self) -> int:
    return math.prod(self.grid)

  def patchify(self, x: jax.Array) -> jax.Array:
    """[B, *S, C] -> [B, L, P]."""
    return tokenizers.patchify(x, self.patch)

  def unpatchify(self, tokens: jax.Array) -> jax.Array:
    """[B, L, P] -> [B, *S, C]."""
    return tokenizers.unpatchify(tokens, self.grid, self.patch, self.channels)

  def encode(self, patches: jax.Array, ids_keep: jax.Array | None = None,
             drop_path_rate: float = 0.0, rng: jax.Array | None = None
             ) -> jax.Array:
    """patches: [B, L, P], ids_keep: [B, K] (None = all) -> [B, (1+)K, D]
    (after the final norm, if the model has one).

    Only the kept patches are embedded and encoded: at mask 0.75 the encoder
    does about a quarter of the full-sequence work (MAE, Sec. 3).
    drop_path_rate, rng: stochastic depth (fine-tuning).
    """
    b = patches.shape[0]
    pos = self.pos_embed()  # [L, D]
    if ids_keep is not None:
      patches = tokenizers.gather_tokens(patches, ids_keep)
      pos = jnp.take(pos, ids_keep, axis=0)  # [B, K, D]
    x = self.patch_embed(patches)
    x = x + pos.astype(x.dtype)
    if self.cls_token is not None:  # zero position embedding, except MAE-ST's
      cls = self.cls_token[...] + self.pos_embed.cls()
      cls = jnp.broadcast_to(cls, (b, 1, x.shape[-1]))
      x = jnp.concatenate([cls.astype(x.dtype), x], axis=1)
    x = constrain(x, ('batch', 'length', 'act_embed'))
    x = self.encoder(x, drop_path_rate, rng)
    return self.encoder_norm(x) if self.encoder_norm is not None else x
