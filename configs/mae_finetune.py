"""Fine-tuning a pretrained MAE encoder on ImageNet-1k: the paper's recipe
(He et al. 2022, appendix A.3, Table 9, and the official commands).

AdamW (0.9, 0.999), weight decay 0.05, lr = base_lr x batch / 256 with batch
1024, 5 warmup epochs then cosine to 1e-6, layer-wise lr decay, drop path,
RandAugment (9, 0.5), label smoothing 0.1, mixup 0.8, cutmix 1.0, random
erasing 0.25, random resized crop (0.08-1) + flip, global average pooling
with a LayerNorm, a trainable position embedding, head initialized N(0, 2e-5).

  variant   epochs  base_lr  layer_decay  drop_path   paper top-1
  B/16      100     5e-4     0.65         0.1         83.6
  L/16       50     1e-3     0.75         0.2         85.9
  H/14       50     1e-3     0.75         0.3         86.9

  python -m mae_jax.main --config=configs/mae_finetune.py:variant=L/16 \
      --workdir=$WORKDIR --config.init_from=$PRETRAINED \
      --config.data.tfds_data_dir=/data/tfds

$PRETRAINED is a pretraining workdir (configs/mae_imagenet.py) or a
converted official checkpoint (python -m mae_jax.convert --from=mae). The
per-variant numbers above are the defaults; the config arguments override
them (e.g. :variant=B/16,epochs=100).

`runlocal=true` keeps the recipe but fine-tunes the mu model for a few steps
on synthetic data (a smoke test on any machine).
"""

from mae_jax import config as config_lib

# variant -> (epochs, base_lr, layer_decay, drop_path): the official commands.
_RECIPES = {'B': (100, 5e-4, 0.65, 0.1), 'L': (50, 1e-3, 0.75, 0.2),
            'H': (50, 1e-3, 0.75, 0.3)}


def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, variant='B/16', epochs=0, batch=1024,
                           runlocal=False)
  size = a.variant.split('/')[0]
  if size not in _RECIPES:
    raise config_lib.ConfigError(f'configs/mae_finetune.py: variant '
                                 f'{a.variant!r}: the recipe has B, L, H')
  epochs, base_lr, layer_decay, drop_path = _RECIPES[size]
  c = config_lib.base_config()
  c.task = 'classify'
  c.model.variant = a.variant
  c.model.image_size = 224
  c.model.channels = 3
  c.model.dtype = 'bfloat16'

  f = c.classify
  f.num_classes = 1000
  f.pool = 'mean'
  f.drop_path = drop_path
  f.label_smoothing, f.mixup, f.cutmix = 0.1, 0.8, 1.0
  f.randaugment_ops, f.randaugment_magnitude = 2, 9
  f.randaugment_magnitude_std = 0.5
  f.random_erase = 0.25

  c.data.source = 'tfds'
  c.data.tfds_name = 'imagenet2012'
  c.data.split, c.data.eval_split = 'train', 'validation'
  c.data.eval_crop = 0.875  # resize 256, centre crop 224, as the official
  c.data.crop_scale = (0.08, 1.0)
  c.data.hflip = True
  c.data.worker_count = 8
  c.data.read_threads = 16

  c.batch_size = a.batch
  c.total_epochs = float(a.epochs or epochs)
  c.optim.base_lr = base_lr
  c.optim.layer_decay = layer_decay
  c.optim.warmup_epochs = 5.0
  c.optim.min_lr = 1e-6
  c.optim.weight_decay = 0.05
  c.optim.b1, c.optim.b2 = 0.9, 0.999

  c.log_every = 100
  c.checkpoint_every = 2000
  c.evals.reconstruction.enabled = False
  c.evals.classification.enabled = True
  c.evals.classification.every_steps = 5000
  c.eval_batch_size = 1024

  if a.runlocal:
    c.model.variant, c.model.image_size, c.model.dtype = 'mu/16', 64, 'float32'
    c.classify.num_classes = 10
    c.data.source, c.data.worker_count, c.data.read_threads = 'synthetic', 0, 2
    c.data.synthetic_examples = 64
    c.batch_size, c.total_epochs, c.total_steps = 16, 0.0, 6
    c.optim.warmup_epochs, c.optim.warmup_steps = 0.0, 2
    c.log_every, c.checkpoint_every = 3, 6
    c.evals.classification.every_steps = 0
    c.eval_batch_size = 32
  return config_lib.finalize(c)
