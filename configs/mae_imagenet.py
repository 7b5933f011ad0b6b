"""MAE pretraining on ImageNet-1k (He et al. 2022): the paper's recipe.

ViT-B/16, L/16 or H/14 encoder, 512-wide 8-block decoder, mask ratio 0.75,
normalized-pixel targets, batch 4096, AdamW (0.9, 0.95), weight decay 0.05,
base lr 1.5e-4 (lr = base_lr x batch / 256), 40 warmup epochs then cosine,
random resized crop (scale 0.2-1) + horizontal flip at 224x224, 800 or 1600
epochs. Data: TFDS imagenet2012 prepared in array_record format (no download
happens here); prepared without TensorFlow by the README recipe, add
--config.data.tfds_name=imagenet2012_folder.

  python -m mae_jax.main --config=configs/mae_imagenet.py:variant=L/16,epochs=800 \
      --workdir=$WORKDIR --config.data.tfds_data_dir=/data/tfds

Expected (paper, 1600 epochs): fine-tuned top-1 83.6 (B), 85.9 (L), 86.9 (H);
linear probe 68.0 (B), 75.8 (L), 76.6 (H). Those are configs/mae_finetune.py
and configs/mae_linprobe.py, run on this workdir afterwards; during
pretraining the built-in probe / k-NN give a quick, smaller signal on subsets
(see config.evals).

`runlocal=true` keeps the recipe's shape but runs a few steps of the mu model
on synthetic data (a smoke test of the config on any machine).
"""

from mae_jax import config as config_lib
from mae_jax import recipes


def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, variant='L/16', epochs=800, batch=4096,
                           runlocal=False)
  c = config_lib.base_config()
  c.model.variant = a.variant
  c.model.decoder = '512d8b'
  c.model.image_size = 224
  c.model.channels = 3
  c.model.dtype = 'bfloat16'
  c.masking.name, c.masking.ratio = 'random', 0.75
  c.target = 'norm_pixels'

  c.data.source = 'tfds'
  c.data.tfds_name = 'imagenet2012'
  c.data.split, c.data.eval_split = 'train', 'validation'
  c.data.crop_scale = (0.2, 1.0)
  c.data.hflip = True
  c.data.worker_count = 8
  c.data.read_threads = 16

  c.batch_size = a.batch
  c.total_epochs = float(a.epochs)
  c.optim.base_lr = 1.5e-4
  c.optim.warmup_epochs = 40.0
  c.optim.weight_decay = 0.05
  c.optim.b1, c.optim.b2 = 0.9, 0.95

  c.log_every = 100
  c.checkpoint_every = 2000
  c.evals.reconstruction.every_steps = 5000
  # Quick frozen-feature signals on subsets of the train/validation splits.
  recipes.subset_probes(c, 50_000, 10_000)
  c.eval_batch_size = 1024

  if a.runlocal:
    c.model.variant, c.model.decoder, c.model.image_size = 'mu/16', '64d1b', 64
    c.model.dtype = 'float32'
    c.data.source, c.data.worker_count, c.data.read_threads = 'synthetic', 0, 2
    c.batch_size, c.total_epochs, c.total_steps = 16, 0.0, 10
    c.optim.warmup_epochs, c.optim.warmup_steps = 0.0, 2
    c.log_every, c.checkpoint_every = 5, 10
    c.evals.reconstruction.every_steps = 0
    for name in ('linear_probe', 'knn'):
      c.evals[name].max_train_examples = 256
      c.evals[name].max_test_examples = 128
    c.eval_batch_size = 64
  return config_lib.finalize(c)
