"""Analytic FLOP count of MAE pretraining, from the config alone.

Convention: one multiply-add = 2 FLOPs. Only matmuls are counted (the patch
embedding, every Linear/Einsum, and the two attention matmuls QK^T and AV);
norms, softmax, GELU and other elementwise work are ignored. Training = 3 x
forward (the backward pass costs twice the forward), the usual model-FLOPs
convention: remat recomputation is not counted, so MFU from these numbers is
model-FLOPs utilization.

For reference, ViT-B/16 at 224 on all 197 tokens is 35.1 GFLOPs here; the
usually quoted "17.6 GFLOPs" is the same work counted in multiply-adds
(fvcore's convention).

Shapes: L patches, K visible patches (the masking strategy's static count),
R the tokens the decoder predicts (L; dual masking: the running cell's
L (1 - decoder_ratio)), n_cls = 1 with model.cls_token, D / E encoder /
decoder width, M MLP width, P values per patch (prod(patch) x channels).
"""

from __future__ import annotations

import math

import ml_collections

from mae_jax import config as config_lib, masking
from mae_jax.models import local_attention, mae, vit


def block_flops(tokens: int, width: int, mlp_dim: int,
                attended: int | None = None) -> tuple[int, int]:
  """One pre-norm transformer block on `tokens` tokens of `width` ->
  (all FLOPs, the attention-matmul part of them).

  qkv 2*T*D*3D + out 2*T*D*D + MLP 2 * 2*T*D*M (linear in T), plus QK^T and
  AV: 2 * 2*T*S*D for S tokens attended per token (S = T, quadratic in T;
  local attention: S = the window's tokens); independent of the heads.
  """
  t, d = tokens, width
  linear = 2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * d * mlp_dim
  attention = 2 * 2 * t * (t if attended is None else attended) * d
  return linear + attention, attention


def _shapes(config: ml_collections.ConfigDict) -> dict:
  enc = vit.decode_variant(config.model.variant)
  dec = mae.decode_decoder(config.model.decoder)
  *spatial, channels = config_lib.input_shape(config)
  if len(spatial) != len(enc.patch) or any(
      s % p for s, p in zip(spatial, enc.patch)):
    raise ValueError(f'config.model.variant={config.model.variant!r}: patch '
                     f'{enc.patch} does not tile the input {tuple(spatial)}')
  grid = tuple(s // p for s, p in zip(spatial, enc.patch))
  length = math.prod(grid)
  strategy = masking.get(config.masking.name)
  return dict(enc=enc, dec=dec, length=length, grid=grid,
              kept=strategy.kept(grid, masking.options(config.masking)),
              predicted=strategy.num_decoded(grid,
                                             masking.options(config.masking)),
              sampler='sampler' in strategy.needs,
              n_cls=1 if config.model.cls_token else 0,
              patch_dim=math.prod(enc.patch) * channels)


def train_flops(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Per-example forward FLOPs by part, and `per_step` = 3 x forward x
  config.batch_size (gradient accumulation does not change it).

  patch_embed: on the K kept patches only (the model gathers, then embeds).
  encoder: its blocks on K (+1 cls) tokens.
  decoder: decoder_embed on K (+1) tokens, then its blocks on L (+1) tokens
    (dual masking: K + R (+1); local attention: L, each token attending to
    its window's).
  head: the pixel prediction on the L (+1) tokens (the cls row is dropped
    after; dual masking: on the R predicted tokens only).
  sampler: adaptive masking's network (patch embedding and one block on all
    L tokens, a linear layer), run twice (to sample, and for its loss).
  attention: the QK^T and AV part of encoder + decoder (already inside them).
  Also `encoder_tokens`, `decoder_tokens` (sequence lengths).
  """
  s = _shapes(config)
  if config.task == 'classify':
    return _classifier_flops(config, s)
  enc, dec, n_cls = s['enc'], s['dec'], s['n_cls']
  dual = s['predicted'] != s['length']
  t_enc = s['kept'] + n_cls
  t_dec = (s['kept'] + s['predicted'] if dual else s['length']) + n_cls
  window = None
  if config.model.decoder_attention == 'local':
    # Windows over the grid, without the cls token. (The position-bias MLP
    # runs once per step, not per example: not counted.)
    t_dec = s['length']
    window = math.prod(local_attention.window_and_shift(
        s['grid'], config.model.decoder_window, config.model.decoder_shift
    )[0])
  enc_block, enc_attn = block_flops(t_enc, enc.width, enc.mlp_dim)
  dec_block, dec_attn = block_flops(t_dec, dec.width, dec.mlp_dim, window)
  sampler = 0
  if s['sampler']:
    sampler = 2 * (2 * s['length'] * s['patch_dim'] * enc.width
                   + block_flops(s['length'], enc.width, 4 * enc.width)[0]
                   + 2 * s['length'] * enc.width)
  out = dict(
      patch_embed=2 * s['kept'] * s['patch_dim'] * enc.width,
      encoder=enc.depth * enc_block,
      decoder=2 * t_enc * enc.width * dec.width + dec.depth * dec_block,
      head=2 * (s['predicted'] if dual else t_dec) * dec.width * s['patch_dim'],
      sampler=sampler,
      attention=enc.depth * enc_attn + dec.depth * dec_attn,
  )
  out['forward'] = (out['patch_embed'] + out['encoder'] + out['decoder']
                    + out['head'] + out['sampler'])
  out['per_step'] = 3 * out['forward'] * config.batch_size
  out['encoder_tokens'], out['decoder_tokens'] = t_enc, t_dec
  return out


def _classifier_flops(config: ml_collections.ConfigDict, s: dict) -> dict:
  """Fine-tuning (task='classify'): patch embedding and encoder on all L
  (+1) tokens, the linear head on the pooled feature; no decoder."""
  enc, t = s['enc'], s['length'] + s['n_cls']
  block, attn = block_flops(t, enc.width, enc.mlp_dim)
  out = dict(patch_embed=2 * s['length'] * s['patch_dim'] * enc.width,
             encoder=enc.depth * block, decoder=0,
             head=2 * enc.width * config.classify.num_classes, sampler=0,
             attention=enc.depth * attn)
  out['forward'] = out['patch_embed'] + out['encoder'] + out['head']
  out['per_step'] = 3 * out['forward'] * config.batch_size
  out['encoder_tokens'], out['decoder_tokens'] = t, 0
  return out


def encoder_full_sequence_flops(config: ml_collections.ConfigDict) -> int:
  """Forward FLOPs per example of patch embedding + encoder on ALL L (+1 cls)
  tokens: what a ViT classifier (or an MAE encoder without masking) costs.

  At mask 0.75 the visible-only encoder is about 1/4 of this (exactly
  (K+1)/(L+1) for the linear part; the attention part shrinks quadratically).
  """
  s = _shapes(config)
  enc = s['enc']
  block, _ = block_flops(s['length'] + s['n_cls'], enc.width, enc.mlp_dim)
  return 2 * s['length'] * s['patch_dim'] * enc.width + enc.depth * block


def _counted_blocks(config: ml_collections.ConfigDict, depth: int) -> int:
  """Blocks of a scanned stack that XLA's cost analysis sees."""
  unroll = config.model.scan_unroll
  return depth if unroll >= depth else unroll + depth % unroll


def xla_counted_flops(config: ml_collections.ConfigDict) -> int:
  """Per-step FLOPs, summed over devices, as XLA's cost analysis counts them.

  XLA counts the body of every while loop once, whatever its trip count, so
  a scanned block stack (lax.scan over `depth` blocks, `scan_unroll` per
  iteration, the depth % scan_unroll left over unrolled outside the loop)
  contributes min(scan_unroll, depth) + remainder blocks forward and backward,
  and the gradient-accumulation loop one micro-batch. XLA does count remat
  recomputation: with model.remat 'full' (and, approximately, 'names') the
  backward pass reruns a block's forward up to its last matmul (fc2's output
  is not needed for any gradient); 'dots' keeps matmul outputs.
  Comparing this with compiled.cost_analysis()['flops'] x devices checks that
  the compiled program does the expected work (no redundant or missing
  compute); the remaining gap is elementwise work that XLA counts and we don't.
  """
  f = train_flops(config)
  s = _shapes(config)
  enc, dec = s['enc'], s['dec']
  decoder_embed = 2 * f['encoder_tokens'] * enc.width * dec.width
  outside = f['patch_embed'] + decoder_embed + f['head'] + f['sampler']
  n_enc, n_dec = (_counted_blocks(config, enc.depth),
                  _counted_blocks(config, dec.depth))
  blocks = (f['encoder'] * n_enc // enc.depth
            + (f['decoder'] - decoder_embed) * n_dec // dec.depth)
  recompute = 0
  if config.model.remat in ('full', 'names'):
    fc2 = (n_enc * 2 * f['encoder_tokens'] * enc.mlp_dim * enc.width
           + n_dec * 2 * f['decoder_tokens'] * dec.mlp_dim * dec.width)
    recompute = blocks - fc2
  micro_batch = config.batch_size // config.grad_accum_steps
  return (3 * (outside + blocks) + recompute) * micro_batch
