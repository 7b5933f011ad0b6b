"""VideoMAE pretraining checkpoints -> mae_jax (format 'videomae').

Reads the state dict of the official pretraining models, VideoMAE (Tong et
al. 2022, MCG-NJU/VideoMAE, modeling_pretrain.py) and VideoMAE V2 (Wang et
al. 2023, OpenGVLab/VideoMAEv2, models/modeling_pretrain.py), which share
one key layout:

  encoder.patch_embed.proj.{weight [D, C, t, p, p], bias}   Conv3d tubelets
  encoder.blocks.<i>.norm1 / norm2.{weight, bias}           LayerNorm eps 1e-6
  encoder.blocks.<i>.attn.qkv.weight [3D, D]                no bias ...
  encoder.blocks.<i>.attn.q_bias, .v_bias [D]               ... but q and v's
  encoder.blocks.<i>.attn.proj.{weight, bias}
  encoder.blocks.<i>.mlp.fc1 / fc2.{weight, bias}           exact GELU
  encoder.norm.{weight, bias}
  encoder_to_decoder.weight [E, D]                          no bias
  mask_token [1, 1, E]
  decoder.blocks.<j>....                                    as the encoder's
  decoder.norm.{weight, bias}, decoder.head.{weight [P, E], bias}

The position embeddings are VideoMAE's fixed 1-D sinusoid table over the
flat (t, h, w) token index (mae_jax's pos_embed='sincos_flat'), encoder and
decoder; the models keep it as a plain attribute, so it is not in the state
dict (if a copy is, it is checked against the table and gives the token
count). mae_jax's attention has a bias for k too: it is set to 0, which is
exactly VideoMAE's (q_bias, 0, v_bias). The decoder_embed bias is set to 0.

Not in the weights, so from the options or VideoMAE's pretraining defaults:
frames (16) and image size (224), the attention heads (the official models'
table below), the masking of further training (tube, ratio 0.9; VideoMAE
V2's dual masking for its ViT-g).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from mae_jax.convert import (Converted, ConvertError, Options, as_array,
                             register, vit_layout)

# The official pretraining models (encoder width -> size name; decoder heads).
# VideoMAE: S/B/L/H decoders 192/384/512/640 wide with 3/6/8/8 heads;
# VideoMAE V2: H and g decoders 512 wide, 8 heads. Encoder heads are mae_jax's
# variant table's (S 6, B 12, L 16, H 16, g 16: the same as theirs).
OFFICIAL_DECODER_HEADS = {'S': 3, 'B': 6, 'L': 8, 'H': 8, 'g': 8}
DEFAULT_FRAMES = 16
DEFAULT_IMAGE_SIZE = 224
DEFAULT_MASK_RATIO = 0.9

# Keys whose presence says which unsupported option a model was built with.
_HINTS = (
    (r'\.gamma_[12]$', 'layer scale (init_values > 0), which mae_jax blocks '
     'do not have'),
    (r'\.attn\.scale$', "VideoMAE V2's cosine attention (cos_attn=True), "
     'which mae_jax does not implement'),
    (r'^encoder\.head\.', 'a classification head on the encoder '
     '(encoder_num_classes > 0)'),
    (r'^(blocks\.|fc_norm\.|head\.|patch_embed\.)', 'a fine-tuned '
     '(classification) model, not a pretraining one: the videomae format '
     'reads pretraining checkpoints (encoder.*, decoder.*, mask_token)'),
)


def _report(sd: Mapping[str, Any]) -> vit_layout.Report:
  return vit_layout.Report(sd, 'a VideoMAE pretraining state dict', _HINTS)


def _require(sd, key: str):
  if key not in sd:
    enc = sorted(k for k in sd if k.startswith('encoder.'))[:5]
    hint = [why for pattern, why in _HINTS if any(re.search(pattern, k)
                                                  for k in sd)]
    raise ConvertError(
        f'no {key!r} in the state dict, so it is not a VideoMAE pretraining '
        f'checkpoint' + (f' (it looks like {hint[0]})' if hint else '') +
        f'. Its first keys: {sorted(sd)[:8]}' + (f'; encoder keys: {enc}'
                                                 if enc else ''))
  return sd[key]


def _check_sinusoid(sd, key: str, width: int) -> int | None:
  """A stored copy of the fixed table -> its token count; a learned table
  is refused."""
  from mae_jax.models import position  # pylint: disable=g-import-not-at-top
  if key not in sd:
    return None
  shape = tuple(sd[key].shape)
  if len(shape) != 3 or shape[0] != 1 or shape[2] != width:
    raise ConvertError(f'{key}: shape {shape}, expected (1, tokens, {width})')
  table = as_array(sd[key])[0]
  if not np.allclose(table, position.sinusoid_table(shape[1], width),
                     atol=1e-4):
    raise ConvertError(
        f'{key} is not the fixed sinusoid table: a learned position '
        'embedding (use_learnable_pos_emb=True), which mae_jax\'s VideoMAE '
        "layout (pos_embed='sincos_flat') does not have")
  return shape[1]


def _decoder_spec(width: int, depth: int, heads: int, mlp: int) -> str:
  try:
    return vit_layout.decoder_spec(width, depth, heads, mlp)
  except ConvertError as e:
    raise ConvertError(
        f'{e}. (VideoMAE V2 ViT-g uses mlp_ratio 48/11 in its decoder: '
        'converting it needs a decoder spec with an MLP width, e.g. '
        '"512d4b8h2234m")') from None


def _image_size(value) -> tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  return tuple(value)


@register('videomae', aliases=('videomae_v2', 'videomaev2'),
          summary='MCG-NJU/VideoMAE and OpenGVLab/VideoMAEv2 pretraining '
          'checkpoints (encoder.*, decoder.*, mask_token)')
def read_videomae(sd: Mapping[str, Any], options: Options) -> Converted:
  from mae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mae_jax.models import vit  # pylint: disable=g-import-not-at-top

  notes = []
  # Shapes that fix the architecture.
  proj = _require(sd, 'encoder.patch_embed.proj.weight')
  if len(proj.shape) != 5:
    raise ConvertError(f'encoder.patch_embed.proj.weight: shape '
                       f'{tuple(proj.shape)}, expected a Conv3d weight '
                       '(width, channels, tubelet, patch, patch)')
  width, channels, dt, ph, pw = (int(s) for s in proj.shape)
  depth = vit_layout.depth_of(sd, 'encoder.blocks.')
  if not depth:
    raise ConvertError('no encoder.blocks.<i>.* keys: not a VideoMAE '
                       'pretraining state dict')
  mlp = int(_require(sd, 'encoder.blocks.0.mlp.fc1.weight').shape[0])
  dec_width = int(_require(sd, 'mask_token').shape[-1])
  dec_depth = vit_layout.depth_of(sd, 'decoder.blocks.')
  if not dec_depth:
    raise ConvertError('no decoder.blocks.<i>.* keys: an encoder-only (or '
                       'fine-tuned) checkpoint; the videomae format reads '
                       'pretraining checkpoints with their decoder')
  dec_mlp = int(_require(sd, 'decoder.blocks.0.mlp.fc1.weight').shape[0])
  patch_dim = channels * dt * ph * pw

  report = _report(sd)
  report.expect('encoder.patch_embed.proj.weight', (width, channels, dt, ph, pw))
  report.expect('encoder.patch_embed.proj.bias', (width,))
  has_qv, has_qkv = vit_layout.expect_blocks(report, sd, 'encoder.blocks.',
                                             depth, width, mlp)
  report.expect('encoder.norm.weight', (width,))
  report.expect('encoder.norm.bias', (width,))
  report.expect('encoder_to_decoder.weight', (dec_width, width))
  report.expect('mask_token', (1, 1, dec_width))
  dec_qv, dec_qkv = vit_layout.expect_blocks(report, sd, 'decoder.blocks.',
                                             dec_depth, dec_width, dec_mlp)
  report.expect('decoder.norm.weight', (dec_width,))
  report.expect('decoder.norm.bias', (dec_width,))
  report.expect('decoder.head.weight', (patch_dim, dec_width))
  report.expect('decoder.head.bias', (patch_dim,))
  # Copies of the fixed position tables, if saved: checked below.
  for key in ('encoder.pos_embed', 'pos_embed', 'decoder.pos_embed'):
    if key in sd:
      report.expect(key, tuple(sd[key].shape), optional=True)
  report.check()

  # Sizes.
  size = vit_layout.variant_name(width, depth, mlp)
  table_heads = vit.decode_variant(f'{size}/1').num_heads
  if options.num_heads and options.num_heads != table_heads:
    raise ConvertError(
        f'--num_heads={options.num_heads}: mae_jax\'s ViT-{size} has '
        f'{table_heads} heads (mae_jax\'s size table; VideoMAE\'s S/B/L/H/g '
        'have the same); a model trained with other heads cannot be '
        'represented')
  dec_heads = options.decoder_heads or OFFICIAL_DECODER_HEADS.get(size)
  if not dec_heads:
    raise ConvertError(
        f'the decoder\'s attention heads cannot be read from the weights and '
        f'ViT-{size} is not an official VideoMAE size: pass --decoder_heads')
  if dec_width % dec_heads:
    raise ConvertError(f'--decoder_heads={dec_heads} does not divide the '
                       f'decoder width {dec_width}')
  decoder = _decoder_spec(dec_width, dec_depth, dec_heads, dec_mlp)

  tokens = [n for n in (_check_sinusoid(sd, 'encoder.pos_embed', width),
                        _check_sinusoid(sd, 'pos_embed', dec_width),
                        _check_sinusoid(sd, 'decoder.pos_embed', dec_width))
            if n is not None]
  image = _image_size(options.image_size or DEFAULT_IMAGE_SIZE)
  if any(s % p for s, p in zip(image, (ph, pw))):
    raise ConvertError(f'image size {image} is not divisible by the '
                       f'patch {(ph, pw)} of the weights: pass --image_size')
  per_step = (image[0] // ph) * (image[1] // pw)
  if options.frames:
    frames = options.frames
  elif tokens and tokens[0] % per_step == 0:
    frames = tokens[0] // per_step * dt
    notes.append(f'frames={frames}: from the {tokens[0]} tokens of the '
                 'stored position table')
  else:
    frames = DEFAULT_FRAMES
  if frames % dt:
    raise ConvertError(f'--frames={frames} is not divisible by the tubelet '
                       f'length {dt} of the weights')
  n_tokens = frames // dt * per_step
  if any(n != n_tokens for n in tokens):
    raise ConvertError(
        f'the stored position table has {tokens[0]} tokens, but frames='
        f'{frames} and image size {image} give {n_tokens}: pass the '
        '--frames and --image_size the model was trained with')

  c = config_lib.base_config()
  c.model.variant = f'{size}/{dt}x{ph}x{pw}'
  c.model.decoder = decoder
  c.model.frames = frames
  c.model.image_size = image[0] if image[0] == image[1] else image
  c.model.channels = channels
  c.model.pos_embed = 'sincos_flat'
  c.model.cls_token = False
  c.masking.name = options.masking or ('dual' if size == 'g' else 'tube')
  c.masking.ratio = options.mask_ratio or DEFAULT_MASK_RATIO
  c.target = 'norm_pixels_channel'
  # VideoMAE's schedule (800 epochs, 40 of warmup); a new run sets its own.
  c.total_epochs = 800.0
  c.optim.warmup_epochs = 40.0

  # Parameters.
  params = {
      # [D, C, t, p, p] -> [(t p p C), D]
      'patch_embed/kernel': vit_layout.patch_kernel_from_conv(proj),
      'patch_embed/bias': as_array(sd['encoder.patch_embed.proj.bias']),
      'encoder_norm/scale': as_array(sd['encoder.norm.weight']),
      'encoder_norm/bias': as_array(sd['encoder.norm.bias']),
      'decoder_embed/kernel': vit_layout.linear(
          sd['encoder_to_decoder.weight']),
      'decoder_embed/bias': np.zeros(dec_width, np.float32),
      'mask_token': as_array(sd['mask_token']),
      'decoder_norm/scale': as_array(sd['decoder.norm.weight']),
      'decoder_norm/bias': as_array(sd['decoder.norm.bias']),
      'decoder_pred/kernel': vit_layout.linear(sd['decoder.head.weight']),
      'decoder_pred/bias': as_array(sd['decoder.head.bias']),
  }
  enc_heads = table_heads
  for name, x in vit_layout.blocks_from_torch(
      sd, 'encoder.blocks.', depth, width, enc_heads, has_qv, has_qkv).items():
    params[f'encoder/layers/{name}'] = x
  for name, x in vit_layout.blocks_from_torch(
      sd, 'decoder.blocks.', dec_depth, dec_width, dec_heads, dec_qv,
      dec_qkv).items():
    params[f'decoder/layers/{name}'] = x
  params = {k: np.asarray(v, np.float32) for k, v in params.items()}

  notes.append(f'encoder ViT-{size}: width {width}, {depth} blocks, MLP '
               f'{mlp}, {enc_heads} heads (mae_jax\'s size table, the same '
               f'as VideoMAE\'s); tubelet {dt}x{ph}x{pw}, {channels} '
               'channels')
  notes.append(f'decoder {decoder}: {dec_heads} heads ('
               + ('--decoder_heads' if options.decoder_heads else
                  f'official VideoMAE ViT-{size}') + ')')
  if not options.frames and not tokens:
    notes.append(f'frames={frames}: VideoMAE\'s pretraining clip length (not '
                 'stored in the weights; --frames to change)')
  if not options.image_size:
    notes.append(f'image_size={image[0]}: VideoMAE\'s pretraining size (not '
                 'stored in the weights; --image_size to change)')
  notes.append('attention k bias = 0 (VideoMAE has q and v biases only)'
               if has_qv else 'attention q/k/v biases from attn.qkv.bias'
               if has_qkv else 'attention biases = 0 (qkv_bias=False)')
  notes.append('decoder_embed bias = 0 (encoder_to_decoder has none)')
  notes.append(f'masking {c.masking.name} {c.masking.ratio}, target '
               'norm_pixels_channel (VideoMAE\'s normalized pixels)')
  return Converted(c, params, notes)


def mask_from_videomae(bool_masked_pos) -> Any:
  """VideoMAE's bool_masked_pos [B, L] (True = masked, the same count in
  every row) -> a mae_jax masking.Mask whose encoder sees the visible tokens
  in ascending position order, as VideoMAE's x[~mask] does."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mae_jax import masking  # pylint: disable=g-import-not-at-top
  m = np.asarray(bool_masked_pos, bool)
  counts = m.sum(axis=1)
  if m.ndim != 2 or len(set(counts.tolist())) != 1:
    raise ValueError(f'bool_masked_pos: shape {m.shape} with masked counts '
                     f'{sorted(set(counts.tolist()))}; expected [B, L] with '
                     'the same count in every row')
  # Stable: visible ids ascending, then masked ids ascending.
  order = np.argsort(m, axis=1, kind='stable').astype(np.int32)
  return masking.from_shuffle(jnp.asarray(order), m.shape[1] - int(counts[0]))
