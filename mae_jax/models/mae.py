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

from mae_jax import config as config_lib
from mae_jax import masking, targets
from mae_jax.models import local_attention, position, tokenizers
from mae_jax.models.encoder import Encoder
from mae_jax.models.vit import (Block, BlockStack, decode_variant, dense,
                                layer_norm, param_init)
from mae_jax.sharding import constrain


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
  width: int
  depth: int
  num_heads: int
  mlp_dim: int


def decode_decoder(spec: str) -> DecoderSpec:
  """"512d8b" -> 512 wide, 8 blocks (MAE's default); "512d8b16h" sets heads,
  "512d4b8h2234m" also the MLP width (VideoMAE V2's ViT-g decoder).

  Heads default to width / 32 (MAE's 512-wide decoder has 16); MLP 4 x width.
  """
  m = re.fullmatch(r'(\d+)d(\d+)b(?:(\d+)h)?(?:(\d+)m)?', spec)
  if not m:
    raise ValueError(f'model.decoder={spec!r}: expected "<width>d<blocks>b" '
                     'with optional "<heads>h" and "<mlp width>m", e.g. '
                     '"512d8b", "512d8b16h" or "512d4b8h2234m"')
  width, depth = int(m[1]), int(m[2])
  heads = int(m[3]) if m[3] else max(1, width // 32)
  mlp = int(m[4]) if m[4] else 4 * width
  if width % heads or width < 1 or depth < 1 or mlp < 1:
    raise ValueError(f'model.decoder={spec!r}: width {width} must be positive '
                     f'and divisible by {heads} heads, blocks and MLP width '
                     '>= 1')
  return DecoderSpec(width, depth, heads, mlp)


DECODER_ATTENTION = ('global', 'local')


def check_decoder_attention(attention: str, window: Sequence[int],
                            shift: Sequence[int], grid: Sequence[int],
                            strategy: masking.Strategy) -> None:
  """ValueError naming the model.decoder_* key (or the masking) that a
  decoder of `attention` cannot use on this grid and masking."""
  if attention not in DECODER_ATTENTION:
    raise ValueError(f'model.decoder_attention={attention!r}: allowed '
                     f'{DECODER_ATTENTION}')
  if attention != 'local':
    return
  if len(grid) != 2:
    raise ValueError(
        "model.decoder_attention='local' (AudioMAE's windowed decoder) needs "
        f'a 2-D token grid (images, spectrograms); this input has the '
        f'{len(grid)}-D grid {tuple(grid)}')
  if strategy.decoded is not None:
    raise ValueError(
        "model.decoder_attention='local' needs every token in the decoder "
        f'(windows over the whole grid), but masking.name={strategy.name!r} '
        'decodes a subset; use another masking or decoder_attention='
        "'global'")
  local_attention.window_and_shift(grid, window, shift)


class TokenSampler(nnx.Module):
  """AdaMAE's sampling network (Bandara et al. 2023): patch embeddings plus
  its own learned position table, one transformer block and a linear layer
  -> one logit per token. embedded: [B, L, D] -> logits [B, L]."""

  def __init__(self, length: int, width: int, num_heads: int, *, dtype,
               attention, rngs: nnx.Rngs):
    init = param_init(nnx.initializers.zeros_init(), (None, 'norm'))
    self.pos = nnx.Param(init(rngs.params(), (length, width)))
    self.block = Block(width, 4 * width, num_heads, dtype=dtype,
                       attention=attention, rngs=rngs)
    self.head = dense(width, 1, ('embed', None), dtype=dtype, rngs=rngs)

  def __call__(self, embedded: jax.Array) -> jax.Array:
    x = embedded + self.pos[...].astype(embedded.dtype)
    return self.head(self.block(x))[..., 0].astype(jnp.float32)


class MAE(Encoder):
  """Encoder (models/encoder.py) + decoder. Inputs are [B, *S, C] (S: the
  axes the patches tile: (H, W) for images, (T, H, W) for clips)."""

  def __init__(self, *, input_size: Sequence[int], channels: int, variant: str,
               decoder: str, mask_ratio: float, masking_name: str = 'random',
               masking_options: masking.Options | None = None,
               pos_embed: str = 'sincos',
               cls_token: bool = True, dtype=jnp.float32,
               attention: str | None = None, remat: str = 'none',
               remat_names: Sequence[str] = (), scan_unroll: int = 1,
               decoder_attention: str = 'global',
               decoder_window: Sequence[int] = (4, 4),
               decoder_shift: Sequence[int] = (2, 0), rngs: nnx.Rngs):
    """decoder_attention: 'global' (ViT blocks over all tokens) or 'local'
    (AudioMAE: local_attention.LocalBlockStack over decoder_window windows
    of the 2-D grid, every second block shifted by decoder_shift; the cls
    token does not enter it)."""
    enc, dec = decode_variant(variant), decode_decoder(decoder)
    stack = dict(dtype=dtype, attention=attention, remat=remat,
                 remat_names=remat_names, scan_unroll=scan_unroll)
    self.init_encoder(enc, input_size=input_size, channels=channels,
                      pos_embed=pos_embed, cls_token=cls_token,
                      final_norm=True, stack=stack, rngs=rngs)
    self.masking_name = masking_name
    self.mask_options = masking_options or masking.Options(ratio=mask_ratio)
    strategy = masking.get(masking_name)
    strategy.check(self.grid, self.mask_options)
    check_decoder_attention(decoder_attention, decoder_window, decoder_shift,
                            self.grid, strategy)
    self.decoder_attention = decoder_attention
    patch_dim = math.prod(self.patch) * channels
    # Only strategies that declare a sampler get one (and its parameters).
    self.sampler = (TokenSampler(self.num_patches, enc.width, enc.num_heads,
                                 dtype=dtype, attention=attention, rngs=rngs)
                    if 'sampler' in strategy.needs else None)

    # Decoder.
    self.decoder_embed = dense(enc.width, dec.width, ('embed_in', 'embed'),
                               dtype=dtype, rngs=rngs)
    self.decoder_pos_embed = position.build(pos_embed, self.grid, dec.width,
                                            rngs=rngs)
    token_init = param_init(nnx.initializers.normal(0.02), (None, None, 'norm'))
    self.mask_token = nnx.Param(token_init(rngs.params(), (1, 1, dec.width)))
    if decoder_attention == 'local':
      self.decoder = local_attention.LocalBlockStack(
          dec.depth, dec.width, dec.mlp_dim, dec.num_heads, grid=self.grid,
          window=decoder_window, shift=decoder_shift, dtype=dtype,
          remat=remat, remat_names=remat_names, scan_unroll=scan_unroll,
          rngs=rngs)
    else:
      self.decoder = BlockStack(dec.depth, dec.width, dec.mlp_dim,
                                dec.num_heads, **stack, rngs=rngs)
    self.decoder_norm = layer_norm(dec.width, dtype=dtype, rngs=rngs)
    self.decoder_pred = dense(dec.width, patch_dim, ('embed', 'patch'),
                              dtype=dtype, rngs=rngs)

  @property
  def mask_ratio(self) -> float:
    return self.mask_options.ratio

  @property
  def strategy(self) -> masking.Strategy:
    return masking.get(self.masking_name)

  def sampler_logits(self, patches: jax.Array) -> jax.Array:
    """[B, L, P] -> [B, L]: the adaptive strategy's token logits."""
    return self.sampler(self.patch_embed(patches))

  def sample_mask(self, rng: jax.Array, x: jax.Array) -> masking.Mask:
    """x: [B, *S, C] -> the configured strategy's Mask, given what it needs."""
    strategy = self.strategy
    inputs = {}
    if strategy.needs:
      patches = jax.lax.stop_gradient(self.patchify(x))
      if 'patches' in strategy.needs:
        inputs['patches'] = patches
      if 'sampler' in strategy.needs:
        inputs['logits'] = jax.lax.stop_gradient(self.sampler_logits(patches))
    return strategy.sample(rng, x.shape[0], self.grid, self.mask_options,
                           **inputs)

  def decode(self, latent: jax.Array, mask: masking.Mask) -> jax.Array:
    """latent: [B, (1+)K, D] -> prediction [B, M, P] for the tokens of
    mask.decode_ids, or [B, L, P] for every token when it is None."""
    x = self.decoder_embed(latent)  # [B, (1+)K, E]
    n_cls = 1 if self.cls_token is not None else 0
    b, length = mask.ids_restore.shape
    e = x.shape[-1]
    pos = self.decoder_pos_embed().astype(x.dtype)  # [L, E]
    cls = x[:, :n_cls] + self.decoder_pos_embed.cls().astype(x.dtype)
    visible = x[:, n_cls:]
    if mask.decode_ids is None:
      masked = jnp.broadcast_to(self.mask_token[...].astype(x.dtype),
                                (b, length - visible.shape[1], e))
      # Put every token back at its original position.
      x_ = tokenizers.gather_tokens(jnp.concatenate([visible, masked], axis=1),
                                    mask.ids_restore) + pos
    else:
      # Dual masking: visible tokens, then mask tokens at decode_ids only (the
      # order does not matter to attention; positions come from `pos`).
      m = mask.decode_ids.shape[1]
      masked = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (b, m, e))
      x_ = jnp.concatenate([visible + jnp.take(pos, mask.ids_keep, axis=0),
                            masked + jnp.take(pos, mask.decode_ids, axis=0)], 1)
    if self.decoder_attention == 'local':
      # Windows tile the grid: the cls token stays out (AudioMAE drops it),
      # and every token is predicted in position order.
      x = constrain(x_, ('batch', 'length', 'act_embed'))
      x = self.decoder_norm(self.decoder(x))
      return self.decoder_pred(x).astype(jnp.float32)
    x = jnp.concatenate([cls, x_], axis=1)
    x = constrain(x, ('batch', 'length', 'act_embed'))
    x = self.decoder_norm(self.decoder(x))
    if mask.decode_ids is not None:
      return self.decoder_pred(x[:, -mask.decode_ids.shape[1]:]
                               ).astype(jnp.float32)
    return self.decoder_pred(x)[:, n_cls:].astype(jnp.float32)

  def __call__(self, x: jax.Array, mask: masking.Mask
               ) -> tuple[jax.Array, jax.Array]:
    """x: [B, *S, C], mask from sample_mask -> (prediction [B, M, P] (see
    decode), patches [B, L, P])."""
    patches = self.patchify(x)
    latent = self.encode(patches, mask.ids_keep)
    return self.decode(latent, mask), patches


def model_kwargs(config: ml_collections.ConfigDict) -> dict:
  """MAE constructor arguments from the top-level config."""
  m = config.model
  return dict(
      input_size=config_lib.spatial_shape(config), channels=m.channels,
      variant=m.variant, decoder=m.decoder, mask_ratio=config.masking.ratio,
      masking_name=config.masking.name,
      masking_options=masking.options(config.masking),
      pos_embed=m.pos_embed, cls_token=m.cls_token,
      dtype=jnp.dtype(m.dtype), attention=m.attention or None,
      remat=m.remat, remat_names=tuple(m.remat_names),
      scan_unroll=m.scan_unroll, decoder_attention=m.decoder_attention,
      decoder_window=tuple(m.decoder_window),
      decoder_shift=tuple(m.decoder_shift))


def build(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> MAE:
  return MAE(**model_kwargs(config), rngs=rngs)


def reconstruct(model: MAE, x: jax.Array, rng: jax.Array, target: str
                ) -> tuple[jax.Array, jax.Array]:
  """x: [B, *S, C] -> (reconstruction [B, *S, C], mask [B, *S, 1]).

  The reconstruction shows the prediction on masked patches and the input on
  visible ones (as MAE's figures do), in the input's (normalized) pixel space;
  mask is 1 on masked pixels.
  """
  # Every masked token is predicted, also where dual masking's decoder
  # trains on a subset.
  mask = model.sample_mask(rng, x).replace(decode_ids=None)
  pred, patches = model(x, mask)
  m = mask.mask[..., None]  # [B, L, 1]
  tokens = (targets.to_pixels(target, pred, patches, model.channels) * m
            + patches * (1 - m))
  mask_tokens = jnp.broadcast_to(m, (*m.shape[:2], math.prod(model.patch)))
  return (model.unpatchify(tokens),
          tokenizers.unpatchify(mask_tokens, model.grid, model.patch, 1))
