"""Tiny config for the tests: a few steps of the mu model on synthetic data.

  python -m mae_jax.main --config=configs/test.py --workdir=/tmp/mae_test

Expected: finishes in seconds on one CPU core; the loss goes down a little.
"""

from mae_jax import config as config_lib


def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, steps=4)
  c = config_lib.base_config()
  c.model.variant = 'mu/4'
  c.model.decoder = '32d1b'
  c.model.image_size = 16
  c.data.source = 'synthetic'
  c.data.synthetic_examples = 64
  c.data.read_threads = 1
  c.data.prefetch_batches = 1
  c.batch_size = 8
  c.eval_batch_size = 16
  c.total_steps = a.steps
  c.optim.base_lr = 1e-3
  c.optim.warmup_steps = 1
  c.log_every = 1
  c.checkpoint_every = 2
  c.progress = False
  c.evals.reconstruction.enabled = False
  c.evals.reconstruction.num_images = 4
  c.evals.linear_probe.epochs = 5
  c.evals.linear_probe.warmup_epochs = 1.0
  c.evals.knn.k = 5
  return config_lib.finalize(c)
