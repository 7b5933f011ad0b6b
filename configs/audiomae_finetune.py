"""Fine-tuning a pretrained AudioMAE encoder (Huang et al. 2022): the
official recipes (main_finetune_as.py, main_finetune_esc.py, ft_as.sh).

  set     classes  frames  loss            batch  epochs  base_lr  wd      mixup  smoothing  paper
  as20k   527 (ml) 1024    sigmoid (BCE)   32     60      1e-3     5e-4    0.5    0          37.0 mAP
  as2m    527 (ml) 1024    sigmoid (BCE)   512    100     2e-4     5e-4    0.5    0          47.3 mAP
  esc50   50       512     softmax (CE)    64     50      1e-3     0.05    0      0.1        94.1 %

All: ViT-B/16 with global average pooling + LayerNorm, layer-wise lr decay
0.75, drop path 0.1, AdamW (0.9, 0.999), warmup 4 (ESC-50: 5) epochs then
cosine, tokens hidden from the encoder while fine-tuning by AudioMAE's
time + frequency masking (time_freq, 20% of the time rows and 20% of the
frequency columns: the official mask_2d with mask_t_prob = mask_f_prob =
0.2). No RandAugment, cutmix or random erasing (images only). AudioSet is
multi-label: manifests list each clip's classes as "path,3;17;40" and the
classification evaluator reports mAP. ESC-50 is evaluated by 5-fold
cross-validation: one run per fold (manifests fold{1..5}_train.csv /
fold{k}_test.csv; :fold=k picks them), the result is the mean.

  python -m mae_jax.main --config=configs/audiomae_finetune.py:set=as20k \\
      --workdir=$WORKDIR --config.init_from=$PRETRAINED \\
      --config.data.path=/data/audioset20k/{split}.csv

$PRETRAINED is a pretraining workdir (configs/audiomae.py) or a converted
official checkpoint (python -m mae_jax.convert --from=audiomae).
The official roll/magnitude augmentation is data.random_gain (its roll is
always 0 in the official code, only the gain remains). Not reproduced: the
balanced sampling of AudioSet-2M (weighted sampler) and the SpecAugment of
the filterbank in the data loader (freqm 48, timem 192); the token-level
masking above plays that part.

`runlocal=true` keeps the recipe on a tiny model fine-tuned for a few steps
on the generated spoken digits (single-label, 10 classes).
"""

from mae_jax import config as config_lib
from mae_jax import recipes

# set -> (classes, multi-label, frames, batch, epochs, base_lr, weight decay,
#         mixup, label smoothing, warmup epochs)
_SETS = {
    'as20k': (527, True, 1024, 32, 60, 1e-3, 5e-4, 0.5, 0.0, 4),
    'as2m': (527, True, 1024, 512, 100, 2e-4, 5e-4, 0.5, 0.0, 4),
    'esc50': (50, False, 512, 64, 50, 1e-3, 0.05, 0.0, 0.1, 5),
}


def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, set='as20k', fold=1, runlocal=False)
  if a.set not in _SETS:
    raise config_lib.ConfigError(f'configs/audiomae_finetune.py: set='
                                 f'{a.set!r}: allowed {sorted(_SETS)}')
  (classes, multi, frames, batch, epochs, base_lr, wd, mixup, smoothing,
   warmup) = _SETS[a.set]
  c = config_lib.base_config()
  c.task = 'classify'
  c.model.variant = 'B/16'
  c.model.dtype = 'bfloat16'
  if a.set == 'esc50':  # ESC-50's own statistics (the official dataset.py)
    recipes.spectrogram_input(c, frames=frames, mean=-6.6268077,
                                 std=2 * 5.358466)
  else:
    recipes.spectrogram_input(c, frames=frames)

  f = c.classify
  f.num_classes = classes
  f.pool = 'mean'
  f.drop_path = 0.1
  f.label_smoothing, f.mixup, f.cutmix = smoothing, mixup, 0.0
  f.randaugment_ops, f.random_erase = 0, 0.0
  f.masking = 'time_freq'
  c.masking.time_ratio = c.masking.freq_ratio = 0.2

  c.data.source = 'audio_files'
  c.data.random_gain = True  # the official scripts' --roll_mag_aug
  c.data.multi_label = multi
  c.data.num_classes = classes if multi else 0
  if a.set == 'esc50':
    c.data.path = '/data/esc50/{split}.csv'
    c.data.split = f'fold{a.fold}_train'
    c.data.eval_split = f'fold{a.fold}_test'
  else:
    c.data.path = f'/data/{a.set}/{{split}}.csv'
    c.data.split, c.data.eval_split = 'train', 'eval'
  c.data.worker_count = 8
  c.data.read_threads = 16

  c.batch_size = batch
  c.total_epochs = float(epochs)
  c.optim.base_lr = base_lr
  c.optim.layer_decay = 0.75
  c.optim.warmup_epochs = float(warmup)
  c.optim.min_lr = 1e-6
  c.optim.weight_decay = wd
  c.optim.b1, c.optim.b2 = 0.9, 0.999

  c.log_every = 100
  c.checkpoint_every = 2000
  c.evals.reconstruction.enabled = False
  c.evals.classification.enabled = True
  c.evals.classification.every_steps = 2000
  c.eval_batch_size = 256

  if a.runlocal:
    c.model.variant, c.model.dtype = 'mu/16', 'float32'
    recipes.spectrogram_input(c, frames=128, mel_bins=64)
    c.classify.num_classes = 10
    c.data.update(source='spoken_digits', path='', multi_label=False,
                  num_classes=0, split='train', eval_split='test',
                  worker_count=0, read_threads=2)
    c.batch_size, c.total_epochs, c.total_steps = 16, 0.0, 6
    c.optim.warmup_epochs, c.optim.warmup_steps = 0.0, 2
    c.log_every, c.checkpoint_every = 3, 6
    c.evals.classification.every_steps = 0
    c.evals.classification.max_examples = 64
    c.eval_batch_size = 32
  return config_lib.finalize(c)
