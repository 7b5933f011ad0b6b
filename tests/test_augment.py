"""mae_jax/augment.py: exact values, invariants, and each RandAugment op
against PIL, the library timm's RandAugment calls."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from mae_jax import augment

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_mix_jit = jax.jit(augment.mixup_cutmix,
                   static_argnames=('mixup_alpha', 'cutmix_alpha'))


def _mix(key, x, t, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
         switch_prob=0.5):
  # prob and switch_prob always passed, traced: one compile per alphas and
  # shape (and it shows they may be traced).
  return _mix_jit(key, x, t, mixup_alpha=mixup_alpha,
                  cutmix_alpha=cutmix_alpha, prob=prob,
                  switch_prob=switch_prob)
_rand_augment = jax.jit(functools.partial(augment.rand_augment, mean=MEAN,
                                          std=STD))
_erase = jax.jit(augment.random_erasing, static_argnames=(
    'prob', 'min_area', 'max_area', 'min_aspect', 'mode'))


def _normal(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _key(seed):
  return jax.random.key(seed)


# ------------------------------------------------------------ smooth_one_hot

def test_smooth_one_hot_values():
  t = np.asarray(augment.smooth_one_hot(jnp.array([0, 2]), 4, 0.1))
  np.testing.assert_allclose(t, [[0.925, 0.025, 0.025, 0.025],
                                 [0.025, 0.025, 0.925, 0.025]], rtol=1e-6)
  np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
  assert t.dtype == np.float32
  np.testing.assert_array_equal(
      augment.smooth_one_hot(jnp.array([1]), 3, 0.0), [[0.0, 1.0, 0.0]])


# ------------------------------------------------------------- mixup, cutmix

_SHAPE = (4, 12, 10, 3)


def _one_hot(b=4):
  return augment.smooth_one_hot(jnp.arange(b), b, 0.0)


def test_mixup_is_the_convex_combination_its_targets_say():
  x, t = _normal(_SHAPE), _one_hot()
  lams = []
  for seed in range(3):
    # cutmix off: mixup whatever switch_prob says
    out, targets = _mix(_key(seed), x, t, cutmix_alpha=0.0, switch_prob=1.0)
    targets = np.asarray(targets)
    lam = targets[0, 0]  # labels 0..3, partner of example 0 is example 3
    lams.append(lam)
    np.testing.assert_allclose(targets[0, 3], 1 - lam, atol=1e-6)
    np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], atol=1e-5)
  assert all(0 < lam < 1 for lam in lams) and len(set(lams)) == 3


def test_mix_prob_zero_and_alphas_zero_are_the_identity():
  x, t = _normal(_SHAPE), _one_hot()
  for kwargs in (dict(prob=0.0), dict(mixup_alpha=0.0, cutmix_alpha=0.0)):
    out, targets = _mix(_key(0), x, t, **kwargs)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(targets, t)


def _partner_mask(out, x):
  """[B, ..., H, W] True where out took the partner's pixel; asserts every
  pixel is a copy of either."""
  out, x = np.asarray(out), np.asarray(x)
  mine, other = (out == x).all(-1), (out == x[::-1]).all(-1)
  assert (mine | other).all()
  return other


def test_cutmix_copies_one_box_and_lam_is_the_area_kept():
  x, t = _normal(_SHAPE), _one_hot()
  fractions = []
  for seed in range(6):
    # mixup off: cutmix whatever switch_prob says
    out, targets = _mix(_key(seed), x, t, mixup_alpha=0.0, switch_prob=0.0)
    other = _partner_mask(out, x)
    assert (other == other[0]).all()  # batch mode: one box for all
    rows, cols = np.nonzero(other[0])
    if rows.size:  # the partner's pixels form one rectangle
      assert other[0, rows.min():rows.max() + 1,
                    cols.min():cols.max() + 1].all()
    fraction = other[0].mean()
    fractions.append(fraction)
    lam = np.asarray(targets)[:, np.arange(4)]
    np.testing.assert_allclose(np.diag(lam), 1 - fraction, atol=1e-6)
  assert any(0 < f < 1 for f in fractions)


def test_cutmix_box_is_the_same_on_every_frame():
  x, t = _normal((4, 3, 12, 12, 3)), _one_hot()
  found = False
  for seed in range(4):
    out, _ = _mix(_key(seed), x, t, mixup_alpha=0.0)
    other = _partner_mask(out, x)  # [B, T, H, W]
    assert (other == other[:1, :1]).all()
    found |= bool(other.any())
  assert found


def test_switch_prob_picks_cutmix_or_mixup():
  x, t = _normal(_SHAPE), _one_hot()
  for seed in range(3):
    out, _ = _mix(_key(seed), x, t, switch_prob=1.0)
    _partner_mask(out, x)  # cutmix: copies only
    out, targets = _mix(_key(seed), x, t, switch_prob=0.0)
    lam = np.asarray(targets)[0, 0]
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], atol=1e-5)


# --------------------------------------------------------------- RandAugment

_FILL = (0.5, 0.4, 0.3)  # what geometric ops uncover, in [0, 1]
_FILL8 = (128, 102, 76)


def _pixels(shape=(24, 24, 3), seed=0):
  """uint8 pixels skewed towards dark, so Equalize/AutoContrast matter."""
  rng = np.random.default_rng(seed)
  return (rng.random(shape) ** 2 * 230 + 10).astype(np.uint8)


@functools.partial(jax.jit, static_argnums=1)
def _jit_ops(image, names, magnitudes, fill):
  return [augment.OPS[n](image, m, fill) for n, m in zip(names, magnitudes)]


def _ops(image, calls, fill=_FILL):
  """[OPS[name](image, m, fill) for name, m in calls] as numpy, from one
  compiled call (op by op dispatch costs more), with m traced as in
  rand_augment."""
  names, magnitudes = zip(*calls)
  out = _jit_ops(jnp.asarray(image, jnp.float32), names,
                 jnp.asarray(magnitudes, jnp.float32), jnp.asarray(fill))
  return [np.asarray(o) for o in out]


def _factor(m):  # timm's increasing enhancement factor
  return max(0.1, 1.0 + 0.09 * m)


def _affine(pil, matrix):
  return pil.transform(pil.size, Image.AFFINE, matrix,
                       resample=Image.BILINEAR, fillcolor=_FILL8)


# (op, signed magnitude, the PIL computation timm does, pixels compared):
# geometric ops are compared where every bilinear tap is inside the image.
_PIL_CASES = [
    ('AutoContrast', 0, ImageOps.autocontrast, np.s_[:]),
    ('Equalize', 0, ImageOps.equalize, np.s_[:]),
    ('Invert', 0, ImageOps.invert, np.s_[:]),
    ('PosterizeIncreasing', 6, lambda p: ImageOps.posterize(p, 2), np.s_[:]),
    ('SolarizeIncreasing', 3, lambda p: ImageOps.solarize(p, 180), np.s_[:]),
    ('SolarizeAdd', 4, lambda p: p.point(
        [min(255, i + 44) if i < 128 else i for i in range(256)] * 3),
     np.s_[:]),
    # the sign of m picks the direction (timm's _randomly_negate)
    *[(name, m, lambda p, m=m, e=e: e(p).enhance(_factor(m)), np.s_[:])
      for name, e, m in (('ColorIncreasing', ImageEnhance.Color, 8),
                         ('ContrastIncreasing', ImageEnhance.Contrast, -8),
                         ('BrightnessIncreasing', ImageEnhance.Brightness, 8),
                         ('SharpnessIncreasing', ImageEnhance.Sharpness, -8))],
    ('Rotate', 9, lambda p: p.rotate(27, resample=Image.BILINEAR,
                                     fillcolor=_FILL8), np.s_[8:16, 8:16]),
    ('ShearX', -9, lambda p: _affine(p, (1, -0.27, 0, 0, 1, 0)),
     np.s_[3:21, 8:16]),
    ('ShearY', 9, lambda p: _affine(p, (1, 0, 0, 0.27, 1, 0)),
     np.s_[8:16, 3:21]),
    ('TranslateXRel', -9, lambda p: _affine(p, (1, 0, -0.405 * 24, 0, 1, 0)),
     np.s_[:, 11:13]),
    ('TranslateYRel', 9, lambda p: _affine(p, (1, 0, 0, 0, 1, 0.405 * 24)),
     np.s_[11:13]),
]


@functools.cache
def _pil_case_outputs():
  return _ops(_pixels() / 255.0, [(name, m) for name, m, _, _ in _PIL_CASES])


@pytest.mark.parametrize('case', range(len(_PIL_CASES)),
                         ids=[f'{c[0]}{c[1]}' for c in _PIL_CASES])
def test_op_matches_pil(case):
  _, _, pil_fn, region = _PIL_CASES[case]
  u8 = _pixels()
  want = np.asarray(pil_fn(Image.fromarray(u8)), np.float32)
  # PIL rounds or truncates to 8 bits, we do not: at most 1.5 levels apart.
  np.testing.assert_allclose(_pil_case_outputs()[case][region] * 255,
                             want[region], atol=1.5)
  assert not np.allclose(want, u8)  # the case does change the image


def test_equalize_matches_pil_with_a_full_top_bin_and_one_value():
  few = np.minimum(_pixels(), 150)  # a fifth of the pixels in the top bin
  for u8 in (few, np.full_like(few, 77)):  # one value: PIL changes nothing
    out, = _ops(u8 / 255.0, [('Equalize', 0)])
    want = np.asarray(ImageOps.equalize(Image.fromarray(u8)), np.float32)
    np.testing.assert_allclose(out * 255, want, atol=1e-3)


def test_ops_on_known_values():
  v = np.array([0, 63, 127, 128, 200, 255], np.float32).reshape(1, 6, 1)
  v = np.tile(v / 255.0, (1, 1, 3))
  invert, post5, post10, solarize, bright, dark = _ops(v, [
      ('Invert', 3), ('PosterizeIncreasing', 5), ('PosterizeIncreasing', -10),
      ('SolarizeIncreasing', 5), ('BrightnessIncreasing', 5),
      ('BrightnessIncreasing', -5)])
  px = lambda a: np.round(a[0, :, 0] * 255)
  np.testing.assert_allclose(invert, 1 - v, atol=1e-7)
  # Posterize: m=5 keeps 4 - 2 = 2 bits; m=10 keeps none (black).
  np.testing.assert_array_equal(px(post5), [0, 0, 64, 128, 192, 192])
  np.testing.assert_array_equal(post10, 0)
  # Solarize: m=5 inverts the bytes >= 128.
  np.testing.assert_array_equal(px(solarize), [0, 63, 127, 127, 55, 0])
  # Brightness: factor 1 +- 0.45 at m = +-5, clipped to 1.
  np.testing.assert_allclose(bright, np.minimum(1.45 * v, 1), atol=1e-6)
  np.testing.assert_allclose(dark, 0.55 * v, atol=1e-6)


def test_translate_by_whole_pixels_shifts_and_fills():
  img = _pixels((20, 20, 3)) / 255.0
  outs = _ops(img, [(n, m) for n in ('TranslateXRel', 'TranslateYRel')
                    for m in (10.0, -10.0)])
  fill = np.broadcast_to(np.float32(_FILL), (20, 20, 3))
  for (out_plus, out_minus), axis in zip((outs[:2], outs[2:]), (1, 0)):
    take = lambda a, s, axis=axis: np.take(a, np.arange(20)[s], axis)
    # m = 10: 0.45 * 20 = 9 pixels; output x samples input x + 9.
    np.testing.assert_allclose(take(out_plus, np.s_[:11]),
                               take(img, np.s_[9:]), atol=1e-5)
    np.testing.assert_allclose(take(out_plus, np.s_[11:]),
                               take(fill, np.s_[11:]), atol=1e-5)
    np.testing.assert_allclose(take(out_minus, np.s_[9:]),
                               take(img, np.s_[:11]), atol=1e-5)
    np.testing.assert_allclose(take(out_minus, np.s_[:9]),
                               take(fill, np.s_[:9]), atol=1e-5)


def test_ops_at_magnitude_zero_are_the_identity_where_timm_is():
  img = _pixels() / 255.0
  names = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel',
           'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing',
           'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing')
  for name, out in zip(names, _ops(img, [(n, 0.0) for n in names])):
    np.testing.assert_allclose(out, img, atol=1e-6, err_msg=name)


def test_rand_augment_ops_are_timms_increasing_list():
  assert len(augment.RAND_AUGMENT_OPS) == 15
  assert set(augment.RAND_AUGMENT_OPS) == set(augment.OPS)


def _normalized(shape, seed=0):
  """Normalized images of pixels uniform in [0, 1]."""
  u = np.random.default_rng(seed).random(shape)
  return ((u - np.array(MEAN)) / np.array(STD)).astype(np.float32)


def test_rand_augment_deterministic_in_range_and_sometimes_skipped():
  x = _normalized((8, 16, 16, 3))
  out = np.asarray(_rand_augment(_key(0), x))
  np.testing.assert_array_equal(out, _rand_augment(_key(0), x))
  assert not np.array_equal(out, _rand_augment(_key(1), x))
  assert out.shape == x.shape and np.isfinite(out).all()
  mean, std = np.array(MEAN), np.array(STD)
  assert (out >= -mean / std - 1e-5).all()
  assert (out <= (1 - mean) / std + 1e-5).all()
  same = [np.array_equal(out[b], x[b]) for b in range(8)]
  # each of 2 ops is applied with probability 0.5: P(untouched) = 1/4.
  assert any(same) and not all(same)


def test_rand_augment_gives_every_frame_of_a_clip_the_same_ops():
  clip = _normalized((8, 2, 16, 16, 3), seed=1)
  out = np.asarray(_rand_augment(_key(3), clip))
  for t in range(2):  # the draws depend on the key and B only
    np.testing.assert_allclose(out[:, t], _rand_augment(_key(3), clip[:, t]),
                               atol=1e-5)
  assert not np.allclose(out, clip)


def test_rand_augment_num_ops_zero_is_the_identity():
  x = _normal((2, 8, 8, 3))
  np.testing.assert_array_equal(
      augment.rand_augment(_key(0), x, mean=MEAN, std=STD, num_ops=0), x)


# ------------------------------------------------------------ random erasing

def _box_of(changed):
  """changed [H, W] -> (h, w) of the one full rectangle it must be."""
  rows, cols = np.nonzero(changed)
  h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
  assert changed.sum() == h * w
  return h, w


def test_random_erasing_prob_zero_is_the_identity():
  x = _normal(_SHAPE)
  np.testing.assert_array_equal(augment.random_erasing(_key(0), x, prob=0.0),
                                x)


def test_random_erasing_changes_one_box_within_bounds():
  x = _normal((16, 24, 24, 3))
  out = np.asarray(_erase(_key(0), x, prob=1.0))
  changed = (out != x).any(-1)
  for b in range(16):
    h, w = _box_of(changed[b])
    assert h < 24 and w < 24  # timm's fit test
    # sides are rounded from a target area and aspect within bounds
    assert (h - 0.5) * (w - 0.5) <= 24 * 24 / 3
    assert (h + 0.5) * (w + 0.5) >= 0.02 * 24 * 24
    assert (h - 0.5) / (w + 0.5) <= 1 / 0.3 and (h + 0.5) / (w - 0.5) >= 0.3
  erased = out[np.broadcast_to(changed[..., None], out.shape)]
  assert abs(erased.mean()) < 0.2 and abs(erased.std() - 1) < 0.2  # N(0, 1)


def test_random_erasing_box_is_the_same_on_every_frame():
  x = _normal((6, 3, 24, 24, 3))
  changed = (np.asarray(_erase(_key(1), x, prob=0.5)) != x).any(-1)
  assert (changed == changed[:, :1]).all()
  erased = changed.any((1, 2, 3))
  assert erased.any() and not erased.all()  # prob 0.5 per clip
  for b in np.nonzero(erased)[0]:
    _box_of(changed[b, 0])


# ------------------------------------------------------------------ batch 1

def test_batch_of_one():
  x, t = _normal((1, 8, 8, 3)), _one_hot(1)
  out, targets = _mix(_key(0), x, t)  # mixed with itself
  np.testing.assert_allclose(out, x, atol=1e-5)
  np.testing.assert_allclose(targets, t, atol=1e-6)
  out = np.asarray(_rand_augment(_key(0), x))
  assert out.shape == x.shape and np.isfinite(out).all()
  out = np.asarray(_erase(_key(0), x, prob=1.0))
  _box_of((out != x).any(-1)[0])
