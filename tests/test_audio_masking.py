"""Spectrogram masking strategies (audio_masking.py).

Exact kept counts, whole rows / columns, the row x column product of
time_freq and its equality with the official AudioMAE code on the same noise
(fixtures/audiomae_masking.npz, made by make_audiomae_masking_fixture.py
from facebookresearch/AudioMAE's models_mae.py), SpecAugment's contiguous
bands, determinism and config checks (an MAE trained with time_freq masking:
test_audio_train.py).
"""

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import audio_masking, config as config_lib, masking

from conftest import load_config

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'audiomae_masking.npz'
AUDIO = ('time', 'freq', 'time_freq', 'specaugment')


def _opts(ratio=0.75, time_ratio=0.6, freq_ratio=0.5):
  return masking.Options(ratio=ratio, time_ratio=time_ratio,
                         freq_ratio=freq_ratio)


@functools.cache
def _jitted(name):
  # One compile per (strategy, shape, options), not one per primitive.
  return jax.jit(masking.get(name).sample, static_argnums=(1, 2, 3))


def _sample(name, grid, batch=8, key=0, **kw):
  return _jitted(name)(jax.random.key(key), batch, grid, _opts(**kw))


def _check_consistent(m: masking.Mask, kept: int, length: int):
  ids_keep, mask = np.asarray(m.ids_keep), np.asarray(m.mask)
  restore = np.asarray(m.ids_restore)
  assert ids_keep.shape[1] == kept and mask.shape[1] == length
  assert ids_keep.dtype == np.int32 and mask.dtype == np.float32
  np.testing.assert_array_equal((1 - mask).sum(1), kept)
  for b in range(len(mask)):
    assert (mask[b, ids_keep[b]] == 0).all()
    assert (np.diff(ids_keep[b]) > 0).all()  # ascending, as AudioMAE's
    # ids_restore is the inverse of [visible..., masked...] (from_shuffle).
    shuffle = np.argsort(restore[b])
    np.testing.assert_array_equal(shuffle[:kept], ids_keep[b])
    assert (mask[b, shuffle[kept:]] == 1).all()


# (grid, expected kept) per strategy at ratio 0.75 (freq: 0.5), time_ratio
# 0.6, freq_ratio 0.5.
KEPT = {
    'time': [((64, 8), 16 * 8), ((6, 4), 1 * 4), ((5, 3), 1 * 3)],
    'freq': [((64, 8), 64 * 4), ((6, 4), 6 * 2), ((5, 3), 5 * 1)],
    # int(t * 0.4) rows x int(f * 0.5) columns; AudioMAE's 64 x 8 -> 100.
    'time_freq': [((64, 8), 25 * 4), ((6, 4), 2 * 2), ((5, 3), 2 * 1)],
    # (t - round(0.6 t)) x (f - round(0.5 f)): 38, 4 / 4, 2 / 3, 2 (1.5 -> 2).
    'specaugment': [((64, 8), 26 * 4), ((6, 4), 2 * 2), ((5, 3), 2 * 1)],
}


@pytest.mark.parametrize('name,grid,kept', [
    (n, g, k) for n, rows in KEPT.items() for g, k in rows])
def test_kept_counts_are_exact(name, grid, kept):
  s, ratio = masking.get(name), 0.5 if name == 'freq' else 0.75
  s.check(grid, _opts(ratio))
  assert s.kept(grid, _opts(ratio)) == kept
  _check_consistent(_sample(name, grid, ratio=ratio), kept, math.prod(grid))


def test_kept_reads_time_and_freq_ratio_from_options():
  s = masking.get('time_freq')
  assert s.kept((64, 8), _opts(time_ratio=0.2, freq_ratio=0.2)) == 51 * 6
  # Given only masking.ratio (config.validate, flops.py) it assumes the
  # default time / freq ratios.
  assert s.kept((64, 8), 0.75) == 100
  assert masking.get('specaugment').kept((64, 8), _opts(0.75, 0.25, 0.0)) == (
      48 * 8)
  assert masking.get('time').kept((64, 8), 0.75) == masking.get('time').kept(
      (64, 8), _opts(0.75))


def _lines(mask, grid):
  """mask [B, L] -> the hidden fraction of each time row [B, t] and of each
  frequency column [B, f] (1.0: the whole row / column is hidden)."""
  m = np.asarray(mask).reshape(-1, *grid)
  return m.mean(2), m.mean(1)


def test_time_hides_whole_rows_and_freq_whole_columns():
  grid = (12, 6)
  rows, cols = _lines(_sample('time', grid, ratio=0.5).mask, grid)
  assert set(np.unique(rows)) == {0.0, 1.0}
  np.testing.assert_array_equal(rows.sum(1), 6)
  np.testing.assert_array_equal(cols, 0.5)  # every column half hidden
  rows, cols = _lines(_sample('freq', grid, ratio=0.5).mask, grid)
  assert set(np.unique(cols)) == {0.0, 1.0}
  np.testing.assert_array_equal(cols.sum(1), 3)
  np.testing.assert_array_equal(rows, 0.5)


def test_time_freq_visible_set_is_rows_times_columns():
  grid = (12, 6)
  m = _sample('time_freq', grid, time_ratio=0.5, freq_ratio=0.5)
  vis = 1 - np.asarray(m.mask).reshape(8, *grid)
  for b in range(8):
    rows = vis[b].any(1)  # rows with a visible token are kept rows
    cols = vis[b].any(0)
    assert rows.sum() == 6 and cols.sum() == 3
    np.testing.assert_array_equal(vis[b], np.outer(rows, cols))
  # Rows and columns are drawn per example.
  assert len({vis[b].tobytes() for b in range(8)}) == 8


def _official_2d(noise_t, noise_f, p_t, p_f):
  """models_mae.py random_masking_2d, transcribed to NumPy statement by
  statement (ids_shuffle, ids_restore, masks gathered back, 1 - (1-mt)(1-mf),
  argsort of token id + 999 * mask)."""
  n, t = noise_t.shape
  f = noise_f.shape[1]
  keep_t, keep_f = int(t * (1 - p_t)), int(f * (1 - p_f))
  restore_t = np.argsort(np.argsort(noise_t, 1), 1)
  restore_f = np.argsort(np.argsort(noise_f, 1), 1)
  mask_t = np.ones((n, t))
  mask_t[:, :keep_t] = 0
  mask_t = np.take_along_axis(mask_t, restore_t, 1)[:, :, None]  # N, T, 1
  mask_f = np.ones((n, f))
  mask_f[:, :keep_f] = 0
  mask_f = np.take_along_axis(mask_f, restore_f, 1)[:, None, :]  # N, 1, F
  mask = 1 - (1 - mask_t) * (1 - mask_f)
  id2res = np.arange(n * t * f).reshape(n, t, f) + 999 * mask
  id2res2 = np.argsort(id2res.reshape(n, -1), 1, kind='stable')
  ids_keep = id2res2[:, :keep_t * keep_f]
  return ids_keep, np.argsort(id2res2, 1), mask.reshape(n, -1)


def _ours(noise_t, noise_f, p_t, p_f):
  t, f = noise_t.shape[1], noise_f.shape[1]
  return audio_masking.time_freq_from_noise(
      jnp.asarray(noise_t), jnp.asarray(noise_f),
      int(t * (1 - p_t)), int(f * (1 - p_f)))


def test_time_freq_equals_the_official_code_on_its_noise():
  data = np.load(FIXTURE)
  cases = sorted({k.split('/')[0] for k in data.files if '/' in k})
  assert len(cases) == 4
  for case in cases:
    d = {k: data[f'{case}/{k}'] for k in ('noise_t', 'noise_f', 'ids_keep',
                                          'ids_restore', 'mask', 'probs',
                                          'grid')}
    p_t, p_f = (float(p) for p in d['probs'])
    grid = tuple(int(g) for g in d['grid'])
    m = _ours(d['noise_t'], d['noise_f'], p_t, p_f)
    assert masking.get('time_freq').kept(grid, _opts(0.75, p_t, p_f)) == (
        d['ids_keep'].shape[1])
    np.testing.assert_array_equal(np.asarray(m.mask), d['mask'])
    if math.prod(grid) <= 999:
      # The transcription used on other grids below agrees with the original.
      ref = _official_2d(d['noise_t'], d['noise_f'], p_t, p_f)
      np.testing.assert_array_equal(ref[0], d['ids_keep'])
      np.testing.assert_array_equal(ref[1], d['ids_restore'])
      np.testing.assert_array_equal(np.asarray(m.ids_keep), d['ids_keep'])
      np.testing.assert_array_equal(np.asarray(m.ids_restore),
                                    d['ids_restore'])
    else:
      # 101 x 12 overlapping patches: `id + 999 * mask` no longer sorts the
      # hidden tokens last (and ties visible id 999 + i with hidden id i), so
      # the official ids_keep holds some hidden tokens; ours keeps exactly
      # the visible ones.
      hidden = np.take_along_axis(d['mask'], d['ids_keep'], 1).sum()
      assert hidden > 0
      _check_consistent(m, d['ids_keep'].shape[1], math.prod(grid))


@pytest.mark.parametrize('grid,p_t,p_f', [((6, 4), 0.6, 0.5),
                                          ((5, 3), 0.6, 0.5),
                                          ((8, 4), 0.2, 0.2),
                                          ((7, 5), 0.0, 0.4)])
def test_time_freq_equals_the_transcription_on_small_grids(grid, p_t, p_f):
  rng = np.random.default_rng(sum(grid))
  noise_t = rng.random((5, grid[0]), dtype=np.float32)
  noise_f = rng.random((5, grid[1]), dtype=np.float32)
  m = _ours(noise_t, noise_f, p_t, p_f)
  ids_keep, ids_restore, mask = _official_2d(noise_t, noise_f, p_t, p_f)
  np.testing.assert_array_equal(np.asarray(m.ids_keep), ids_keep)
  np.testing.assert_array_equal(np.asarray(m.ids_restore), ids_restore)
  np.testing.assert_array_equal(np.asarray(m.mask), mask)


def test_specaugment_hides_one_band_of_each_exact_width():
  grid = (10, 6)  # bands: round(0.3 * 10) = 3 rows, round(0.5 * 6) = 3 columns
  m = _sample('specaugment', grid, batch=64, time_ratio=0.3, freq_ratio=0.5)
  _check_consistent(m, 7 * 3, 60)
  hidden = np.asarray(m.mask).reshape(64, *grid).astype(bool)
  starts_t, starts_f = set(), set()
  for b in range(64):
    rows = np.flatnonzero(hidden[b].all(1))  # rows hidden entirely
    cols = np.flatnonzero(hidden[b].all(0))
    assert len(rows) == 3 and np.all(np.diff(rows) == 1)
    assert len(cols) == 3 and np.all(np.diff(cols) == 1)
    band = np.zeros(grid, bool)
    band[rows] = True
    band[:, cols] = True
    np.testing.assert_array_equal(hidden[b], band)  # nothing else hidden
    starts_t.add(rows[0])
    starts_f.add(cols[0])
  # Starts are uniform over every position the band fits.
  assert starts_t == set(range(8)) and starts_f == set(range(4))


def test_specaugment_with_a_zero_width_band_masks_the_other_axis_only():
  m = _sample('specaugment', (8, 4), time_ratio=0.25, freq_ratio=0.0)
  rows, cols = _lines(m.mask, (8, 4))
  np.testing.assert_array_equal(rows.sum(1), 2)
  assert set(np.unique(rows)) == {0.0, 1.0}


@pytest.mark.parametrize('name', AUDIO)
def test_pure_function_of_the_key(name):
  grid = (16, 8)
  a, b = _sample(name, grid, key=3), _sample(name, grid, key=3)
  for x, y in ((a.ids_keep, b.ids_keep), (a.ids_restore, b.ids_restore),
               (a.mask, b.mask)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  c = _sample(name, grid, key=4)
  assert not np.array_equal(np.asarray(a.mask), np.asarray(c.mask))
  # and differs between the examples of a batch
  assert len({r.tobytes() for r in np.asarray(a.mask)}) > 1


def test_jits_with_static_shapes():
  fn = jax.jit(lambda k: masking.get('time_freq').sample(
      k, 2, (64, 8), _opts()).ids_keep)
  assert fn(jax.random.key(0)).shape == (2, 100)


@pytest.mark.parametrize('name,grid,kw,match', [
    ('time', (2, 4, 4), {},
     r"masking.name='time' masks spectrograms.*\(t, f\)"),
    ('time_freq', (14,), {}, r"'time_freq' masks spectrograms"),
    ('specaugment', (2, 8, 4), {}, r"'specaugment' masks spectrograms"),
    ('time', (3, 4), dict(ratio=0.7),
     r'masking.ratio=0.7 hides all 3 time rows'),
    ('freq', (8, 4), dict(ratio=0.0), r'masking.ratio=0.0 hides none of the '
     r'4 frequency columns'),
    ('freq', (8, 4), dict(ratio=1.0),
     r'masking.ratio=1.0: allowed 0 <= ratio < 1'),
    ('time_freq', (8, 4), dict(time_ratio=0.9),
     r'masking.time_ratio=0.9 hides all 8 time rows'),
    ('time_freq', (8, 4), dict(freq_ratio=0.8),
     r'masking.freq_ratio=0.8 hides all 4 frequency columns'),
    ('time_freq', (8, 4), dict(time_ratio=-0.1),
     r'masking.time_ratio=-0.1: allowed 0 <= ratio < 1'),
    ('time_freq', (8, 4), dict(time_ratio=0.0, freq_ratio=0.0),
     r'masking.time_ratio=0.0 and masking.freq_ratio=0.0 hide no row'),
    ('specaugment', (5, 4), dict(time_ratio=0.95),
     r'masking.time_ratio=0.95 hides all 5 time rows'),
    ('specaugment', (8, 4), dict(time_ratio=0.05, freq_ratio=0.1),
     r'masking.time_ratio=0.05 and masking.freq_ratio=0.1 make both bands 0'),
])
def test_checks_name_the_key(name, grid, kw, match):
  with pytest.raises(ValueError, match=match):
    masking.get(name).check(grid, _opts(**kw))


def test_config_keys_defaults_and_validation():
  c = config_lib.base_config()
  assert (c.masking.time_ratio, c.masking.freq_ratio) == (0.6, 0.5)
  assert masking.options(c.masking) == masking.Options(ratio=0.75)
  c = load_config('test')
  c.model.image_size = (32, 16)  # 8 x 4 tokens of 4 x 4
  c.model.channels = 1
  c.data.mean, c.data.std = (0.0,), (1.0,)
  c.masking.name = 'time_freq'
  c.masking.time_ratio, c.masking.freq_ratio = 0.5, 0.25
  assert masking.options(c.masking).time_ratio == 0.5
  config_lib.validate(c, num_devices=1, check_files=False)
  c.masking.freq_ratio = 0.8
  with pytest.raises(config_lib.ConfigError, match='masking.freq_ratio=0.8'):
    config_lib.validate(c, num_devices=1, check_files=False)
