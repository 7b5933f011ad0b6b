"""Building blocks the recipe files in configs/ share: the probes on
subsets of a split, the tiny `runlocal=true` form of the video recipes, and
the spectrogram input of the audio recipes (and of converted AudioMAE
checkpoints). Each changes a config from config.base_config() in place.
"""

from __future__ import annotations

import ml_collections


def subset_probes(c: ml_collections.ConfigDict, train_examples: int,
                  test_examples: int, enabled: bool = True) -> None:
  """The recipes' quick signal during pretraining: the linear probe and k-NN
  on subsets of the splits. LARS moves the head relative to its norm, so
  the probe's base lr grows from the paper's 0.1 (tuned on ImageNet's 1.28M
  images) by the ratio of the examples (evaluators/linear_probe.py)."""
  for name in ('linear_probe', 'knn'):
    c.evals[name].enabled = enabled
    c.evals[name].max_train_examples = train_examples
    c.evals[name].max_test_examples = test_examples
  c.evals.linear_probe.base_lr = 0.1 * 1_281_167 / train_examples
  c.evals.linear_probe.batch_size = min(4096, train_examples)


def local_clip_run(c: ml_collections.ConfigDict) -> None:
  """The video recipes' `runlocal=true`: the recipe's objective (masking,
  target, position embedding) on a few steps of a tiny model and 8-frame
  moving-digits clips, for a smoke test on any machine."""
  c.model.variant, c.model.decoder = 'mu/2x8x8', '32d1b2h'
  c.model.frames, c.model.image_size, c.model.channels = 8, 32, 1
  c.model.dtype, c.model.remat = 'float32', 'none'
  c.data.source, c.data.path = 'moving_digits', ''
  c.data.split, c.data.eval_split = 'train', 'test'
  c.data.moving_digits.videos = 64
  c.data.moving_digits.video_frames = 32  # >= the span of 8 frames x stride 4
  c.data.mean, c.data.std = (0.5,), (0.5,)
  c.data.worker_count, c.data.read_threads = 0, 2
  c.batch_size, c.total_epochs, c.total_steps = 8, 0.0, 10
  c.optim.min_lr = 0.0
  c.optim.warmup_epochs, c.optim.warmup_steps = 0.0, 2
  c.log_every, c.checkpoint_every = 5, 10
  c.evals.reconstruction.every_steps = 0
  for name in ('linear_probe', 'knn'):
    c.evals[name].max_train_examples = 64
    c.evals[name].max_test_examples = 32
  c.eval_batch_size = 16


# AudioSet statistics of log-mel filterbanks (AudioMAE's dataset.py, which
# divides by twice the std).
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974


def spectrogram_input(c: ml_collections.ConfigDict, frames: int,
                      mel_bins: int = 128, mean: float = AUDIOSET_MEAN,
                      std: float = 2 * AUDIOSET_STD) -> None:
  """The audio recipes' input: log-mel spectrograms [frames, mel_bins, 1]
  at 16 kHz (AudioMAE: 1024 x 128), normalized (x - mean) / std, with
  AudioMAE's position table (sincos_audiomae: its checkpoints compute the
  same here as in the official code)."""
  c.model.spectrogram, c.model.channels = True, 1
  c.model.pos_embed = 'sincos_audiomae'
  c.model.image_size = (frames, mel_bins)
  c.data.sample_rate = 16000
  c.data.mean, c.data.std = (mean,), (std,)
