"""Masking strategies for spectrograms, registered into masking.py's registry.

A spectrogram [T, F, 1] is tokenized into a (t, f) grid of patches, t along
time and f along mel frequency, token id = t_index * f + f_index (AudioMAE:
1024 x 128 in 16 x 16 patches -> 64 x 8). These strategies hide whole time
rows and/or frequency columns of that grid (AudioMAE, Huang et al. 2022,
Sec. 3.2 "structured" masking; its Fig. 3):

  time         int(t * (1 - ratio)) time rows stay, the others are hidden
  freq         int(f * (1 - ratio)) frequency columns stay
  time_freq    rows and columns at once (AudioMAE's random_masking_2d,
               masking.time_ratio / freq_ratio = its mask_t_prob / mask_f_prob)
  specaugment  one band of rows and one of columns (SpecAugment at token level)

A token is visible iff its row and its column both are, so K = kept rows x
kept columns, fixed by the grid and the ratios. Visible tokens are listed in
ascending token id (time-major), as AudioMAE orders them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mae_jax.masking import Mask, Options, from_scores, register


def _opts(opts) -> Options:
  """kept() gets the config's Options; a bare ratio (tests, quick checks)
  stands for Options(ratio) with the other keys' defaults."""
  return opts if isinstance(opts, Options) else Options(ratio=opts)


def _kept_lines(n: int, ratio: float) -> int:
  """Rows (or columns) that stay: AudioMAE's len_keep_t = int(T * (1 - p))."""
  return int(n * (1 - ratio))


def _band(n: int, ratio: float) -> int:
  """Width of a SpecAugment band: round(ratio * n) (Python's round, half to
  even) rows or columns."""
  return round(ratio * n)


def _time_kept(grid, ratio) -> int:
  t, f = grid
  return _kept_lines(t, _opts(ratio).ratio) * f


def _freq_kept(grid, ratio) -> int:
  t, f = grid
  return t * _kept_lines(f, _opts(ratio).ratio)


def _time_freq_kept(grid, ratio) -> int:
  o, (t, f) = _opts(ratio), grid
  return _kept_lines(t, o.time_ratio) * _kept_lines(f, o.freq_ratio)


def _specaugment_kept(grid, ratio) -> int:
  o, (t, f) = _opts(ratio), grid
  return (t - _band(t, o.time_ratio)) * (f - _band(f, o.freq_ratio))


# ------------------------------------------------------------------ checks


def _check_grid(name: str, grid) -> None:
  if len(grid) != 2:
    raise ValueError(f'masking.name={name!r} masks spectrograms: it needs a '
                     f'token grid (t, f), got {tuple(grid)} (an input '
                     '[T, F, 1]: model.image_size=(T, F), model.channels=1, '
                     'model.frames=0)')


def _check_ratio(key: str, ratio: float, name: str) -> None:
  if not 0 <= ratio < 1:
    raise ValueError(f'masking.{key}={ratio}: allowed 0 <= ratio < 1 (the '
                     f'fraction masking.name={name!r} hides)')


def _check_lines(name: str, key: str, ratio: float, n: int, what: str,
                 kept: int) -> None:
  """kept of the n rows / columns stay visible: at least one must."""
  if kept < 1:
    raise ValueError(f'masking.{key}={ratio} hides all {n} {what} with '
                     f'masking.name={name!r}; at least one must stay visible: '
                     'lower it')


def _lines_check(name: str, axis: int, what: str):
  def check(grid, opts) -> None:
    _check_grid(name, grid)
    _check_ratio('ratio', opts.ratio, name)
    n = grid[axis]
    kept = _kept_lines(n, opts.ratio)
    _check_lines(name, 'ratio', opts.ratio, n, what, kept)
    if kept == n:
      raise ValueError(f'masking.ratio={opts.ratio} hides none of the {n} '
                       f'{what} with masking.name={name!r}: raise it')
  return check


def _time_freq_check(grid, opts) -> None:
  _check_grid('time_freq', grid)
  t, f = grid
  _check_ratio('time_ratio', opts.time_ratio, 'time_freq')
  _check_ratio('freq_ratio', opts.freq_ratio, 'time_freq')
  keep_t = _kept_lines(t, opts.time_ratio)
  keep_f = _kept_lines(f, opts.freq_ratio)
  _check_lines('time_freq', 'time_ratio', opts.time_ratio, t, 'time rows',
               keep_t)
  _check_lines('time_freq', 'freq_ratio', opts.freq_ratio, f,
               'frequency columns', keep_f)
  if keep_t == t and keep_f == f:
    raise ValueError(f'masking.time_ratio={opts.time_ratio} and '
                     f'masking.freq_ratio={opts.freq_ratio} hide no row or '
                     f'column of the {grid} token grid with '
                     "masking.name='time_freq': raise one")


def _specaugment_check(grid, opts) -> None:
  _check_grid('specaugment', grid)
  t, f = grid
  _check_ratio('time_ratio', opts.time_ratio, 'specaugment')
  _check_ratio('freq_ratio', opts.freq_ratio, 'specaugment')
  bt, bf = _band(t, opts.time_ratio), _band(f, opts.freq_ratio)
  _check_lines('specaugment', 'time_ratio', opts.time_ratio, t, 'time rows',
               t - bt)
  _check_lines('specaugment', 'freq_ratio', opts.freq_ratio, f,
               'frequency columns', f - bf)
  if bt == 0 and bf == 0:
    raise ValueError(f'masking.time_ratio={opts.time_ratio} and '
                     f'masking.freq_ratio={opts.freq_ratio} make both bands '
                     f'0 wide (round(ratio * n)) on the {grid} token grid with '
                     "masking.name='specaugment': raise one")


# ------------------------------------------------------------- the masks


def _masked_lines(noise: jax.Array, keep: int) -> jax.Array:
  """noise [B, n] -> [B, n] bool, True where a line is hidden: the `keep`
  lines with the lowest noise stay (AudioMAE: mask 0 on the first len_keep
  of argsort(noise), gathered back with ids_restore)."""
  rank = jnp.argsort(jnp.argsort(noise, axis=1, stable=True), axis=1)
  return rank >= keep


def _from_lines(rows: jax.Array, cols: jax.Array, keep: int) -> Mask:
  """rows [B, t], cols [B, f] bool (True = hidden) -> Mask over the t * f
  tokens: a token is hidden if its row or its column is.

  Stable sorting of the 0/1 mask lists the visible tokens in ascending id,
  then the hidden ones in ascending id: the order AudioMAE gets by sorting
  `token id + 999 * mask`, which it equals while t * f <= 999 (beyond that,
  e.g. its 101 x 12 overlapping patches, the official order lets hidden
  tokens into ids_keep; this one does not).
  """
  b, t = rows.shape
  masked = (rows[:, :, None] | cols[:, None, :]).reshape(b, t * cols.shape[1])
  return from_scores(masked.astype(jnp.float32), keep)


def time_freq_from_noise(noise_t: jax.Array, noise_f: jax.Array,
                         keep_t: int, keep_f: int) -> Mask:
  """AudioMAE's random_masking_2d (models_mae.py) given its two noises.

  noise_t: [B, t] one uniform value per time row; noise_f: [B, f] per
  frequency column. The keep_t rows and keep_f columns with the lowest noise
  stay; a token is visible iff its row and its column are, so
  K = keep_t * keep_f. Returns the official ids_keep [B, K] (ascending id),
  ids_restore [B, L] and mask [B, L] for the same noises.
  """
  return _from_lines(_masked_lines(noise_t, keep_t),
                     _masked_lines(noise_f, keep_f), keep_t * keep_f)


@register('time', kept=_time_kept, check=_lines_check('time', 0, 'time rows'))
def time_masking(key, batch_size, grid, opts) -> Mask:
  """Whole time rows (AudioMAE, Huang et al. 2022, Sec. 3.2: "time"
  masking): int(t * (1 - ratio)) random rows stay, every token of the other
  rows is hidden."""
  t, f = grid
  noise = jax.random.uniform(key, (batch_size, t))
  rows = _masked_lines(noise, _kept_lines(t, opts.ratio))
  return _from_lines(rows, jnp.zeros((batch_size, f), bool),
                     _time_kept(grid, opts.ratio))


@register('freq', kept=_freq_kept,
          check=_lines_check('freq', 1, 'frequency columns'))
def freq_masking(key, batch_size, grid, opts) -> Mask:
  """Whole frequency columns (AudioMAE, Sec. 3.2: "frequency" masking):
  int(f * (1 - ratio)) random mel columns stay."""
  t, f = grid
  noise = jax.random.uniform(key, (batch_size, f))
  cols = _masked_lines(noise, _kept_lines(f, opts.ratio))
  return _from_lines(jnp.zeros((batch_size, t), bool), cols,
                     _freq_kept(grid, opts.ratio))


@register('time_freq', kept=_time_freq_kept, check=_time_freq_check)
def time_freq_masking(key, batch_size, grid, opts) -> Mask:
  """AudioMAE's 2-D masking (Huang et al. 2022; models_mae.py
  random_masking_2d): int(t * (1 - time_ratio)) random time rows and
  int(f * (1 - freq_ratio)) random frequency columns stay; a token is visible
  iff both its row and its column do. AudioMAE pretrains with random
  masking and uses this when fine-tuning (models_vit.py; 0.2 / 0.2 on
  AudioSet); the defaults here, 0.6 / 0.5, are its model's."""
  t, f = grid
  k_t, k_f = jax.random.split(key)
  return time_freq_from_noise(
      jax.random.uniform(k_t, (batch_size, t)),
      jax.random.uniform(k_f, (batch_size, f)),
      _kept_lines(t, opts.time_ratio), _kept_lines(f, opts.freq_ratio))


@register('specaugment', kept=_specaugment_kept, check=_specaugment_check)
def specaugment_masking(key, batch_size, grid, opts) -> Mask:
  """SpecAugment (Park et al. 2019) time and frequency masking, on tokens.

  One contiguous band of bt = round(time_ratio * t) time rows and one of
  bf = round(freq_ratio * f) frequency columns, each at a uniformly random
  start; a token is hidden if it lies in either band. SpecAugment draws each
  band's width at random (up to T or F, on spectrogram frames: AudioMAE
  fine-tunes with torchaudio's TimeMasking(192) / FrequencyMasking(48) on
  1024 x 128 inputs, dataset.py) and zeroes the values; here the widths are
  fixed and whole tokens are removed, so K = (t - bt) * (f - bf) and shapes
  stay static.
  """
  t, f = grid
  bt, bf = _band(t, opts.time_ratio), _band(f, opts.freq_ratio)
  k_t, k_f = jax.random.split(key)
  start_t = jax.random.randint(k_t, (batch_size, 1), 0, t - bt + 1)
  start_f = jax.random.randint(k_f, (batch_size, 1), 0, f - bf + 1)
  row, col = jnp.arange(t)[None], jnp.arange(f)[None]
  rows = (row >= start_t) & (row < start_t + bt)
  cols = (col >= start_f) & (col < start_f + bf)
  return _from_lines(rows, cols, (t - bt) * (f - bf))
