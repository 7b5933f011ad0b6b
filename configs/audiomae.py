"""AudioMAE pretraining on AudioSet-2M (Huang et al., "Masked Autoencoders
that Listen", 2022; the official facebookresearch/AudioMAE scripts).

Input: 10.24 s clips at 16 kHz as Kaldi log-mel filterbanks (128 mel bins,
25 ms windows every 10 ms: 1024 frames), normalized with the AudioSet
statistics as the official dataset.py does ((x + 4.27) / (2 x 4.57));
16x16 patches over (time, frequency): a 64 x 8 grid of 512 tokens. ViT-B
encoder; unstructured random masking at 0.8 (the paper's best for
pretraining); a 16-block, 512-wide decoder with local attention in 4x4
windows shifted by 2 time steps every second block (the paper's best
decoder, the official decoder_mode=1); targets normalized per patch
(norm_pix_loss). AdamW (0.9, 0.95), weight decay 1e-4, base lr 2e-4 x
batch / 256 with batch 512, 3 warmup epochs then cosine, 32 epochs.

  python -m mae_jax.main --config=configs/audiomae.py --workdir=$WORKDIR \\
      --config.data.path=/data/audioset/{split}.csv

The manifest lists one audio file per line (`path[,labels]`, any format
libsndfile reads, resampled to 16 kHz). Expected after fine-tuning
(configs/audiomae_finetune.py; paper Table 7 / the official README):
AudioSet-20K 37.0 mAP, AudioSet-2M 47.3 mAP, ESC-50 94.1%.
The official roll/magnitude augmentation (roll_mag_aug) is
data.random_gain: its roll is always 0 in the official code (it draws the
shift from the length of a [1, n] array's first axis), so only the gain
remains. Not reproduced: the weighted sampling of the unbalanced set.

`runlocal=true` keeps the recipe's shape (mask 0.8, local decoder, norm
pixels) on a tiny model and the generated spoken digits
(mae_jax.data.spoken_digits), for a few steps on any machine.
"""

from mae_jax import config as config_lib
from mae_jax import recipes

def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, variant='B/16', epochs=32, batch=512,
                           runlocal=False)
  c = config_lib.base_config()
  c.model.variant = a.variant
  c.model.decoder = '512d16b16h'
  c.model.decoder_attention = 'local'
  c.model.decoder_window = (4, 4)
  c.model.decoder_shift = (2, 0)
  c.model.dtype = 'bfloat16'
  recipes.spectrogram_input(c, frames=1024)
  c.masking.name, c.masking.ratio = 'random', 0.8
  c.target = 'norm_pixels'

  c.data.source = 'audio_files'
  c.data.random_gain = True  # the official script's --roll_mag_aug
  c.data.path = '/data/audioset/{split}.csv'
  c.data.split, c.data.eval_split = 'train', 'eval'
  c.data.worker_count = 8
  c.data.read_threads = 16

  c.batch_size = a.batch
  c.total_epochs = float(a.epochs)
  c.optim.base_lr = 2e-4
  c.optim.warmup_epochs = 3.0
  c.optim.weight_decay = 1e-4
  c.optim.b1, c.optim.b2 = 0.9, 0.95
  c.log_every = 100
  c.checkpoint_every = 2000
  c.evals.reconstruction.every_steps = 5000

  if a.runlocal:
    c.model.variant, c.model.dtype = 'mu/16', 'float32'
    c.model.decoder = '64d2b4h'
    recipes.spectrogram_input(c, frames=128, mel_bins=64)  # 8 x 4 tokens
    c.data.source, c.data.path = 'spoken_digits', ''
    c.data.split, c.data.eval_split = 'train', 'test'
    c.data.worker_count, c.data.read_threads = 0, 2
    c.batch_size, c.total_epochs, c.total_steps = 16, 0.0, 6
    c.optim.warmup_epochs, c.optim.warmup_steps = 0.0, 2
    c.log_every, c.checkpoint_every = 3, 6
    c.evals.reconstruction.every_steps = 6
    c.eval_batch_size = 32
  return config_lib.finalize(c)
