"""Official AudioMAE checkpoints (facebookresearch/AudioMAE) -> mae_jax
(format 'audiomae').

AudioMAE (Huang et al., "Masked Autoencoders that Listen", 2022) is MAE on
log-mel spectrograms [T, F] = 1024 x 128 (mae_jax: [T, F, 1] inputs,
model.spectrogram) in 16 x 16 patches: a 64 x 8 (time x mel) token grid,
time-major. The official code saves `{'model': state dict, 'epoch',
'args'}` like MAE's, and its state dicts are MAE's layout (convert/mae.py
lists the keys) with

  patch_embed.proj.weight [D, 1, p, p]   one input channel
  pos_embed, decoder_pos_embed           fixed sin-cos, but built for the
                                         grid with its axes swapped (8 x 64:
                                         PatchEmbed_org's patch_hw is
                                         (F/p, T/p)) and added in token
                                         order: mae_jax's 'sincos_audiomae'
  decoder_blocks.<j>.*                   decoder_mode 0: timm's ViT Block
                                         (as MAE); decoder_mode 1 (the
                                         released AS-2M model): Swin-V2-CR
                                         blocks (models/local_attention.py):
      norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2   as a ViT block
                                         (post-norm: the norms apply to
                                         the branch outputs)
      attn.tau [H]                       per-head temperature
      attn.meta_mlp.fc1.{weight [384, 2], bias}, fc2.{weight [H, 384], bias}
                                         the relative position bias network

Three kinds of file:
  pretraining with the decoder (main_pretrain.py) -> task 'pretrain',
      decoder_attention 'local' (mode 1: window (4, 4), every second block
      shifted by (2, 0), unless args.no_shift) or 'global' (mode 0);
  pretraining without the decoder (an encoder-only export) -> a fresh
      AudioMAE decoder ('512d16b16h', local), reconstruction evaluator off;
  fine-tuned (models_vit.py: global pool + fc_norm, e.g. AudioSet's 527
      classes) -> task 'classify', read by the mae format's fine-tuned
      path (the learned table becomes the trainable position embedding).

Not in the weights, so from --image_size, the checkpoint's args (dataset:
AudioMAE's target_length table; decoder_mode, no_shift, mask_ratio,
norm_pix_loss) or AudioMAE's defaults: the spectrogram size (T from the
token count with F = 128 mel bins), masking random 0.8, target norm_pixels
(norm_pix_loss), the decoder's heads (mode 0: 16 when it is 512 wide; mode
1: from tau). AudioMAE's overlapping patches (use_custom_patch, stride 10)
have no mae_jax equivalent and are refused.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mae_jax.convert import (Converted, ConvertError, Options, as_array,
                             register, vit_layout)
from mae_jax.convert import mae as mae_format

MEL_BINS = 128  # every AudioMAE model's F
# main_pretrain.py / main_finetune_as.py: frames T per data set.
TARGET_LENGTH = {'audioset': 1024, 'esc50': 512, 'speechcommands': 128}
DEFAULT_MASK_RATIO = 0.8
OFFICIAL_DECODER = '512d16b16h'  # decoder_mode 1: 16 blocks, 16 heads
OFFICIAL_WINDOW, OFFICIAL_SHIFT = (4, 4), (2, 0)
META_KEYS = ('attn.meta_mlp.fc1.weight', 'attn.meta_mlp.fc1.bias',
             'attn.meta_mlp.fc2.weight', 'attn.meta_mlp.fc2.bias')

WHAT = ('an official AudioMAE state dict (facebookresearch/AudioMAE '
        'models_mae.py / models_vit.py)')
_HINTS = (
    (r'\.norm3\.', "the Swin block's extra norm (extra_norm=True), which "
     'the AudioMAE decoder does not use'),
    (r'\.attn\.(logit_scale|relative_position_bias_table)$',
     "another Swin block (timm's Swin V2 / V1), not AudioMAE's"),
    (r'^(encoder|decoder)\.(blocks|norm|head|patch_embed)',
     'a VideoMAE checkpoint: use --from=videomae'),
)


def _require(sd: Mapping[str, Any], key: str):
  if key not in sd:
    raise ConvertError(f'no {key!r} in the state dict, so it is not {WHAT}. '
                       f'Its first keys: {sorted(sd)[:8]}')
  return sd[key]


def _spectrogram_size(tokens: int, patch: tuple[int, int], options: Options
                      ) -> tuple[tuple[int, int], str]:
  """-> ((T, F), where it came from), checked against the token count."""
  args = options.checkpoint_args
  if args.get('use_custom_patch') is True:
    raise ConvertError(
        'the checkpoint was trained with use_custom_patch=True (overlapping '
        'patches, stride 10), which mae_jax\'s patch embedding does not have')
  if options.image_size is not None:
    s = options.image_size
    size, why = ((s, s) if isinstance(s, int) else tuple(s)), '--image_size'
  elif args.get('dataset') in TARGET_LENGTH:
    size = (TARGET_LENGTH[args['dataset']], MEL_BINS)
    why = f'the checkpoint\'s args.dataset={args["dataset"]!r}'
  else:
    per_row = MEL_BINS // patch[1]
    if MEL_BINS % patch[1] or tokens % per_row:
      raise ConvertError(
          f'pos_embed has {tokens} patch rows, which is no whole number of '
          f'{MEL_BINS}-mel-bin rows of {patch[0]}x{patch[1]} patches: pass '
          '--image_size=T,F (frames, mel bins)')
    size = (tokens // per_row * patch[0], MEL_BINS)
    why = f'the {tokens} rows of pos_embed with {MEL_BINS} mel bins'
  grid = (size[0] // patch[0], size[1] // patch[1])
  if any(s % p for s, p in zip(size, patch)) or grid[0] * grid[1] != tokens:
    raise ConvertError(
        f'spectrogram size {size} ({why}) in {patch[0]}x{patch[1]} patches '
        f'does not give the {tokens} patches of pos_embed: pass the '
        '--image_size=T,F the model was trained with')
  return size, why


def check_fixed_table(sd, key: str, grid: tuple[int, int], width: int
                      ) -> tuple[str, float]:
  """The stored fixed table `key` [1, 1 + L, W] -> (the mae_jax pos_embed
  kind whose table it is: AudioMAE's, else the standard 'sincos'; the
  largest difference). ConvertError naming the key if it is neither (within
  the mae format's tolerance) or its cls row is not zero."""
  from mae_jax.models import position  # pylint: disable=g-import-not-at-top
  stored = as_array(sd[key]).astype(np.float64)[0]
  cls_row = float(np.max(np.abs(stored[0])))
  diffs = {}
  for kind in ('sincos', 'sincos_audiomae'):  # equal on square grids
    try:
      table = position.get(kind)(grid, width, rngs=None).table()
    except ValueError as e:
      raise ConvertError(f'{key}: width {width} cannot hold a 2-D sin-cos '
                         f'table ({e})') from None
    diffs[kind] = max(cls_row, float(np.max(np.abs(stored[1:] - table))))
    if diffs[kind] <= mae_format.TABLE_ATOL:
      return kind, diffs[kind]
  raise ConvertError(
      f'{key} is not AudioMAE\'s fixed sin-cos table of the {grid[0]}x'
      f'{grid[1]} grid (get_2d_sincos_pos_embed_flexible): the largest '
      f'difference is {diffs["sincos_audiomae"]:.3g} (cls row {cls_row:.3g};'
      f' allowed {mae_format.TABLE_ATOL:g}). A trained table '
      '(pos_trainable=True) or another spectrogram size (--image_size) '
      'is not supported')


def _expect_local_blocks(report, sd, depth: int, width: int, mlp: int
                         ) -> tuple[int, bool, bool]:
  """Expects `depth` AudioMAE decoder blocks -> (their heads (from tau),
  q/v biases, a qkv bias: as vit_layout.expect_blocks)."""
  heads = int(_require(sd, 'decoder_blocks.0.attn.tau').shape[0])
  hidden = int(_require(sd, 'decoder_blocks.0.attn.meta_mlp.fc1.weight'
                        ).shape[0])
  from mae_jax.models import local_attention  # pylint: disable=g-import-not-at-top
  if hidden != local_attention.META_HIDDEN:
    raise ConvertError(
        f'decoder_blocks.0.attn.meta_mlp.fc1.weight: {hidden} hidden units; '
        f'AudioMAE\'s meta MLP (and mae_jax\'s) has '
        f'{local_attention.META_HIDDEN}')
  if heads < 1 or width % heads:
    raise ConvertError(f'decoder_blocks.0.attn.tau: {heads} heads do not '
                       f'divide the decoder width {width}')
  has_qv, has_qkv = vit_layout.expect_blocks(report, sd, 'decoder_blocks.',
                                             depth, width, mlp)
  shapes = dict(zip(META_KEYS, ((hidden, 2), (hidden,), (heads, hidden),
                                (heads,))))
  for j in range(depth):
    report.expect(f'decoder_blocks.{j}.attn.tau', (heads,))
    for name, shape in shapes.items():
      report.expect(f'decoder_blocks.{j}.{name}', shape)
  return heads, has_qv, has_qkv


def _local_extras(sd, depth: int) -> dict[str, np.ndarray]:
  """tau and the meta MLP of `depth` blocks, stacked on the layers axis
  (torch Linear weights [out, in] transposed into kernels [in, out])."""
  def stack(name: str, transpose: bool = False) -> np.ndarray:
    xs = [as_array(sd[f'decoder_blocks.{j}.{name}']).astype(np.float32)
          for j in range(depth)]
    return np.stack([x.T for x in xs] if transpose else xs)
  return {
      'attn/tau': stack('attn.tau'),
      'attn/meta_mlp/fc1/kernel': stack('attn.meta_mlp.fc1.weight', True),
      'attn/meta_mlp/fc1/bias': stack('attn.meta_mlp.fc1.bias'),
      'attn/meta_mlp/fc2/kernel': stack('attn.meta_mlp.fc2.weight', True),
      'attn/meta_mlp/fc2/bias': stack('attn.meta_mlp.fc2.bias'),
  }


def _read_finetuned(sd: Mapping[str, Any], options: Options) -> Converted:
  """models_vit.py classifiers: the mae format's fine-tuned path, given the
  spectrogram size, then made an audio config."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from mae_jax import recipes  # pylint: disable=g-import-not-at-top
  proj = _require(sd, 'patch_embed.proj.weight')
  pos = _require(sd, 'pos_embed')
  if len(proj.shape) != 4 or len(pos.shape) != 3:
    raise ConvertError(f'patch_embed.proj.weight {tuple(proj.shape)} / '
                       f'pos_embed {tuple(pos.shape)}: expected a Conv2d '
                       'weight and a [1, 1 + patches, width] table')
  size, why = _spectrogram_size(int(pos.shape[1]) - 1,
                                tuple(int(s) for s in proj.shape[2:]),
                                options)
  converted = mae_format.read_mae(sd, dataclasses.replace(options,
                                                          image_size=size))
  c = converted.config
  recipes.spectrogram_input(c, frames=size[0], mel_bins=size[1])
  notes = [n for n in converted.notes if not n.startswith('image size')]
  notes.insert(2, f'spectrogram {size[0]} frames x {size[1]} mel bins: from '
               f'{why}')
  notes.append('AudioSet is multi-label (AudioMAE fine-tunes with a sigmoid '
               'loss): evaluate it with --set=data.multi_label=True and '
               '--set=data.num_classes=' + str(c.classify.num_classes))
  notes[0] = notes[0].replace('read a fine-tuned', 'read an AudioMAE '
                              'fine-tuned')
  return Converted(c, converted.params, notes, converted.fresh)


@register('audiomae', summary='facebookresearch/AudioMAE checkpoints: '
          'pretraining (decoder_mode 0 or 1, or encoder only) and fine-tuned '
          'classifiers')
def read_audiomae(sd: Mapping[str, Any], options: Options) -> Converted:
  from mae_jax import config as config_lib, recipes  # pylint: disable=g-import-not-at-top

  kind = mae_format.kind_of(sd)
  if kind == 'classify':
    return _read_finetuned(sd, options)
  args = dict(options.checkpoint_args)
  notes = []
  proj = _require(sd, 'patch_embed.proj.weight')
  if len(proj.shape) != 4:
    raise ConvertError(f'patch_embed.proj.weight: shape {tuple(proj.shape)}, '
                       'expected a Conv2d weight (width, 1, patch, patch)')
  width, channels, ph, pw = (int(s) for s in proj.shape)
  if channels != 1:
    raise ConvertError(
        f'patch_embed.proj.weight has {channels} input channels: AudioMAE '
        'models take 1 (spectrograms); an image MAE is --from=mae')
  depth = vit_layout.depth_of(sd, 'blocks.')
  if not depth:
    raise ConvertError(f'no blocks.<i>.* keys: not {WHAT}')
  mlp = int(_require(sd, 'blocks.0.mlp.fc1.weight').shape[0])
  pos = _require(sd, 'pos_embed')
  if len(pos.shape) != 3 or pos.shape[0] != 1 or pos.shape[2] != width or (
      pos.shape[1] < 2):
    raise ConvertError(f'pos_embed: shape {tuple(pos.shape)}, expected '
                       f'(1, 1 + patches, {width})')
  tokens = int(pos.shape[1]) - 1
  size, size_from = _spectrogram_size(tokens, (ph, pw), options)
  grid = (size[0] // ph, size[1] // pw)
  patch_dim = ph * pw

  report = vit_layout.Report(sd, WHAT, _HINTS)
  report.expect('cls_token', (1, 1, width))
  report.expect('pos_embed', (1, 1 + tokens, width))
  report.expect('patch_embed.proj.weight', (width, 1, ph, pw))
  report.expect('patch_embed.proj.bias', (width,))
  has_qv, has_qkv = vit_layout.expect_blocks(report, sd, 'blocks.', depth,
                                             width, mlp)
  report.expect('norm.weight', (width,))
  report.expect('norm.bias', (width,))
  local = False
  if kind == 'pretrain':
    dec_width = int(_require(sd, 'mask_token').shape[-1])
    dec_depth = vit_layout.depth_of(sd, 'decoder_blocks.')
    if not dec_depth:
      raise ConvertError('no decoder_blocks.<j>.* keys beside the decoder\'s '
                         f'other keys: not {WHAT}, or a truncated one')
    dec_mlp = int(_require(sd, 'decoder_blocks.0.mlp.fc1.weight').shape[0])
    local = 'decoder_blocks.0.attn.tau' in sd
    mode = args.get('decoder_mode')
    if isinstance(mode, int) and mode != int(local):
      raise ConvertError(
          f'the checkpoint\'s args.decoder_mode={mode}, but its decoder '
          'blocks are ' + ('local (attn.tau, attn.meta_mlp: decoder_mode 1)'
                           if local else 'ViT blocks (decoder_mode 0)'))
    vit_layout.expect_decoder_ends(report, width, dec_width, tokens,
                                   patch_dim)
    if local:
      dec_heads, dec_qv, dec_qkv = _expect_local_blocks(
          report, sd, dec_depth, dec_width, dec_mlp)
    else:
      dec_qv, dec_qkv = vit_layout.expect_blocks(
          report, sd, 'decoder_blocks.', dec_depth, dec_width, dec_mlp)
  report.check()

  # Sizes.
  size_name, heads, variant = vit_layout.encoder_variant(
      width, depth, mlp, (ph, pw), options.num_heads)
  shift = (0, 0) if args.get('no_shift') is True else OFFICIAL_SHIFT
  if kind == 'pretrain':
    if local:
      if options.decoder_heads and options.decoder_heads != dec_heads:
        raise ConvertError(f'--decoder_heads={options.decoder_heads}: the '
                           f'decoder\'s attn.tau has {dec_heads} heads')
    else:
      dec_heads = options.decoder_heads or (
          mae_format.OFFICIAL_DECODER_HEADS
          if dec_width == mae_format.OFFICIAL_DECODER_WIDTH else None)
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
  else:
    decoder = OFFICIAL_DECODER
    local = True

  # The fixed tables.
  pos_kind, diff = check_fixed_table(sd, 'pos_embed', grid, width)
  checked = [f'pos_embed {diff:.2g}']
  if kind == 'pretrain':
    dec_kind, dec_diff = check_fixed_table(sd, 'decoder_pos_embed', grid,
                                           dec_width)
    if dec_kind != pos_kind:
      raise ConvertError(f'pos_embed is the {pos_kind} table but '
                         f'decoder_pos_embed the {dec_kind} one: mae_jax has '
                         'one kind for both')
    checked.append(f'decoder_pos_embed {dec_diff:.2g}')

  # Config.
  c = config_lib.base_config()
  c.model.variant = variant
  c.model.decoder = decoder
  c.model.decoder_attention = 'local' if local else 'global'
  c.model.decoder_window, c.model.decoder_shift = OFFICIAL_WINDOW, shift
  c.model.frames = 0
  recipes.spectrogram_input(c, frames=size[0], mel_bins=size[1])
  c.model.pos_embed = pos_kind
  c.model.cls_token = True
  c.masking.name = options.masking or 'random'
  ratio = args.get('mask_ratio')
  c.masking.ratio = options.mask_ratio or (
      float(ratio) if isinstance(ratio, float) else DEFAULT_MASK_RATIO)
  norm_pix = args.get('norm_pix_loss')
  c.target = 'norm_pixels' if norm_pix in (True, None) else 'pixels'
  # AudioMAE's AudioSet-2M schedule (33 epochs, 3 of warmup).
  c.total_epochs, c.optim.warmup_epochs = 33.0, 3.0
  if kind == 'encoder':
    c.evals.reconstruction.enabled = False

  # Parameters.
  f32 = lambda key: as_array(sd[key]).astype(np.float32)
  params = {**vit_layout.stem_from_torch(sd),
            'encoder_norm/scale': f32('norm.weight'),
            'encoder_norm/bias': f32('norm.bias')}
  for name, x in vit_layout.blocks_from_torch(
      sd, 'blocks.', depth, width, heads, has_qv, has_qkv).items():
    params[f'encoder/layers/{name}'] = x
  if kind == 'pretrain':
    params.update(vit_layout.decoder_ends_from_torch(sd))
    # The local block's qkv / proj / norms / MLP have a ViT block's keys
    # and layouts (qkv rows (q|k|v, head, dim), proj columns (head, dim)).
    layers = vit_layout.blocks_from_torch(sd, 'decoder_blocks.', dec_depth,
                                          dec_width, dec_heads, dec_qv,
                                          dec_qkv)
    if local:
      layers.update(_local_extras(sd, dec_depth))
    for name, x in layers.items():
      params[f'decoder/layers/{name}'] = x

  # What was decided.
  what = {'pretrain': 'a pretraining checkpoint with its decoder (decoder_'
                      f'mode {int(local)})',
          'encoder': 'an encoder-only pretraining checkpoint (no decoder)'}
  notes.append(f'read {what[kind]}')
  notes.append(f'encoder ViT-{size_name}: width {width}, depth {depth}, MLP '
               f'{mlp}, {heads} heads (mae_jax\'s size table, the same as '
               f'the official models\'), patch {ph}x{pw}, 1 channel')
  notes.append(f'spectrogram {size[0]} frames x {size[1]} mel bins (a '
               f'{grid[0]}x{grid[1]} token grid): from {size_from}')
  notes.append(f'fixed position tables: {pos_kind} (' + (
      'AudioMAE\'s: the sin-cos table of the swapped grid in token order'
      if pos_kind == 'sincos_audiomae' else 'the standard 2-D sin-cos table')
      + '), largest difference: ' + ', '.join(checked))
  if kind == 'pretrain' and local:
    notes.append(
        f'decoder {decoder}, local attention: window {OFFICIAL_WINDOW}, '
        f'blocks 1, 3, ... shifted by {shift} ('
        + ('args.no_shift' if shift == (0, 0) else 'AudioMAE\'s')
        + f'); {dec_heads} heads (from attn.tau)')
  elif kind == 'pretrain':
    notes.append(f'decoder {decoder}, global attention: {dec_heads} heads ('
                 + ('--decoder_heads' if options.decoder_heads else
                    'the official decoder\'s') + ')')
  else:
    notes.append(
        'the checkpoint has no decoder: decoder, decoder_embed, mask_token '
        f'and decoder_pred are freshly initialized ({decoder}, AudioMAE\'s '
        'local decoder; --set=model.decoder=... and '
        '--set=model.decoder_attention=global for another), so '
        'reconstructions mean nothing until it is trained: the '
        'reconstruction evaluator is off. The encoder is the checkpoint\'s')
  target_from = ('the checkpoint\'s args.norm_pix_loss' if 'norm_pix_loss'
                 in args else 'AudioMAE\'s default, norm_pix_loss=True')
  notes.append(f'masking {c.masking.name} {c.masking.ratio}, target '
               f'{c.target} ({target_from})')
  fresh = (mae_format.DECODER_PARAMS + ('sampler',) if kind == 'encoder'
           else ('sampler',))
  return Converted(c, params, notes, fresh)

