"""VideoMAE V2 pretraining (Wang et al. 2023, "Scaling Video Masked
Autoencoders with Dual Masking"): the official recipe (OpenGVLab/VideoMAEv2:
scripts/pretrain/vit_{b,l,h,g}_hybrid_pt.sh, models/modeling_pretrain.py).

ViT-g/14 (default: 'g/2x14x14', 1408 wide, 40 blocks, MLP 6144; also B, L,
H with 2x16x16) on 16 frames every 4 frames at 224x224; dual masking:
tube masking at 0.9 for the encoder (8 x 16 x 16 = 2048 tokens, 208 visible
for g), and the decoder reconstructs only the running cell's 50%
(`masking.decoder_ratio=0.5`: 1024 tokens) -- the loss counts the positions
the encoder did not see; fixed 1-D sin-cos positions (`sincos_flat`), no cls
token, per-tubelet per-channel normalized-pixel targets; decoder 512 wide, 4
blocks, 8 heads for L/H (512d4b8h) and g (512d4b8h2234m: the official g
decoder keeps the encoder's MLP ratio 48/11), 384 wide, 6 heads for B (384d4b6h).
Repeated sampling: 4 clips per decoded video (--num_sample 4). AdamW
(0.9, 0.95), weight decay 0.05, cosine schedule; augmentation as VideoMAE
(multi-scale crop ~ random resized crop, area 0.3-1, no flip).

Per size, from the scripts (videos per step = 32 per GPU x GPUs; clips = 4x):
         GPUs  batch (clips)  --lr   lr       warmup  epochs  clip
  B/16    32    4096          1e-3  4.0e-3     80      800     -
  L/16    48    6144          1e-3  6.0e-3    120     1200     -
  H/16    64    8192          1e-3  8.0e-3    120     1200     -
  g/14    64    8192          6e-4  4.8e-3    120     1200    0.02
The official code sets lr = --lr x (videos per step) / 256 (also min lr
1e-5 x videos / 256). Our batch counts clips, so optim.lr_batch_base =
256 x 4 = 1024 reproduces it for any batch: lr = base_lr x batch / 1024.
Epochs count clips, i.e. the scripts' --epochs x 4 (the repository's own
"1200e"): g runs 300 passes over the videos, 30 of them warmup.
Memory: bfloat16 compute; remat=full for H and g (the scripts'
--with_checkpoint); see docs/scaling.md (Video) for the meshes that fit.

Data: UnlabeledHybrid (1.35M clips from K710, SSv2, AVA, WebVid, Instagram;
the authors sample SSv2's videos every 2 frames and the rest every 4: one
stride per manifest here) as a manifest CSV at
/data/unlabeled_hybrid/{split}.csv; dataset=k400 / ssv2 pretrain on those
instead (stride 4 / 2).

  python -m mae_jax.main --config=configs/videomae_v2.py:variant=g/2x14x14 \\
      --workdir=$WORKDIR --config.data.path=/data/unlabeled_hybrid/{split}.csv \\
      --config.mesh.data=1 --config.mesh.fsdp=8 --config.grad_accum_steps=8
  # (planned for 8 x 80 GiB GPUs: 41.7 GiB per device; on a TPU v5p-64:
  #  --config.mesh.data=1 --config.mesh.fsdp=64, no accumulation)

Expected (official MODEL_ZOO.md, ViT-g, 1200 epochs on UnlabeledHybrid,
fine-tuned top-1; fine-tuning is not part of this config): K400 87.2
(88.4 after post-pretraining on labelled K710), SSv2 77.0 (16x2x3 views).

`runlocal=true` keeps the recipe's shape (dual masking 0.9 / 0.5,
sincos_flat, no cls token, norm_pixels_channel, repeated sampling 4) on a
tiny model and the `moving_digits` synthetic clips, for a few steps.
"""

from mae_jax import config as config_lib
from mae_jax import recipes

# size -> (decoder, clips per step, --lr, warmup epochs, epochs, clip_norm),
# epochs in clips (= the scripts' epochs x 4).
RECIPES = {
    'B': ('384d4b6h', 4096, 1e-3, 80.0, 800, 0.0),
    'L': ('512d4b8h', 6144, 1e-3, 120.0, 1200, 0.0),
    'H': ('512d4b8h', 8192, 1e-3, 120.0, 1200, 0.0),
    'g': ('512d4b8h2234m', 8192, 6e-4, 120.0, 1200, 0.02),
}
DATASETS = {  # dataset -> (manifest, frame stride, eval split)
    'hybrid': ('/data/unlabeled_hybrid/{split}.csv', 4, ''),
    'k400': ('/data/k400/{split}.csv', 4, 'val'),
    'ssv2': ('/data/ssv2/{split}.csv', 2, 'val'),
}
CLIPS_PER_VIDEO = 4


def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, variant='g/2x14x14', dataset='hybrid',
                           epochs=0, batch=0, runlocal=False)
  size = a.variant.split('/')[0]
  if size not in RECIPES:
    raise config_lib.ConfigError(
        f'config argument variant={a.variant!r}: VideoMAE V2 has sizes '
        f'{sorted(RECIPES)} (g/2x14x14, H/2x16x16, L/2x16x16, B/2x16x16)')
  if a.dataset not in DATASETS:
    raise config_lib.ConfigError(
        f'config argument dataset={a.dataset!r}: expected one of '
        f'{sorted(DATASETS)}')
  decoder, batch, lr, warmup, epochs, clip = RECIPES[size]
  path, stride, eval_split = DATASETS[a.dataset]

  c = config_lib.base_config()
  c.model.variant = a.variant
  c.model.decoder = decoder
  c.model.frames = 16
  c.model.image_size = 224
  c.model.channels = 3
  c.model.pos_embed = 'sincos_flat'
  c.model.cls_token = False
  c.model.dtype = 'bfloat16'
  c.model.remat = 'full' if size in ('H', 'g') else 'none'
  c.masking.name, c.masking.ratio = 'dual', 0.9
  c.masking.decoder_ratio = 0.5
  c.target = 'norm_pixels_channel'

  c.data.source = 'video_files'
  c.data.path = path
  c.data.split, c.data.eval_split = 'train', eval_split
  c.data.frame_stride = stride
  c.data.clips_per_video = CLIPS_PER_VIDEO
  c.data.crop_scale = (0.3, 1.0)
  c.data.crop_ratio = (3 / 4, 4 / 3)
  c.data.hflip = False
  c.data.mean, c.data.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  c.data.worker_count = 8
  c.data.read_threads = 16

  c.batch_size = a.batch or batch
  c.total_epochs = float(a.epochs or epochs)
  c.optim.base_lr = lr
  c.optim.lr_batch_base = 256 * CLIPS_PER_VIDEO
  c.optim.min_lr = 1e-5 * c.batch_size / c.optim.lr_batch_base
  c.optim.warmup_epochs = warmup
  c.optim.weight_decay = 0.05
  c.optim.b1, c.optim.b2 = 0.9, 0.95
  c.optim.clip_norm = clip

  c.log_every = 100
  c.checkpoint_every = 2000
  c.evals.reconstruction.every_steps = 5000
  c.evals.reconstruction.num_images = 4
  recipes.subset_probes(c, 20_000, 5_000, enabled=bool(eval_split))  # UnlabeledHybrid: no labels
  c.eval_batch_size = 256

  if a.runlocal:
    recipes.local_clip_run(c)
  return config_lib.finalize(c)
