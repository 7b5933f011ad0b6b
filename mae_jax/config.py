"""The config schema: every key, its default, and the checks that reject a bad
value before anything is compiled.

Config files in configs/ start from `base_config()` and change what they need;
the result is locked, so a misspelt `--config.KEY=VALUE` fails at once.
"""

from __future__ import annotations

import math

import ml_collections
from ml_collections import config_dict

from mae_jax import masking, sharding, targets, tracking
from mae_jax.errors import ConfigError  # pylint: disable=unused-import (re-exported)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # The meaning of the saved keys; configs saved without it are version 1
  # (before the official MAE's sin-cos channel order: see upgrade()).
  c.version = VERSION
  c.seed = 0  # model init, masking and data order all derive from it

  c.model = ml_collections.ConfigDict(dict(
      variant='mu/4',       # "<size>/<patch>", sizes mu Ti S M B L H g G e
      decoder='64d1b',      # "<width>d<blocks>b[<heads>h]"; MAE default 512d8b
      # The decoder's blocks: 'global' (ViT blocks, every token attends to
      # every token) or 'local' (AudioMAE's Swin-style blocks over windows
      # of the 2-D token grid, every second block shifted; '512d16b16h' is
      # AudioMAE's). A window larger than the grid is clipped to it (no
      # shift along that axis).
      decoder_attention='global',
      decoder_window=(4, 4),  # local: window in tokens (grid rows, columns)
      decoder_shift=(2, 0),   # local: cyclic shift of blocks 1, 3, 5, ...
      # int (square) or (H, W); any type on the command line:
      # --config.model.image_size=224 or --config.model.image_size='(224,160)'
      image_size=config_dict.FieldReference(32, field_type=object),
      frames=0,             # 0: images [H, W, C]; T > 0: clips [T, H, W, C]
                            # (patch "<t>x<h>x<w>", e.g. variant 'B/2x16x16')
      spectrogram=False,    # inputs are log-mel spectrograms [T, F, 1]:
                            # image_size (T frames, F mel bins), channels 1
                            # (audio sources, API waveforms, pictures)
      channels=3,
      # Position embedding of encoder and decoder (models/position.py):
      # sincos (separable over the grid axes, the official MAE's channel
      # order), sincos_yx (the same, axes in the other order), sincos_flat (VideoMAE: one
      # 1-D table over the flat token index), learned_separable (MAE-ST:
      # learned space + time tables, and one for the cls token),
      # sincos_audiomae (the table AudioMAE's checkpoints were trained with).
      pos_embed='sincos',
      cls_token=True,
      dtype='float32',      # compute dtype: float32 or bfloat16 (params stay fp32)
      attention='',         # '' = best for the backend, 'xla', or 'cudnn'
      remat='none',         # none | full | dots | names
      remat_names=('attn_qkv', 'mlp_hidden'),  # kept activations for remat=names
      scan_unroll=1,        # blocks per scan iteration (1 = fully rolled)
  ))
  # Masking strategies (masking.py): random | tube | frame | dual |
  # motion | adaptive | time | freq | time_freq | specaugment.
  # ratio: fraction of tokens the encoder does not see (random, tube,
  # frame, dual, motion, adaptive; time and freq: of time rows / mel columns).
  c.masking = ml_collections.ConfigDict(dict(
      name='random', ratio=0.75,
      decoder_ratio=0.5,    # dual: fraction the decoder drops (running cell)
      motion_radius=1,      # motion: block-matching search radius, in tokens
      sampler_weight=1e-4,  # adaptive: weight of the sampler's loss term
      # Spectrograms, (t, f) token grids (audio_masking.py). time_freq
      # (AudioMAE's 2-D masking; its mask_t_prob, mask_f_prob) keeps
      # int(n * (1 - ratio)) of the n rows / columns; specaugment hides one
      # band of round(ratio * n) rows and one of columns.
      time_ratio=0.6,       # time_freq, specaugment: fraction of time rows
      freq_ratio=0.5,       # time_freq, specaugment: fraction of mel columns
  ))
  # What a run trains (tasks.py): 'pretrain' (the masked autoencoder) or
  # 'classify' (fine-tuning an encoder with a linear head, config.classify;
  # start it from pretrained parameters with config.init_from).
  c.task = 'pretrain'
  # Fine-tuning (MAE, He et al. 2022, appendix A.3; the defaults are its
  # ViT-B recipe). Augmentations run on the device in the step (augment.py).
  c.classify = ml_collections.ConfigDict(dict(
      num_classes=0,        # the head's classes (> 0 when task='classify')
      pool='mean',          # mean (+ a fresh LayerNorm, MAE's global_pool) | cls
      trainable_pos_embed=True,  # a fixed position table becomes a parameter
      drop_path=0.1,        # stochastic depth of the last block (linear in depth)
      head_init_std=2e-5,   # head weights ~ N(0, std^2), as the official code
      label_smoothing=0.1,
      mixup=0.8,            # Beta(alpha, alpha) of mixup; 0 = off
      cutmix=1.0,           # Beta(alpha, alpha) of cutmix; 0 = off
      mix_prob=1.0,         # probability that a batch is mixed
      mix_switch_prob=0.5,  # with both on: probability of cutmix
      randaugment_ops=2,    # RandAugment (9, 0.5): ops per image (0 = off)
      randaugment_magnitude=9,
      randaugment_magnitude_std=0.5,
      random_erase=0.25,    # probability of erasing a box per example (0 = off)
      masking='',           # tokens hidden from the encoder while fine-tuning:
                            # '' = none, or a masking strategy with the options
                            # of config.masking (AudioMAE: 'time_freq' with
                            # time_ratio = freq_ratio = 0.2)
  ))
  # pixels | norm_pixels (MAE's norm_pix_loss) | norm_pixels_channel
  # (VideoMAE: per patch and per channel, unbiased std)
  c.target = 'norm_pixels'

  c.data = ml_collections.ConfigDict(dict(
      source='synthetic',   # mnist | digits | synthetic | folder | array_record | tfds
                            # | moving_digits | video_files (clips: model.frames > 0)
                            # | audio_files (spectrograms: image_size (T, F), channels 1)
      split='train',        # pretraining split
      eval_split='test',    # split the evaluators test on ('' = none)
      path='',              # folder: a directory; array_record: a glob; video_files: a
                            # manifest CSV of "path[,label]" lines; '{split}' is replaced
      tfds_name='',         # tfds: dataset name, e.g. 'imagenet2012'
      tfds_data_dir='',     # tfds: its data_dir ('' = TFDS default)
      record_format='example',  # array_record: 'example' (tf.train.Example) |
                                # 'image_bytes' | 'clip' (decoded frames, written by
                                # python -m mae_jax.data.video_prepare)
      image_key='image',    # feature names inside records
      label_key='label',    # moving_digits: 'label' (= digit) or 'direction'
      # Clips (model.frames > 0): frames are taken every `frame_stride`
      # frames of the video from a random start (the centre in evaluation);
      # each decoded video gives `clips_per_video` clips (repeated sampling,
      # MAE-ST), each with its own crop and start.
      frame_stride=4,
      clips_per_video=1,
      video_root='',        # manifest paths (video_files, audio_files) are
                            # relative to this ('' = the manifest's folder)
      multi_label=False,    # labels are class sets (manifests: "path,3;17;40"):
                            # fine-tuning uses a sigmoid loss and reports mAP
      num_classes=0,        # multi_label: classes of the set (AudioSet: 527)
      # Audio (audio_files): files are resampled to sample_rate and made into
      # Kaldi log-mel filterbanks (25 ms windows every 10 ms, AudioMAE), an
      # input [T, F, 1] = (model.image_size, channels 1): T frames (1024 =
      # 10.24 s), F mel bins (128); mean / std are the data set's (AudioSet
      # in AudioMAE: -4.27 and 2 x 4.57).
      sample_rate=16000,
      random_gain=False,    # audio training: scale the waveform by
                            # Beta(10, 10) + 0.5 (AudioMAE's roll_mag_aug,
                            # whose roll is always 0 in the official code)
      moving_digits=dict(videos=2000, video_frames=16, size=32, digit_size=14,
                         speed=(1.0, 2.5)),  # the synthetic clip source
      synthetic_examples=1024,  # size of the synthetic source
      crop_scale=(0.2, 1.0),    # random resized crop area range (MAE: 0.2-1.0)
      crop_ratio=(3 / 4, 4 / 3),
      hflip=True,
      eval_crop=1.0,        # evaluation: the centre crop keeps this fraction of
                            # the shorter side (timm / MAE: 224 / 256 = 0.875)
      mean=(0.485, 0.456, 0.406),  # per-channel normalization (ImageNet)
      std=(0.229, 0.224, 0.225),
      worker_count=0,       # grain worker processes (0 = in the main process)
      read_threads=4,       # grain threads reading/decoding per process
      prefetch_batches=2,   # batches prepared ahead on the host
      skip_bad_records=False,  # False: raise on a bad record; True: replace it by
                               # the next good record and count it
      trace_indices=False,  # write each step's source record ids per process
                            # to <workdir>/data_trace/ (debugging data order)
  ))

  c.batch_size = 256      # global, across all processes (and micro-batches)
  c.grad_accum_steps = 1  # micro-batches per step: same update, 1/k activations
  c.total_steps = 0       # one of total_steps / total_epochs must be > 0
  c.total_epochs = 0.0
  c.stop_at_step = 0      # > 0: save and stop there (split a run into jobs);
                          # the schedule still spans the whole run
  c.optim = ml_collections.ConfigDict(dict(
      base_lr=1.5e-4,       # lr = base_lr * batch_size / lr_batch_base (MAE)
      lr_batch_base=256,
      warmup_steps=0,       # or warmup_epochs; linear warmup then cosine decay
      warmup_epochs=0.0,
      min_lr=0.0,
      b1=0.9,
      b2=0.95,
      weight_decay=0.05,    # on weight matrices only: not norms, biases, tokens
      clip_norm=0.0,        # global-norm gradient clipping; 0 = off
      mu_dtype='',          # Adam first moment dtype ('' = param dtype, or bfloat16)
      layer_decay=1.0,      # < 1: layer-wise lr decay (fine-tuning, BEiT/MAE):
                            # block i (0-based) gets lr x layer_decay^(depth - i),
                            # the embeddings ^(depth + 1), the head and norms ^0
      ema_decay=0.0,        # > 0: keep an EMA of the weights (e.g. 0.9999); the
                            # evaluators also score it (keys ema/...)
  ))

  c.mesh = ml_collections.ConfigDict(dict(dcn=1, data=-1, fsdp=1, tensor=1))
  c.sharding = ml_collections.ConfigDict(dict(
      rules=sharding.DEFAULT_RULES,
      min_sharded_bytes=64 * 2**20,  # larger params must not be replicated
  ))

  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.resume_step = 0       # 0: resume from the latest checkpoint; K: from step K
                          # (the later ones move to <workdir>/history/)
  c.init_from = ''        # a new run starts from the parameters of this
                          # checkpoint (a workdir, its checkpoints/ or one step
                          # dir; e.g. from `python -m mae_jax.convert`): step,
                          # optimizer and data start fresh. A checkpoint in
                          # the workdir itself takes precedence (resume).
  c.checkpoint_timeout_s = 3600.0  # a save still unfinished after this stops
                                   # the run with an error (0 = wait forever)
  c.peer_timeout_s = 600.0  # multi-process: every process must reach each
                            # log/checkpoint step within this of the others
  c.progress = True       # console progress line
  # Evaluators (mae_jax/evaluators): each runs at the end of training and every
  # `every_steps` steps if > 0; `python -m mae_jax.evaluate` runs them on a
  # workdir. The feature evaluators also score the same architecture at
  # random init on the same split, so the gain from pretraining is visible.
  c.evals = ml_collections.ConfigDict(dict(
      # task='classify': top-1 / top-5 of the head on data.eval_split
      classification=dict(enabled=False, every_steps=0, max_examples=0),
      reconstruction=dict(enabled=True, every_steps=0, num_images=8),
      # MAE's linear probe (appendix A.2, Table 10): parameter-free BatchNorm +
      # linear head, LARS, lr = base_lr * batch / 256 (batch capped at the
      # examples), warmup then cosine. On far fewer examples than ImageNet's
      # 1.28M, raise base_lr (LARS moves weights relative to their norm).
      linear_probe=dict(enabled=False, every_steps=0, pool='mean',
                        max_train_examples=0, max_test_examples=0, epochs=90,
                        warmup_epochs=10.0, base_lr=0.1, batch_size=16384,
                        weight_decay=0.0),
      # V-JEPA-style attentive probe on the frozen patch tokens: one learned
      # query cross-attends (num_heads heads, dividing the width) + MLP, AdamW.
      attentive_probe=dict(enabled=False, every_steps=0, max_train_examples=0,
                           max_test_examples=0, epochs=20, warmup_epochs=2.0,
                           lr=1e-3, weight_decay=0.05, batch_size=256,
                           num_heads=4),
      knn=dict(enabled=False, every_steps=0, pool='mean', max_train_examples=0,
               max_test_examples=0, k=20, temperature=0.07),
  ))
  c.eval_batch_size = 256  # global batch for feature extraction
  # Optional W&B / MLflow runs beside metrics.jsonl and TensorBoard (tracking.py).
  c.tracking = tracking.default_config()
  return c


VERSION = 2


def upgrade(saved: dict) -> dict:
  """A config saved by an older mae_jax, in today's meaning of its keys.

  Version 1 (no `version` key) filled the sin-cos channels first axis first
  (y then x); 'sincos' now means the official MAE's order, so those
  checkpoints name their order 'sincos_yx'.
  """
  saved = dict(saved)
  if saved.get('version', 1) < 2:
    model = dict(saved.get('model', {}))
    if model.get('pos_embed', 'sincos') == 'sincos':
      model['pos_embed'] = 'sincos_yx'
    saved['model'], saved['version'] = model, 2
  return saved


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A config saved in a checkpoint, upgraded (upgrade()) and with the keys
  added to mae_jax since taking their defaults (which reproduce the
  behaviour before them), so older checkpoints keep loading."""
  def merge(default, value):
    if isinstance(default, dict) and isinstance(value, dict):
      return {**default, **{k: merge(default.get(k), v)
                            for k, v in value.items()}}
    return value
  return ml_collections.ConfigDict(merge(base_config().to_dict(),
                                         upgrade(saved)))


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c.lock()
  return c


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Config-file argument "variant=B/16,epochs=800" -> ConfigDict typed like
  `defaults` (big_vision style: configs/NAME.py:ARG)."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep or key not in defaults:
      raise ConfigError(f'config argument {item!r}: expected KEY=VALUE with KEY '
                        f'one of {sorted(defaults)}')
    kind = type(defaults[key])
    if kind is bool:
      if value.lower() not in ('true', 'false', '1', '0'):
        raise ConfigError(f'config argument {key}={value!r}: expected true/false')
      out[key] = value.lower() in ('true', '1')
    else:
      try:
        out[key] = kind(value)
      except ValueError:
        raise ConfigError(f'config argument {key}={value!r}: expected a value '
                          f'of type {kind.__name__}') from None
  return out


_DTYPES = ('float32', 'bfloat16')
_ATTENTION = ('', 'xla', 'cudnn')


def _fail(key: str, value, allowed: str):
  raise ConfigError(f'config.{key}={value!r}: {allowed}')


def image_size(c) -> tuple[int, int]:
  s = c.model.image_size
  return (s, s) if isinstance(s, int) else tuple(s)


def _check_image_size(value) -> None:
  ok = (isinstance(value, int) and not isinstance(value, bool) and value > 0
        ) or (isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0
            for v in value))
  if not ok:
    _fail('model.image_size', value, 'must be a positive int (square) or an '
          "(H, W) pair, e.g. --config.model.image_size='(224,160)'")


def spatial_shape(c) -> tuple[int, ...]:
  """The axes the patches tile: (H, W) for images, (T, H, W) for clips."""
  frames = (c.model.frames,) if c.model.frames else ()
  return (*frames, *image_size(c))


def input_shape(c) -> tuple[int, ...]:
  """One example as the model sees it: (H, W, C) for images, (T, H, W, C)
  for clips; a batch is (B, *this). The model, data, planner, bench, API and
  pictures all read the input's shape from here."""
  return (*spatial_shape(c), c.model.channels)


def validate(c: ml_collections.ConfigDict, num_devices: int | None = None,
             process_count: int = 1, check_files: bool = True) -> None:
  """Raises ConfigError naming the key and what is allowed. Cheap: no jax work.

  check_files=False does not look for the data on disk (planning elsewhere).
  """
  try:
    _validate(c, num_devices, process_count, check_files)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _validate(c, num_devices, process_count, check_files) -> None:
  # Imported here: the model modules import this one's neighbours.
  from mae_jax.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  from mae_jax.models import mae, tokenizers, vit  # pylint: disable=g-import-not-at-top

  size = vit.decode_variant(c.model.variant)
  dec = mae.decode_decoder(c.model.decoder)
  _check_image_size(c.model.image_size)
  if not isinstance(c.model.frames, int) or c.model.frames < 0:
    _fail('model.frames', c.model.frames, 'must be 0 (images) or the number '
          'of frames T > 0 of a clip')
  spatial = spatial_shape(c)
  if len(spatial) != len(size.patch):
    what = (f'clips of model.frames={c.model.frames} need a 3-D tubelet, e.g. '
            f'"{c.model.variant.split("/")[0]}/2x16x16"' if c.model.frames else
            'images (model.frames=0) need a 2-D patch, e.g. "B/16", or set '
            'model.frames for clips')
    _fail('model.variant', c.model.variant, what)
  if any(s % p for s, p in zip(spatial, size.patch)):
    key = 'model.frames' if spatial[0] % size.patch[0] and c.model.frames else 'model.image_size'
    _fail(key, c.model[key.split('.')[1]],
          f'input {spatial} must be divisible by the patch {size.patch} of '
          f'model.variant={c.model.variant!r}')
  if c.model.channels < 1:
    _fail('model.channels', c.model.channels, 'must be >= 1')
  grid = tokenizers.grid_shape(spatial, size.patch)
  from mae_jax.models import position  # pylint: disable=g-import-not-at-top
  position.get(c.model.pos_embed)
  for key, width in (('model.variant', size.width), ('model.decoder', dec.width)):
    try:
      position.check(c.model.pos_embed, grid, width)
    except ValueError as e:
      _fail(key, getattr(c.model, key.split('.')[1]), str(e))
  if c.model.dtype not in _DTYPES:
    _fail('model.dtype', c.model.dtype, f'allowed {_DTYPES}')
  if c.model.attention not in _ATTENTION:
    _fail('model.attention', c.model.attention, f'allowed {_ATTENTION}')
  vit.remat_policy(c.model.remat, c.model.remat_names)
  if c.model.scan_unroll < 1:
    _fail('model.scan_unroll', c.model.scan_unroll, 'must be >= 1')

  strategy = masking.get(c.masking.name)
  ratio = c.masking.ratio
  if not 0.0 < ratio < 1.0:
    _fail('masking.ratio', ratio, 'must be in the open interval (0, 1)')
  strategy.check(grid, masking.options(c.masking))
  mae.check_decoder_attention(c.model.decoder_attention,
                              tuple(c.model.decoder_window),
                              tuple(c.model.decoder_shift), grid, strategy)
  kept = strategy.kept(grid, masking.options(c.masking))
  if kept < 1:
    _fail('masking.ratio', ratio, f'keeps {kept} of {math.prod(grid)} patches '
          f'with masking.name={c.masking.name!r}; at least one must stay '
          'visible')
  targets.get(c.target)
  _check_task(c)

  sources.check_config(c.data, check_files)
  sources.check_audio(c.data, c.model)
  pipeline.check_norm(c.data, c.model.channels)

  if c.batch_size < 1:
    _fail('batch_size', c.batch_size, 'must be >= 1')
  if c.batch_size % process_count:
    _fail('batch_size', c.batch_size,
          f'must be divisible by the number of processes ({process_count})')
  pipeline.check_clips(c.data, c.model.frames, c.batch_size // process_count)
  if c.grad_accum_steps < 1 or c.batch_size % c.grad_accum_steps:
    _fail('grad_accum_steps', c.grad_accum_steps,
          f'must be >= 1 and divide batch_size={c.batch_size}')
  if num_devices is not None:
    mesh = sharding.mesh_shape(c.mesh, num_devices)
    dp = mesh['dcn'] * mesh['data'] * mesh['fsdp']
    micro = c.batch_size // c.grad_accum_steps
    if micro % dp:
      _fail('batch_size', c.batch_size,
            f'{"per micro-batch " if c.grad_accum_steps > 1 else ""}must be '
            f'divisible by the data-parallel size {dp} '
            f'(mesh.dcn x mesh.data x mesh.fsdp = {mesh})')
  sharding.validate_rules(c.sharding.rules)

  if (c.total_steps > 0) == (c.total_epochs > 0):
    _fail('total_steps', c.total_steps,
          f'set exactly one of total_steps / total_epochs to a positive value '
          f'(total_epochs={c.total_epochs})')
  o = c.optim
  if o.base_lr <= 0:
    _fail('optim.base_lr', o.base_lr, 'must be > 0')
  if o.warmup_steps < 0 or o.warmup_epochs < 0:
    _fail('optim.warmup_steps', o.warmup_steps, 'warmup must be >= 0')
  if not (0 <= o.b1 < 1 and 0 <= o.b2 < 1):
    _fail('optim.b1', (o.b1, o.b2), 'Adam betas must be in [0, 1)')
  if o.mu_dtype not in ('',) + _DTYPES:
    _fail('optim.mu_dtype', o.mu_dtype, f"allowed '' or {_DTYPES}")
  if o.weight_decay < 0 or o.clip_norm < 0:
    _fail('optim.weight_decay', o.weight_decay,
          'weight_decay and clip_norm must be >= 0')
  if c.stop_at_step < 0:
    _fail('stop_at_step', c.stop_at_step, 'must be >= 0 (0 = run to the end)')
  for key in ('log_every', 'checkpoint_every', 'keep_checkpoints'):
    if c[key] < 1:
      _fail(key, c[key], 'must be >= 1')
  if c.resume_step < 0:
    _fail('resume_step', c.resume_step,
          'must be >= 0 (0 = the latest checkpoint)')
  if c.checkpoint_timeout_s < 0:
    _fail('checkpoint_timeout_s', c.checkpoint_timeout_s,
          'must be >= 0 (0 = no limit)')
  if c.peer_timeout_s <= 0:
    _fail('peer_timeout_s', c.peer_timeout_s, 'must be > 0')
  from mae_jax import evaluators  # pylint: disable=g-import-not-at-top
  evaluators.check_config(c)
  tracking.check_config(c)


def _check_task(c) -> None:
  from mae_jax import tasks  # pylint: disable=g-import-not-at-top (cycle)
  if c.task not in tasks.TASKS:
    _fail('task', c.task, f'allowed {sorted(tasks.TASKS)}')
  if not 0.0 <= c.optim.ema_decay < 1.0:
    _fail('optim.ema_decay', c.optim.ema_decay, 'must be in [0, 1) (0 = off)')
  if not 0.0 < c.optim.layer_decay <= 1.0:
    _fail('optim.layer_decay', c.optim.layer_decay,
          'must be in (0, 1] (1 = no layer-wise decay)')
  tasks.check(c)


def open_split(c: ml_collections.ConfigDict, split: str, who: str,
               opened: dict | None = None):
  """The data source of `split`, or ConfigError saying that `who` reads it
  and why it cannot be opened (a missing folder, split or dataset, none of
  its files, or no examples). `opened`: split -> source already opened at
  this start (a folder of a million files is listed once, not per reader)."""
  if opened is not None and split in opened:
    return opened[split]
  from mae_jax import data  # pylint: disable=g-import-not-at-top
  try:
    source = data.open_source(c.data, split, image_size=image_size(c),
                              channels=c.model.channels,
                              frames=c.model.frames)
  except (ValueError, OSError) as e:
    raise ConfigError(f'{who} reads split {split!r}: {e}') from None
  if not len(source):
    raise ConfigError(f'{who} reads split {split!r} of config.data.source='
                      f'{c.data.source!r}, which is empty')
  if opened is not None:
    opened[split] = source
  return source
