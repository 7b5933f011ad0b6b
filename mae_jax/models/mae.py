"""The masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision
Learners", 2022): a ViT encoder that sees only the visible patches, and a light
decoder that fills in mask tokens and predicts the pixels of every patch.

Shapes: B batch, L patches, K visible patches, P values per patch,
D encoder width, E decoder width.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mae_jax import masking, targets
from mae_jax.models import tokenizers
from mae_jax.models.vit import (BlockStack, decode_variant, dense, layer_norm,
                                param_init)
from mae_jax.sharding import constrain


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
  width: int
  depth: int
  num_heads: int
  mlp_dim: int


def decode_decoder(spec: str) -> DecoderSpec:
  """"512d8b" -> 512 wide, 8 blocks (MAE's default); "512d8b16h" sets heads.

  Heads default to width / 32 (MAE's 512-wide decoder has 16); MLP ratio 4.
  """
  m = re.fullmatch(r'(\d+)d(\d+)b(?:(\d+)h)?', spec)
  if not m:
    raise ValueError(f'model.decoder={spec!r}: expected "<width>d<blocks>b" '
                     'with optional "<heads>h", e.g. "512d8b" or "512d8b16h"')
  width, depth = int(m[1]), int(m[2])
  heads = int(m[3]) if m[3] else max(1, width // 32)
  if width % heads or width < 1 or depth < 1:
    raise ValueError(f'model.decoder={spec!r}: width {width} must be positive '
                     f'and divisible by {heads} heads, blocks >= 1')
  return DecoderSpec(width, depth, heads, 4 * width)


class MAE(nnx.Module):
  """Encoder + decoder. Inputs are [B, *S, C] (S: spatial axes, e.g. H, W)."""

  def __init__(self, *, input_size: Sequence[int], channels: int, variant: str,
               decoder: str, mask_ratio: float, masking_name: str = 'random',
               cls_token: bool = True, dtype=jnp.float32,
               attention: str | None = None, remat: str = 'none',
               remat_names: Sequence[str] = (), scan_unroll: int = 1,
               rngs: nnx.Rngs):
    enc, dec = decode_variant(variant), decode_decoder(decoder)
    self.patch = enc.patch
    self.grid = tokenizers.grid_shape(tuple(input_size), self.patch)
    self.channels = channels
    self.mask_ratio, self.masking_name = mask_ratio, masking_name
    patch_dim = math.prod(self.patch) * channels
    stack = dict(dtype=dtype, attention=attention, remat=remat,
                 remat_names=remat_names, scan_unroll=scan_unroll, rngs=rngs)

    # Encoder. A Linear on flattened patches == a stride-p convolution.
    self.patch_embed = dense(patch_dim, enc.width, ('patch', 'embed'),
                             dtype=dtype, rngs=rngs)
    token_init = param_init(nnx.initializers.normal(0.02), (None, None, 'norm'))
    self.cls_token = (nnx.Param(token_init(rngs.params(), (1, 1, enc.width)))
                      if cls_token else None)
    self.encoder = BlockStack(enc.depth, enc.width, enc.mlp_dim, enc.num_heads,
                              **stack)
    self.encoder_norm = layer_norm(enc.width, dtype=dtype, rngs=rngs)

    # Decoder.
    self.decoder_embed = dense(enc.width, dec.width, ('embed_in', 'embed'),
                               dtype=dtype, rngs=rngs)
    self.mask_token = nnx.Param(token_init(rngs.params(), (1, 1, dec.width)))
    self.decoder = BlockStack(dec.depth, dec.width, dec.mlp_dim, dec.num_heads,
                              **stack)
    self.decoder_norm = layer_norm(dec.width, dtype=dtype, rngs=rngs)
    self.decoder_pred = dense(dec.width, patch_dim, ('embed', 'patch'),
                              dtype=dtype, rngs=rngs)

  @property
  def num_patches(self) -> int:
    return math.prod(self.grid)

  def patchify(self, x: jax.Array) -> jax.Array:
    """[B, *S, C] -> [B, L, P]."""
    return tokenizers.patchify(x, self.patch)

  def unpatchify(self, tokens: jax.Array) -> jax.Array:
    """[B, L, P] -> [B, *S, C]."""
    return tokenizers.unpatchify(tokens, self.grid, self.patch, self.channels)

  def sample_mask(self, rng: jax.Array, batch_size: int) -> masking.Mask:
    return masking.get(self.masking_name)(rng, batch_size, self.grid,
                                          self.mask_ratio)

  def encode(self, patches: jax.Array, ids_keep: jax.Array | None = None
             ) -> jax.Array:
    """patches: [B, L, P], ids_keep: [B, K] (None = all) -> [B, (1+)K, D].

    Only the kept patches are embedded and encoded: at mask 0.75 the encoder
    does about a quarter of the full-sequence work (MAE, Sec. 3).
    """
    b = patches.shape[0]
    pos = jnp.asarray(tokenizers.sincos_pos_embed(
        self.grid, self.patch_embed.out_features))  # [L, D]
    if ids_keep is not None:
      patches = tokenizers.gather_tokens(patches, ids_keep)
      pos = jnp.take(pos, ids_keep, axis=0)  # [B, K, D]
    x = self.patch_embed(patches)
    x = x + pos.astype(x.dtype)
    if self.cls_token is not None:  # its position embedding is zero, as in MAE
      cls = jnp.broadcast_to(self.cls_token[...], (b, 1, x.shape[-1]))
      x = jnp.concatenate([cls.astype(x.dtype), x], axis=1)
    x = constrain(x, ('batch', 'length', 'act_embed'))
    return self.encoder_norm(self.encoder(x))

  def decode(self, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
    """latent: [B, (1+)K, D], ids_restore: [B, L] -> prediction [B, L, P]."""
    x = self.decoder_embed(latent)  # [B, (1+)K, E]
    n_cls = 1 if self.cls_token is not None else 0
    b, length = ids_restore.shape
    visible = x[:, n_cls:]
    masked = jnp.broadcast_to(self.mask_token[...].astype(x.dtype),
                              (b, length - visible.shape[1], x.shape[-1]))
    # Put every token back at its original position.
    x_ = tokenizers.gather_tokens(jnp.concatenate([visible, masked], axis=1),
                                  ids_restore)
    pos = tokenizers.sincos_pos_embed(self.grid, x.shape[-1])
    x_ = x_ + jnp.asarray(pos, x_.dtype)
    x = jnp.concatenate([x[:, :n_cls], x_], axis=1)
    x = constrain(x, ('batch', 'length', 'act_embed'))
    x = self.decoder_norm(self.decoder(x))
    return self.decoder_pred(x)[:, n_cls:].astype(jnp.float32)

  def __call__(self, x: jax.Array, mask: masking.Mask
               ) -> tuple[jax.Array, jax.Array]:
    """x: [B, *S, C], mask from sample_mask -> (prediction [B, L, P],
    patches [B, L, P])."""
    patches = self.patchify(x)
    latent = self.encode(patches, mask.ids_keep)
    return self.decode(latent, mask.ids_restore), patches


def model_kwargs(config: ml_collections.ConfigDict) -> dict:
  """MAE constructor arguments from the top-level config."""
  m = config.model
  size = m.image_size
  input_size = (size, size) if isinstance(size, int) else tuple(size)
  return dict(
      input_size=input_size, channels=m.channels, variant=m.variant,
      decoder=m.decoder, mask_ratio=config.masking.ratio,
      masking_name=config.masking.name, cls_token=m.cls_token,
      dtype=jnp.dtype(m.dtype), attention=m.attention or None,
      remat=m.remat, remat_names=tuple(m.remat_names),
      scan_unroll=m.scan_unroll)


def build(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> MAE:
  return MAE(**model_kwargs(config), rngs=rngs)


def reconstruct(model: MAE, x: jax.Array, rng: jax.Array, target: str
                ) -> tuple[jax.Array, jax.Array]:
  """x: [B, *S, C] -> (reconstruction [B, *S, C], mask [B, *S, 1]).

  The reconstruction shows the prediction on masked patches and the input on
  visible ones (as MAE's figures do), in the input's (normalized) pixel space;
  mask is 1 on masked pixels.
  """
  mask = model.sample_mask(rng, x.shape[0])
  pred, patches = model(x, mask)
  m = mask.mask[..., None]  # [B, L, 1]
  tokens = targets.to_pixels(target, pred, patches) * m + patches * (1 - m)
  mask_tokens = jnp.broadcast_to(m, (*m.shape[:2], math.prod(model.patch)))
  return (model.unpatchify(tokens),
          tokenizers.unpatchify(mask_tokens, model.grid, model.patch, 1))
