"""The audio demo: AudioMAE pretraining on spoken digits (the ten digits
said by eSpeak NG voices, generated offline by mae_jax.data.spoken_digits on
first use: 2,000 train utterances by 100 voices, 500 test utterances by 25
voices whose speakers are never heard in training), then a linear probe and
k-NN on frozen features of the unseen voices, against the same encoder at
random initialization.

  make audio-demo   # = python -m mae_jax.main --config=configs/audio_demo.py --workdir=workdirs/audio_demo

The recipe is AudioMAE's at demo size: Kaldi log-mel filterbanks at 16 kHz
(the clips are 22.05 kHz WAVs, resampled), 64 frames (0.64 s: the longest
utterance is 0.75 s, 99% are under 0.56 s; shorter ones are zero padded as
AudioMAE pads) x 64 mel bins, 8x8 patches (an 8 x 8 grid), unstructured
random masking at 0.8, norm-pixel targets, a local-attention decoder (4x4
windows, shifted every second block), normalized with the train split's
statistics (mean -4.86, std 4.37 over the unpadded frames of every 4th
utterance; all 2,000 give -4.91 and 4.25 with `python -m
mae_jax.data.audio_stats --config=configs/audio_demo.py`), divided by
2 x std as AudioMAE does.

Expected on a 2-core CPU: see the README's "Audio demo" (measured).
"""

from mae_jax import config as config_lib
from mae_jax import recipes


def get_config(arg: str | None = None):
  # Batch 64: 930 steps in 30 epochs. (Batch 128 for 20 epochs, 300 steps,
  # had not learned enough: its linear probe stayed below random init.)
  a = config_lib.parse_arg(arg, variant='Ti/8', decoder='128d2b4h', epochs=30,
                           batch=64, local=True)
  c = config_lib.base_config()
  c.model.variant = a.variant
  c.model.decoder = a.decoder
  if a.local:
    c.model.decoder_attention = 'local'
    c.model.decoder_window, c.model.decoder_shift = (4, 4), (2, 0)
  recipes.spectrogram_input(c, frames=64, mel_bins=64, mean=-4.86,
                               std=2 * 4.37)
  c.model.scan_unroll = 12  # unrolled blocks: faster on CPU
  c.masking.name, c.masking.ratio = 'random', 0.8
  c.target = 'norm_pixels'

  c.data.source = 'spoken_digits'
  c.data.split, c.data.eval_split = 'train', 'test'
  c.data.read_threads = 2

  c.batch_size = a.batch
  c.total_epochs = float(a.epochs)
  c.optim.base_lr = 1.5e-4 * 10   # small data, short schedule (as the image demo)
  c.optim.warmup_epochs = 2.0
  c.log_every = 25
  c.checkpoint_every = 250
  c.evals.reconstruction.every_steps = 250
  c.evals.linear_probe.enabled = True
  # LARS on 2,000 examples: the base lr scaled as in the image demo.
  c.evals.linear_probe.base_lr = 30.0
  c.evals.linear_probe.batch_size = 256
  c.evals.knn.enabled = True
  c.eval_batch_size = 250
  return config_lib.finalize(c)
