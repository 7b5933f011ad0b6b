"""Linear probing of a pretrained MAE encoder on ImageNet-1k: the paper's
recipe (He et al. 2022, appendix A.2, Table 10, and the official command),
as an evaluation of a pretraining workdir or converted checkpoint.

Frozen encoder -> cls token after the final norm -> BatchNorm without
affine parameters -> linear head; LARS (momentum 0.9, weight decay 0),
lr = 0.1 x batch / 256 with batch 16384, 10 warmup epochs then cosine, 90
epochs. The paper's top-1: 68.0 (B/16), 75.8 (L/16), 76.6 (H/14).

  python -m mae_jax.evaluate --workdir=$PRETRAINED \
      --config=configs/mae_linprobe.py:variant=L/16 --evals=linear_probe \
      --config.data.tfds_data_dir=/data/tfds

One difference from the official code: the head trains on features of the
centre crop extracted once, where the official code augments every epoch
(random resized crop + flip); see mae_jax/evaluators/linear_probe.py.
Features of all 1.28M training images are gathered on every host
(1.28M x D float32: 3.9 GB at B, 5.2 GB at L). The same recipe also runs
k-NN (--evals=knn) and, on a 50k-image subset, the attentive probe
(--evals=attentive_probe: it keeps every patch token of its examples).

`runlocal=true`: the same evaluators on the tiny synthetic setup of
configs/mae_imagenet.py:runlocal=true (a smoke test).
"""

from mae_jax import config as config_lib


def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, variant='L/16', runlocal=False)
  c = config_lib.base_config()
  # The encoder of configs/mae_imagenet.py (checked against the checkpoint).
  c.model.variant = a.variant
  c.model.image_size = 224
  c.model.channels = 3

  c.data.source = 'tfds'
  c.data.tfds_name = 'imagenet2012'
  c.data.split, c.data.eval_split = 'train', 'validation'
  c.data.eval_crop = 0.875  # resize 256, centre crop 224, as the official
  c.data.worker_count = 8
  c.data.read_threads = 16
  c.eval_batch_size = 1024
  c.total_steps = 1  # unused: evaluate reads evals, data and eval_batch_size

  c.evals.reconstruction.enabled = False
  lp = c.evals.linear_probe
  lp.enabled, lp.pool = True, 'cls'
  lp.epochs, lp.warmup_epochs = 90, 10.0
  lp.base_lr, lp.batch_size, lp.weight_decay = 0.1, 16384, 0.0
  c.evals.knn.enabled = True
  c.evals.knn.pool = 'cls'
  ap = c.evals.attentive_probe
  ap.max_train_examples, ap.max_test_examples = 50_000, 10_000
  ap.num_heads = 16

  if a.runlocal:
    c.model.variant, c.model.image_size = 'mu/16', 64
    c.data.source, c.data.worker_count, c.data.read_threads = 'synthetic', 0, 2
    c.data.synthetic_examples = 64
    c.eval_batch_size = 32
    lp.epochs, lp.warmup_epochs, lp.batch_size, lp.base_lr = 5, 1.0, 32, 10.0
    ap.num_heads, ap.epochs, ap.warmup_epochs = 2, 2, 1.0
    c.evals.knn.k = 5
  return config_lib.finalize(c)
