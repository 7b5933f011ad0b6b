r"""The data-set statistics an audio run normalizes with: mean and std of
the log-mel filterbank over a training split (AudioMAE normalizes every
spectrogram by its data set's, e.g. AudioSet's -4.27 and 4.57).

  python -m mae_jax.data.audio_stats --config=configs/audio_demo.py \
      [--config.data.path=/data/esc50/{split}.csv] [--max_files=2000]

Reads up to --max_files files of config.data.split, spread evenly over it,
as the pipeline decodes them (resampled to data.sample_rate, the config's
mel bins), and averages over their frames before any padding (padding is
the zeros AudioMAE appends, not audio). Prints the numbers and the config
values: AudioMAE divides by twice the std, so data.std is 2 x std.
Unreadable files are skipped and counted.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags
import numpy as np

from mae_jax import config as config_lib
from mae_jax.data import audio
from mae_jax.data.transforms import BadRecordError


def dataset_stats(config, max_files: int = 2000
                  ) -> tuple[float, float, int, int]:
  """-> (mean, std, files read, files skipped) of the log-mel values of
  config.data.split (at most max_files files, evenly spaced)."""
  if max_files < 1:
    raise ValueError(f'--max_files={max_files}: must be >= 1')
  source = config_lib.open_split(config, config.data.split, 'audio_stats')
  if not source.audio:
    raise ValueError(f'config.data.source={config.data.source!r} is not an '
                     'audio source (audio_files, spoken_digits)')
  ops = audio.AudioOps(config_lib.image_size(config),
                       config.data.sample_rate)
  n = min(max_files, len(source))
  total, total_sq, count, skipped = 0.0, 0.0, 0, 0
  for i in np.linspace(0, len(source) - 1, n).round().astype(int):
    where = source.where(int(i))
    try:
      feats = ops.decode(source[int(i)]['image'], where).astype(np.float64)
    except (BadRecordError, OSError):
      skipped += 1
      continue
    total += feats.sum()
    total_sq += np.square(feats).sum()
    count += feats.size
  if not count:
    raise ValueError(f'none of the {n} files read could be decoded')
  mean = total / count
  return mean, float(np.sqrt(max(total_sq / count - mean**2, 0.0))), (
      n - skipped), skipped


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  c = _CONFIG.value
  mean, std, files, skipped = dataset_stats(c, _MAX_FILES.value)
  print(f'{c.data.source} split {c.data.split!r}: {files} files'
        f'{f" ({skipped} unreadable, skipped)" if skipped else ""}, '
        f'{config_lib.image_size(c)[1]} mel bins at {c.data.sample_rate} Hz')
  print(f'log-mel mean {mean:.4f}, std {std:.4f}')
  print(f"--config.data.mean='({mean:.4f},)' "
        f"--config.data.std='({2 * std:.4f},)'  # AudioMAE: 2 x std")


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file(
      'config', None, 'The run\'s config: its data, sample rate and mel bins.',
      lock_config=False)
  _MAX_FILES = flags.DEFINE_integer('max_files', 2000,
                                   'Files read, evenly spaced over the split.')
  flags.mark_flags_as_required(['config'])
  app.run(main)
