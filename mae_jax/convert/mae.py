"""Official MAE checkpoints (facebookresearch/mae) -> mae_jax (format 'mae').

Reads the three kinds of state dict the official code saves (its
`{'model': state dict, ...}` .pth files, or a .safetensors file with the
same keys):

  pretraining, with the decoder (models_mae.py; e.g. the released
  mae_visualize_vit_*.pth, or a checkpoint of main_pretrain.py)
      -> a mae_jax pretraining checkpoint (task 'pretrain')
  pretraining, encoder only (the released mae_pretrain_vit_*.pth: the
  encoder's keys, `norm` included, nothing of the decoder)
      -> a mae_jax pretraining checkpoint whose decoder is freshly
         initialized (the official 512-wide, 8-block decoder unless
         --set=model.decoder=... says otherwise), with the reconstruction
         evaluator turned off. The encoder is exact: encode(), the feature
         evaluators, init_from for fine-tuning, and further pretraining (the
         decoder learning from scratch) all work from it.
  fine-tuned (models_vit.py, timm's VisionTransformer; the released
  mae_finetuned_vit_*.pth)
      -> a mae_jax classifier checkpoint (task 'classify'): classes from the
         head, pool 'mean' when `fc_norm` is there (global_pool=True: the
         mean of the patch tokens, then fc_norm; no `norm`), else 'cls' (the
         cls token after `norm`); the learned position embedding becomes
         the trainable table (row 0 -> pos_embed/cls_embed, rows 1.. ->
         pos_embed/table).

The keys (timm's ViT; D encoder width, E decoder width, L = (H/p)(W/p)
patches, P = p * p * C):

  cls_token [1, 1, D]; pos_embed [1, 1 + L, D]   fixed sin-cos in pretraining
  patch_embed.proj.{weight [D, C, p, p], bias}   stride-p Conv2d
  blocks.<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}
                                                 (see vit_layout.py)
  norm.{weight, bias}                            the encoder's final norm
  decoder_embed.{weight [E, D], bias}; mask_token [1, 1, E]
  decoder_pos_embed [1, 1 + L, E]                fixed sin-cos
  decoder_blocks.<j>.*; decoder_norm.*; decoder_pred.{weight [P, E], bias}
  fc_norm.*, head.{weight [K, D], bias}          fine-tuned models

A pretraining checkpoint's fixed tables must be the 2-D sin-cos table
(within 1e-4, with a zero cls row): the notes report the largest difference
to mae_jax's (official-convention) table; a table in mae_jax's former
channel order is read as pos_embed 'sincos_yx'; anything else is refused.

Not in the weights, so from the options, the training arguments saved in the
checkpoint (args.input_size, mask_ratio, norm_pix_loss), or the official
defaults: the image size (else from the position table: a square grid), the
attention heads (mae_jax's size table, as the official ViT-B 12, L 16, H 16;
the decoder 16 when it is 512 wide, else --decoder_heads), the masking of
further training (random, 0.75) and the target (norm_pixels, the paper's;
the released mae_visualize_* models were trained on pixels:
--set=target=pixels).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

from mae_jax.convert import (Converted, ConvertError, Options, as_array,
                             register, vit_layout)

DEFAULT_MASK_RATIO = 0.75
# The official decoder (all released models): 512 wide, 8 blocks, 16 heads.
OFFICIAL_DECODER = '512d8b'
OFFICIAL_DECODER_WIDTH, OFFICIAL_DECODER_HEADS = 512, 16
TABLE_ATOL = 1e-4

# Parameters a pretraining checkpoint may lack, initialized fresh: all of
# the decoder (encoder-only checkpoints); the adaptive sampler (any).
DECODER_PARAMS = ('decoder_embed', 'mask_token', 'decoder', 'decoder_norm',
                  'decoder_pred')

WHAT = ('an official MAE state dict (facebookresearch/mae models_mae.py / '
        'models_vit.py, timm\'s ViT keys)')
# Keys whose presence says what kind of model a file holds.
_HINTS = (
    (r'(\.gamma_[12]|\.ls[12]\.gamma)$', 'layer scale, which mae_jax blocks '
     'do not have'),
    (r'^(encoder|decoder)\.(blocks|norm|head|patch_embed)',
     'a VideoMAE checkpoint: use --from=videomae'),
    (r'^head\.\d+\.', "a linear-probe head (main_linprobe.py's BatchNorm + "
     'Linear), which this format does not read'),
    (r'^(dist_token|head_dist\.)', 'a distilled (DeiT) model'),
    (r'\.attn\.[qk]_norm\.', 'attention with q/k normalization, which mae_jax '
     'does not have'),
    (r'^reg_token', 'register tokens, which mae_jax does not have'),
    (r'^(vit\.|decoder\.decoder_)', "Hugging Face transformers' ViTMAE "
     'names, not the official ones'),
    (r'^head\.(weight|bias)$', 'a classification head beside a decoder'),
    (r'^norm\.(weight|bias)$', "a final norm beside fc_norm (the official "
     "global_pool model has fc_norm only; timm's global_pool='avg' with "
     'fc_norm=False is not the official model)'),
)


def _require(sd: Mapping[str, Any], key: str):
  if key not in sd:
    hint = [why for pattern, why in _HINTS if any(re.search(pattern, k)
                                                  for k in sd)]
    raise ConvertError(
        f'no {key!r} in the state dict, so it is not {WHAT}'
        + (f' (it looks like {hint[0]})' if hint else '')
        + f'. Its first keys: {sorted(sd)[:8]}')
  return sd[key]


def kind_of(sd: Mapping[str, Any]) -> str:
  """'pretrain' (with its decoder), 'encoder' (encoder only) or 'classify'."""
  if any(k.startswith(('decoder_', 'mask_token')) for k in sd):
    return 'pretrain'
  if any(k.startswith(('head.', 'fc_norm.')) for k in sd):
    return 'classify'
  return 'encoder'


def _grid(tokens: int, patch: tuple[int, int], options: Options,
          key: str) -> tuple[tuple[int, int], tuple[int, int], str]:
  """-> (grid, image size, where the size came from)."""
  size, why = options.image_size, '--image_size'
  if size is None and isinstance(options.checkpoint_args.get('input_size'),
                                 int):
    size, why = options.checkpoint_args['input_size'], (
        'the checkpoint\'s args.input_size')
    if (size // patch[0]) * (size // patch[1]) != tokens:
      size = None  # e.g. fine-tuned at another size than pretrained
  if size is None:
    side = math.isqrt(tokens)
    if side * side != tokens:
      raise ConvertError(
          f'{key} has {tokens} patch rows, not a square grid: pass '
          '--image_size=H,W')
    return (side, side), (side * patch[0], side * patch[1]), (
        f'the {tokens} rows of {key}: a square grid')
  image = (size, size) if isinstance(size, int) else tuple(size)
  if any(s % p for s, p in zip(image, patch)):
    raise ConvertError(f'image size {image} ({why}) is not divisible by the '
                       f'patch {patch} of the weights')
  grid = (image[0] // patch[0], image[1] // patch[1])
  if grid[0] * grid[1] != tokens:
    raise ConvertError(
        f'image size {image} ({why}) gives a {grid[0]}x{grid[1]} grid of '
        f'{grid[0] * grid[1]} patches, but {key} has {tokens} patch rows')
  return grid, image, why


def check_fixed_table(sd, key: str, grid: tuple[int, ...], width: int
                      ) -> tuple[str, float]:
  """The stored fixed table `key` [1, 1 + L, W] -> (mae_jax's pos_embed kind
  whose table it is, the largest difference to it). ConvertError naming
  the key if it is neither sin-cos order within TABLE_ATOL (a learned
  table), or its cls row is not zero."""
  from mae_jax.models import tokenizers  # pylint: disable=g-import-not-at-top
  stored = as_array(sd[key]).astype(np.float64)[0]
  cls_row = float(np.max(np.abs(stored[0])))
  diffs = {}
  for kind, last_axis_first in (('sincos', True), ('sincos_yx', False)):
    try:
      table = tokenizers.sincos_pos_embed(grid, width, last_axis_first)
    except ValueError as e:
      raise ConvertError(f'{key}: width {width} cannot hold a 2-D sin-cos '
                         f'table ({e}), so it is not the official fixed '
                         'table') from None
    diffs[kind] = max(cls_row, float(np.max(np.abs(stored[1:] - table))))
    if diffs[kind] <= TABLE_ATOL:
      return kind, diffs[kind]
  raise ConvertError(
      f'{key} is not the fixed 2-D sin-cos table of a {grid[0]}x{grid[1]} '
      f'grid: the largest difference to the official table is '
      f'{diffs["sincos"]:.3g} (cls row {cls_row:.3g}; allowed '
      f'{TABLE_ATOL:g}). A learned position embedding belongs to a '
      'fine-tuned model (fc_norm / head keys), which a pretraining '
      'checkpoint does not have')


@register('mae', aliases=('mae_official',),
          summary='facebookresearch/mae checkpoints: pretraining (with or '
          'without the decoder) and fine-tuned classifiers')
def read_mae(sd: Mapping[str, Any], options: Options) -> Converted:
  from mae_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  kind = kind_of(sd)
  args = dict(options.checkpoint_args)
  notes = []
  proj = _require(sd, 'patch_embed.proj.weight')
  if len(proj.shape) == 5:
    raise ConvertError('patch_embed.proj.weight is a Conv3d weight '
                       f'{tuple(proj.shape)}: a video model; the mae format '
                       'reads image models (VideoMAE: --from=videomae)')
  if len(proj.shape) != 4:
    raise ConvertError(f'patch_embed.proj.weight: shape {tuple(proj.shape)}, '
                       'expected a Conv2d weight (width, channels, patch, '
                       'patch)')
  width, channels, ph, pw = (int(s) for s in proj.shape)
  depth = vit_layout.depth_of(sd, 'blocks.')
  if not depth:
    raise ConvertError(f'no blocks.<i>.* keys: not {WHAT}')
  mlp = int(_require(sd, 'blocks.0.mlp.fc1.weight').shape[0])
  pos = _require(sd, 'pos_embed')
  if len(pos.shape) != 3 or pos.shape[0] != 1 or pos.shape[2] != width or (
      pos.shape[1] < 2):
    raise ConvertError(f'pos_embed: shape {tuple(pos.shape)}, expected '
                       f'(1, 1 + patches, {width})')
  tokens = int(pos.shape[1]) - 1  # the cls token's row first
  grid, image, image_from = _grid(tokens, (ph, pw), options, 'pos_embed')
  patch_dim = ph * pw * channels

  report = vit_layout.Report(sd, WHAT, _HINTS)
  report.expect('cls_token', (1, 1, width))
  report.expect('pos_embed', (1, 1 + tokens, width))
  report.expect('patch_embed.proj.weight', (width, channels, ph, pw))
  report.expect('patch_embed.proj.bias', (width,))
  has_qv, has_qkv = vit_layout.expect_blocks(report, sd, 'blocks.', depth,
                                             width, mlp)
  pool = None
  if kind == 'classify':
    pool = 'mean' if 'fc_norm.weight' in sd else 'cls'
    norm = 'fc_norm' if pool == 'mean' else 'norm'
    head = _require(sd, 'head.weight')
    num_classes = int(head.shape[0])
    report.expect(f'{norm}.weight', (width,))
    report.expect(f'{norm}.bias', (width,))
    report.expect('head.weight', (num_classes, width))
    report.expect('head.bias', (num_classes,))
  else:
    report.expect('norm.weight', (width,))
    report.expect('norm.bias', (width,))
  if kind == 'pretrain':
    dec_width = int(_require(sd, 'mask_token').shape[-1])
    dec_depth = vit_layout.depth_of(sd, 'decoder_blocks.')
    if not dec_depth:
      raise ConvertError('no decoder_blocks.<j>.* keys beside the decoder\'s '
                         f'other keys: not {WHAT}, or a truncated one')
    dec_mlp = int(_require(sd, 'decoder_blocks.0.mlp.fc1.weight').shape[0])
    vit_layout.expect_decoder_ends(report, width, dec_width, tokens,
                                   patch_dim)
    dec_qv, dec_qkv = vit_layout.expect_blocks(
        report, sd, 'decoder_blocks.', dec_depth, dec_width, dec_mlp)
  report.check()

  # Sizes.
  size, heads, variant = vit_layout.encoder_variant(
      width, depth, mlp, (ph, pw), options.num_heads)
  decoder = None
  if kind == 'pretrain':
    dec_heads = options.decoder_heads or (
        OFFICIAL_DECODER_HEADS if dec_width == OFFICIAL_DECODER_WIDTH
        else None)
    if not dec_heads:
      raise ConvertError(
          f'the decoder is {dec_width} wide, not the official 512: its '
          'attention heads cannot be read from the weights; pass '
          '--decoder_heads')
    if dec_width % dec_heads:
      raise ConvertError(f'--decoder_heads={dec_heads} does not divide the '
                         f'decoder width {dec_width}')
    decoder = vit_layout.decoder_spec(dec_width, dec_depth, dec_heads,
                                      dec_mlp)
  elif kind == 'encoder':
    decoder = (f'{OFFICIAL_DECODER}{options.decoder_heads}h'
               if options.decoder_heads else OFFICIAL_DECODER)

  # The fixed tables of pretraining.
  pos_kind = 'sincos'
  if kind != 'classify':
    pos_kind, diff = check_fixed_table(sd, 'pos_embed', grid, width)
    checked = [f'pos_embed {diff:.2g}']
    if kind == 'pretrain':
      dec_kind, dec_diff = check_fixed_table(sd, 'decoder_pos_embed', grid,
                                             dec_width)
      if dec_kind != pos_kind:
        raise ConvertError(
            f'pos_embed is the {pos_kind} table but decoder_pos_embed the '
            f'{dec_kind} one: mae_jax has one channel order for both')
      checked.append(f'decoder_pos_embed {dec_diff:.2g}')
    notes.append(
        f'fixed position tables: {pos_kind} (' + (
            'the official channel order' if pos_kind == 'sincos' else
            'mae_jax\'s former channel order, rows first') +
        '), largest difference to mae_jax\'s table: ' + ', '.join(checked))

  # Config.
  c = config_lib.base_config()
  c.model.variant = variant
  if decoder:
    c.model.decoder = decoder
  c.model.frames = 0
  c.model.image_size = image[0] if image[0] == image[1] else image
  c.model.channels = channels
  c.model.pos_embed = pos_kind
  c.model.cls_token = True
  if kind == 'classify':
    c.task = 'classify'
    c.classify.num_classes = num_classes
    c.classify.pool = pool
    c.classify.trainable_pos_embed = True
    c.evals.reconstruction.enabled = False
    c.evals.classification.enabled = True
    # A schedule is required; the official one of ViT-B (further
    # fine-tuning takes its recipe from configs/mae_finetune.py).
    c.total_epochs, c.optim.warmup_epochs = 100.0, 5.0
    notes.append('further fine-tuning: configs/mae_finetune.py (the official '
                 'recipe per size) with --config.init_from=<this directory>')
  else:
    c.masking.name = options.masking or 'random'
    ratio = args.get('mask_ratio')
    c.masking.ratio = options.mask_ratio or (
        float(ratio) if isinstance(ratio, float) else DEFAULT_MASK_RATIO)
    norm_pix = args.get('norm_pix_loss')
    c.target = ('norm_pixels' if norm_pix in (True, None) else 'pixels')
    # The official pretraining schedule (800 epochs, 40 of warmup).
    c.total_epochs, c.optim.warmup_epochs = 800.0, 40.0
    if kind == 'encoder':
      c.evals.reconstruction.enabled = False

  # Parameters.
  f32 = lambda key: as_array(sd[key]).astype(np.float32)
  params = vit_layout.stem_from_torch(sd)
  for name, x in vit_layout.blocks_from_torch(
      sd, 'blocks.', depth, width, heads, has_qv, has_qkv).items():
    params[f'encoder/layers/{name}'] = x
  if kind == 'classify':
    norm = 'fc_norm' if pool == 'mean' else 'encoder_norm'
    src = 'fc_norm' if pool == 'mean' else 'norm'
    table = f32('pos_embed')[0]
    params.update({
        f'{norm}/scale': f32(f'{src}.weight'),
        f'{norm}/bias': f32(f'{src}.bias'),
        'pos_embed/cls_embed': table[:1],
        'pos_embed/table': table[1:],
        'head/kernel': vit_layout.linear(sd['head.weight']),
        'head/bias': f32('head.bias'),
    })
  else:
    params['encoder_norm/scale'] = f32('norm.weight')
    params['encoder_norm/bias'] = f32('norm.bias')
  if kind == 'pretrain':
    params.update(vit_layout.decoder_ends_from_torch(sd))
    for name, x in vit_layout.blocks_from_torch(
        sd, 'decoder_blocks.', dec_depth, dec_width, dec_heads, dec_qv,
        dec_qkv).items():
      params[f'decoder/layers/{name}'] = x

  # What was decided.
  if kind == 'classify':
    what = (f'a fine-tuned classifier ({num_classes} classes, ' + (
        'global pool: the mean of the patch tokens, then fc_norm'
        if pool == 'mean' else 'the cls token after norm') + ')')
  else:
    what = ('a pretraining checkpoint with its decoder' if kind == 'pretrain'
            else 'an encoder-only pretraining checkpoint (no decoder)')
  notes.insert(0, f'read {what}')
  notes.insert(1, f'encoder ViT-{size}: width {width}, depth {depth}, MLP '
               f'{mlp}, {heads} heads (mae_jax\'s size table, the same as '
               f'the official models\'), patch {ph}x{pw}, {channels} channels')
  notes.insert(2, f'image size {image[0]}x{image[1]}: from {image_from}')
  if kind == 'pretrain':
    notes.append(f'decoder {decoder}: {dec_heads} heads ('
                 + ('--decoder_heads' if options.decoder_heads else
                    'the official decoder\'s') + ')')
  if kind == 'encoder':
    notes.append(
        'the checkpoint has no decoder: decoder, decoder_embed, mask_token '
        f'and decoder_pred are freshly initialized ({c.model.decoder}, the '
        'official decoder; --set=model.decoder=... for another), so '
        'reconstructions mean nothing until it is trained: the '
        'reconstruction evaluator is off. The encoder is the checkpoint\'s')
  if not has_qkv:
    notes.append('attention k bias = 0 (q and v biases only)' if has_qv
                 else 'attention biases = 0 (qkv_bias=False)')
  if kind == 'classify':
    notes.append('learned position embedding: row 0 -> pos_embed/cls_embed, '
                 'rows 1.. -> pos_embed/table (trainable_pos_embed=True)')
    notes.append('evaluate the accuracy with --set=evals.classification'
                 '.enabled=True and the data (--set=data.source=...)')
  else:
    target_from = ('the checkpoint\'s args.norm_pix_loss' if 'norm_pix_loss'
                   in args else 'the paper\'s default; the released '
                   'mae_visualize_* models used pixels: --set=target=pixels')
    notes.append(f'masking {c.masking.name} {c.masking.ratio}, target '
                 f'{c.target} ({target_from})')
  fresh = DECODER_PARAMS + ('sampler',) if kind == 'encoder' else (
      ('sampler',) if kind == 'pretrain' else ())
  return Converted(c, params, notes, fresh)
