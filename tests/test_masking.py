import math

import jax
import numpy as np
import pytest

from mae_jax import masking


def _mask(seed=0, batch=4, grid=(14, 14), ratio=0.75):
  return masking.get('random').sample(jax.random.key(seed), batch, grid,
                                      masking.Options(ratio))


@pytest.mark.parametrize('grid,ratio,kept', [((14, 14), 0.75, 49),
                                             ((7, 7), 0.75, 12),
                                             ((8, 8), 0.9, 6),
                                             ((2, 4, 4), 0.5, 16)])
def test_kept_count_is_exact_and_rounded_down(grid, ratio, kept):
  m = _mask(grid=grid, ratio=ratio)
  length = math.prod(grid)
  assert m.ids_keep.shape == (4, kept)
  assert m.ids_restore.shape == (4, length)
  np.testing.assert_array_equal(np.asarray(m.mask).sum(1), length - kept)


def test_restore_undoes_the_shuffle():
  m = _mask()
  restore = np.asarray(m.ids_restore)
  shuffle = np.argsort(restore, axis=1)  # [visible..., masked...] order
  np.testing.assert_array_equal(shuffle[:, :m.ids_keep.shape[1]], m.ids_keep)
  # gathering the shuffled sequence with ids_restore gives the original order
  x = np.arange(196)[None].repeat(4, 0)
  shuffled = np.take_along_axis(x, shuffle, 1)
  np.testing.assert_array_equal(np.take_along_axis(shuffled, restore, 1), x)


def test_kept_ids_are_the_unmasked_tokens():
  m = _mask()
  mask = np.asarray(m.mask)
  for b in range(4):
    keep = np.asarray(m.ids_keep[b])
    assert len(set(keep.tolist())) == len(keep)
    assert (mask[b, keep] == 0).all()
    assert mask[b].sum() == 196 - len(keep)


def test_independent_across_examples_and_keys():
  m = _mask(batch=8)
  rows = {tuple(np.sort(np.asarray(r))) for r in m.ids_keep}
  assert len(rows) == 8
  step_keys = [jax.random.fold_in(jax.random.key(0), s) for s in range(2)]
  a, b = (masking.random_masking(k, 4, (14, 14), masking.Options(0.75))
          for k in step_keys)
  assert not np.array_equal(np.asarray(a.mask), np.asarray(b.mask))


def test_deterministic_for_a_key():
  np.testing.assert_array_equal(np.asarray(_mask(3).ids_keep),
                                np.asarray(_mask(3).ids_keep))


def test_every_position_equally_likely():
  m = _mask(batch=4000, grid=(4, 4), ratio=0.75)
  freq = np.asarray(m.mask).mean(0)  # each position masked w.p. 12/16
  np.testing.assert_allclose(freq, 0.75, atol=0.03)


def test_jits_with_static_shapes():
  fn = jax.jit(lambda k: masking.random_masking(k, 2, (4, 4),
                                                masking.Options(0.75)).mask)
  assert fn(jax.random.key(0)).shape == (2, 16)


def test_unknown_strategy_names_the_choices():
  with pytest.raises(ValueError, match=r"masking.name='blocks'.*random"):
    masking.get('blocks')
