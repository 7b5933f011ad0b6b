"""VideoMAE pretraining (Tong et al. 2022) on Kinetics-400 or SSv2: the
official recipe (MCG-NJU/VideoMAE, scripts/*/pretrain.sh, modeling_pretrain.py).

ViT-S/B/L/H encoder on 16 frames at 224x224 in 2x16x16 tubelets
(8 x 14 x 14 = 1568 tokens), frames taken every 4 (K400, "16x4") or every 2
(SSv2, "16x2") frames; tube masking at 0.9 (the same 176 of 196 positions
hidden in all 8 time steps: 160 visible tokens); fixed 1-D sin-cos position
table over the flat token index (`sincos_flat`), no cls token; targets are
pixels normalized per tubelet and per channel (`norm_pixels_channel`, the
official `normlize_target`); decoder as in the official code:
  S: 192 wide, 4 blocks, 3 heads   (192d4b3h)
  B: 384 wide, 4 blocks, 6 heads   (384d4b6h)
  L: 512 wide, 12 blocks, 8 heads  (512d12b8h; the scripts' --decoder_depth 12)
  H: 640 wide, 12 blocks, 8 heads  (640d12b8h)
AdamW (0.9, 0.95), weight decay 0.05, base lr 1.5e-4 with lr = base_lr x
batch / 256 (optim.lr_batch_base = 256 gives the official rule as is; e.g. B:
1.5e-4 x 2048 / 256 = 1.2e-3), min lr 1e-5 x batch / 256, 40 warmup epochs
then cosine. Batch (clips = videos; VideoMAE draws one clip per video): the
scripts' per-GPU batch x 64 GPUs: S 1024 (K400, 32 GPUs) / 2048 (SSv2),
B 2048, L 512, H 1024 (the paper's appendix says 1024; the authors answer
that both work, MCG-NJU/VideoMAE#64). Epochs: 800 or 1600 (K400), 800 or
2400 (SSv2). Augmentation: GroupMultiScaleCrop (crop sides drawn from
{1, .875, .75, .66} x the short side) approximated by our random resized crop
with area 0.3-1 of the frame and aspect 3/4-4/3; no flip (the official
pretraining does not flip). bfloat16 compute; H with remat=full (the official
--use_checkpoint). Data: a manifest CSV per split, "path[,label]" lines
(mae_jax.data.video_prepare writes one), at /data/<dataset>/{split}.csv by
default; set --config.data.path.

  python -m mae_jax.main --config=configs/videomae.py:variant=B/2x16x16,dataset=k400,epochs=1600 \\
      --workdir=$WORKDIR --config.data.path=/data/k400/{split}.csv
  # on 8 x 80 GiB GPUs add --config.model.remat=full (planned: 45 GiB per
  # device; without it 190 GiB); a TPU v5p-64 needs no remat (32.5 GiB)
  python -m mae_jax.main --config=configs/videomae.py:variant=B/2x16x16,dataset=ssv2,epochs=2400 \\
      --workdir=$WORKDIR --config.data.path=/data/ssv2/{split}.csv

Expected (official MODEL_ZOO.md, fine-tuned top-1, 16 frames x 5 clips x 3
crops on K400, 16x2x3 on SSv2; fine-tuning is not part of this config):
K400: S 79.0 (1600 ep), B 80.0 (800 ep) / 81.5 (1600 ep), L 85.2 (1600 ep),
H 86.6 (1600 ep). SSv2: S 66.8 (2400 ep), B 69.6 (800 ep) / 70.8 (2400 ep).
The built-in probe / k-NN on mean-pooled frozen features of subsets are a
quicker, much weaker signal.

`runlocal=true` keeps the recipe's shape (tube masking 0.9, sincos_flat, no
cls token, norm_pixels_channel, the frame stride) on a tiny model and the
`moving_digits` synthetic clips (8 frames of 32x32, 2x8x8 tubelets), for a
few steps on any machine.
"""

from mae_jax import config as config_lib
from mae_jax import recipes

# size -> decoder (official modeling_pretrain.py + scripts' --decoder_depth).
DECODERS = {'S': '192d4b3h', 'B': '384d4b6h', 'L': '512d12b8h',
            'H': '640d12b8h'}
# (size, dataset) -> global batch of the official scripts.
BATCH = {('S', 'k400'): 1024, ('S', 'ssv2'): 2048, ('B', 'k400'): 2048,
         ('B', 'ssv2'): 2048, ('L', 'k400'): 512, ('L', 'ssv2'): 512,
         ('H', 'k400'): 1024, ('H', 'ssv2'): 1024}
STRIDE = {'k400': 4, 'ssv2': 2}
EPOCHS = {'k400': 1600, 'ssv2': 2400}
EVAL_SPLIT = {'k400': 'val', 'ssv2': 'val'}


def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, variant='B/2x16x16', dataset='k400', epochs=0,
                           batch=0, runlocal=False)
  size = a.variant.split('/')[0]
  if size not in DECODERS:
    raise config_lib.ConfigError(
        f'config argument variant={a.variant!r}: VideoMAE has sizes '
        f'{sorted(DECODERS)} (e.g. variant=B/2x16x16)')
  if a.dataset not in STRIDE:
    raise config_lib.ConfigError(
        f'config argument dataset={a.dataset!r}: expected one of '
        f'{sorted(STRIDE)}')
  c = config_lib.base_config()
  c.model.variant = a.variant
  c.model.decoder = DECODERS[size]
  c.model.frames = 16
  c.model.image_size = 224
  c.model.channels = 3
  c.model.pos_embed = 'sincos_flat'
  c.model.cls_token = False
  c.model.dtype = 'bfloat16'
  c.model.remat = 'full' if size == 'H' else 'none'
  c.masking.name, c.masking.ratio = 'tube', 0.9
  c.target = 'norm_pixels_channel'

  c.data.source = 'video_files'
  c.data.path = f'/data/{a.dataset}/{{split}}.csv'
  c.data.split, c.data.eval_split = 'train', EVAL_SPLIT[a.dataset]
  c.data.frame_stride = STRIDE[a.dataset]
  c.data.clips_per_video = 1
  c.data.crop_scale = (0.3, 1.0)
  c.data.crop_ratio = (3 / 4, 4 / 3)
  c.data.hflip = False
  c.data.mean, c.data.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  c.data.worker_count = 8
  c.data.read_threads = 16

  c.batch_size = a.batch or BATCH[size, a.dataset]
  c.total_epochs = float(a.epochs or EPOCHS[a.dataset])
  c.optim.base_lr = 1.5e-4
  c.optim.lr_batch_base = 256
  c.optim.min_lr = 1e-5 * c.batch_size / 256
  c.optim.warmup_epochs = 40.0
  c.optim.weight_decay = 0.05
  c.optim.b1, c.optim.b2 = 0.9, 0.95

  c.log_every = 100
  c.checkpoint_every = 2000
  c.evals.reconstruction.every_steps = 5000
  c.evals.reconstruction.num_images = 4
  recipes.subset_probes(c, 20_000, 5_000)
  c.eval_batch_size = 256

  if a.runlocal:
    recipes.local_clip_run(c)
  return config_lib.finalize(c)
