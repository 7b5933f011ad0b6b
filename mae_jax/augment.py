"""Fine-tuning augmentations, on the device, as pure functions of a PRNG key.

The MAE fine-tuning recipe (He et al. 2022, "Masked Autoencoders Are Scalable
Vision Learners", appendix A.3, Table 9): RandAugment (9, 0.5) (Cubuk et al.
2020), label smoothing 0.1, mixup 0.8 (Zhang et al. 2018), CutMix 1.0 (Yun et
al. 2019), random erasing 0.25 (Zhong et al. 2020). The official code uses
timm: `rand-m9-mstd0.5-inc1`, Mixup in "batch" mode, RandomErasing 'pixel'.
In a train step, in timm's order: rand_augment -> random_erasing ->
mixup_cutmix (on smooth_one_hot targets). Images are normalized [B, H, W, C]
or clips [B, T, H, W, C]; a clip gets one draw (op, box, ...) for all frames.

RandAugment ops (RAND_AUGMENT_OPS, all of timm's _RAND_INCREASING_TRANSFORMS):
AutoContrast, Equalize, Invert, Rotate, PosterizeIncreasing,
SolarizeIncreasing, SolarizeAdd, Color/Contrast/Brightness/SharpnessIncreasing,
ShearX, ShearY, TranslateXRel, TranslateYRel. None is left out, and none
added (timm has no Identity: an op skipped with probability 0.5 is one). timm's
PIL versions work on uint8 images, ours on float pixels in [0, 1], so each is
the closest equivalent of timm's, not bit-identical:
  * geometric ops use bilinear interpolation (timm here: bicubic), and pixels
    next to the image border blend towards the fill;
  * AutoContrast is continuous (PIL truncates its lookup table to 8 bits);
    Equalize, Posterize and the Solarize thresholds use the 8-bit values;
  * Color/Contrast/Sharpness do not round their blend images to 8 bits.
Differences from timm elsewhere: mixup/cutmix draw one lambda for the global
batch (timm: one per process's batch) and accept an odd batch; pixels outside
[0, 1] after de-normalizing are clipped before RandAugment (timm's uint8
images cannot hold them); random erasing draws its 10 attempts at once and
keeps the first box that fits (timm: a loop).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp


def _box(top, bottom, left, right, h, w):
  """[..., H, W]: rows [top, bottom) x columns [left, right), bounds [...]."""
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)
  t, b, l, r = (v[..., None, None] for v in (top, bottom, left, right))
  return (rows >= t) & (rows < b) & (cols >= l) & (cols < r)


def smooth_one_hot(labels: jax.Array, num_classes: int,
                   smoothing: float = 0.0) -> jax.Array:
  """labels [B] int (or multi-hot [B, K]) -> [B, K] float32 targets, timm's
  convention: every class gets smoothing / K and each label 1 - smoothing on
  top (one-hot rows sum to 1; timm's BinaryCrossEntropy smooths multi-hot
  targets the same way)."""
  off = smoothing / num_classes
  hot = (labels > 0.5 if labels.ndim == 2
         else labels[:, None] == jnp.arange(num_classes))
  return jnp.where(hot, 1.0 - smoothing + off, off).astype(jnp.float32)


# ------------------------------------------------------------- mixup, cutmix

def mixup_cutmix(key: jax.Array, images: jax.Array, targets: jax.Array, *,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5
                 ) -> tuple[jax.Array, jax.Array]:
  """timm's Mixup in "batch" mode: one lambda and one box for the batch.

  images [B, H, W, C] or [B, T, H, W, C] and targets [B, K] (soft, e.g.
  smooth_one_hot) -> the same shapes. With probability `prob` the batch is
  mixed, by cutmix with probability `switch_prob` when both alphas are > 0;
  lambda ~ Beta(alpha, alpha) (alpha 0: that one is off). Each example is
  mixed with x.flip(0); targets lam * t + (1 - lam) * t.flip(0).
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets
  # One uniform draw for all the scalars (here and below): each jax.random
  # call is a threefry hash that costs compile time.
  k_uniform, k_lam = jax.random.split(key)
  u_mix, u_switch, u_y, u_x = jax.random.uniform(k_uniform, (4,))
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = u_switch < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
  # Beta(alpha, alpha) = Ga / (Ga + Gb), in log space as jax.random.beta
  # computes it, but from one loggamma call (less to compile).
  log_gamma = jax.random.loggamma(k_lam, alpha, (2,))
  lam = jax.nn.sigmoid(log_gamma[0] - log_gamma[1])
  mixed = u_mix < prob
  lam = jnp.where(mixed, lam, 1.0)  # lam = 1 is the identity below
  cut = mixed & use_cutmix
  # Cutmix box as timm's rand_bbox: sides int(size * sqrt(1 - lam)), centre
  # uniform over the image, half-sides cut // 2 on each side, clipped.
  h, w = images.shape[-3:-1]
  ratio = jnp.sqrt(1.0 - lam)
  half_h = jnp.floor(h * ratio).astype(jnp.int32) // 2
  half_w = jnp.floor(w * ratio).astype(jnp.int32) // 2
  cy = jnp.minimum(jnp.floor(u_y * h), h - 1).astype(jnp.int32)  # 0..h-1
  cx = jnp.minimum(jnp.floor(u_x * w), w - 1).astype(jnp.int32)
  box = _box(cy - half_h, cy + half_h, cx - half_w, cx + half_w, h, w)
  # timm's correct_lam: the label weight is the area actually kept.
  lam = jnp.where(cut, 1.0 - box.sum() / (h * w), lam)
  # Weights of self and partner per pixel; 0/1 exactly for cutmix, so its
  # pixels are copies, not sums.
  mine = jnp.where(cut, ~box, lam)[..., None].astype(images.dtype)
  other = jnp.where(cut, box, 1.0 - lam)[..., None].astype(images.dtype)
  images = mine * images + other * jnp.flip(images, 0)
  targets = lam * targets + (1.0 - lam) * jnp.flip(targets, 0)
  return images, targets.astype(jnp.float32)


# -------------------------------------------------------------- RandAugment
# An op maps one image [H, W, C] in [0, 1], a signed magnitude m in [-10, 10]
# and the fill [C] to an image in [0, 1]. timm negates the argument of Rotate,
# Shear*, Translate* and the *Increasing enhancements at random: the sign of m
# is that choice; the other ops use |m|.

def _byte(img):
  """The 8-bit value timm's PIL ops see, as int32."""
  return jnp.clip(jnp.round(img * 255.0), 0, 255).astype(jnp.int32)


def _gray(img):
  """PIL's 'L' conversion (ITU-R 601-2 luma), [H, W, 1]."""
  if img.shape[-1] != 3:
    return img.mean(-1, keepdims=True)
  return img @ jnp.array([0.299, 0.587, 0.114], img.dtype)[:, None]


def _blend(degenerate, img, m):
  """PIL ImageEnhance: degenerate + f * (img - degenerate), clipped, with
  timm's increasing factor f = max(0.1, 1 +- 0.9 * |m| / 10)."""
  f = jnp.maximum(0.1, 1.0 + 0.09 * m)
  return jnp.clip(degenerate + f * (img - degenerate), 0.0, 1.0)


def _auto_contrast(img):
  lo, hi = img.min((0, 1)), img.max((0, 1))
  flat = hi <= lo  # PIL leaves a one-valued channel as it is
  scale = 1.0 / jnp.where(flat, 1.0, hi - lo)
  return jnp.clip((img - jnp.where(flat, 0.0, lo)) * scale, 0.0, 1.0)


def _equalize_channel(img, q):
  """PIL ImageOps.equalize of one channel: img [H, W] float, q its bytes."""
  hist = jnp.bincount(q.ravel(), length=256)
  step = (q.size - hist[q.max()]) // 255
  lut = (step // 2 + jnp.cumsum(hist) - hist) // jnp.maximum(step, 1)
  out = jnp.minimum(lut, 255)[q].astype(img.dtype) / 255.0
  return jnp.where(step == 0, img, out)  # PIL: step 0 -> no change


def _posterize(img, m):
  # PosterizeIncreasing keeps 4 - int(|m| / 10 * 4) bits (0 at m = 10: black,
  # as PIL); clearing the low bits = flooring to multiples of 2^(8 - bits).
  step = 2.0 ** (4.0 + jnp.floor(jnp.abs(m) * 0.4))
  return jnp.floor(_byte(img) / step) * step / 255.0


def _sharpness(img, m):
  # PIL's SMOOTH filter (3x3, centre 5, others 1, / 13); it leaves the
  # one-pixel border as it was, so the border is never sharpened.
  h, w, _ = img.shape
  pad = jnp.pad(img, ((1, 1), (1, 1), (0, 0)), mode='edge')
  smooth = sum(pad[i:i + h, j:j + w] for i in range(3) for j in range(3))
  smooth = (smooth + 4.0 * img) / 13.0
  inner = jnp.zeros((h, w), bool).at[1:-1, 1:-1].set(True)
  return _blend(jnp.where(inner[..., None], smooth, img), img, m)


# name -> fn(img [H, W, C], m) -> img. Integer levels are timm's int(...).
_COLOR = {
    'AutoContrast': lambda img, m: _auto_contrast(img),
    'Equalize': lambda img, m: jax.vmap(_equalize_channel, (-1, -1), -1)(
        img, _byte(img)),
    'Invert': lambda img, m: 1.0 - img,
    'PosterizeIncreasing': _posterize,
    # Invert the bytes >= 256 - int(|m| / 10 * 256).
    'SolarizeIncreasing': lambda img, m: jnp.where(
        _byte(img) >= 256 - jnp.floor(jnp.abs(m) * 25.6), 1.0 - img, img),
    # Add int(|m| / 10 * 110) to the bytes below 128, saturating.
    'SolarizeAdd': lambda img, m: jnp.where(
        _byte(img) < 128,
        jnp.minimum(img + jnp.floor(jnp.abs(m) * 11.0) / 255.0, 1.0), img),
    'ColorIncreasing': lambda img, m: _blend(_gray(img), img, m),
    # PIL blends with the mean of the grey image, rounded to a byte.
    'ContrastIncreasing': lambda img, m: _blend(
        jnp.floor(_gray(img).mean() * 255.0 + 0.5) / 255.0, img, m),
    'BrightnessIncreasing': lambda img, m: _blend(0.0, img, m),
    'SharpnessIncreasing': _sharpness,
}


def _affine(a, b, c, d, e, f):
  return jnp.array([[a, b, c], [d, e, f]], jnp.float32)


def _rotation(m, h, w):
  t = jnp.deg2rad(3.0 * m)  # +-30 degrees at m = 10, counter-clockwise
  cos, sin, cx, cy = jnp.cos(t), jnp.sin(t), w / 2.0, h / 2.0
  return _affine(cos, -sin, cx - cos * cx + sin * cy,
                 sin, cos, cy - sin * cx - cos * cy)


# Geometric ops are affine maps in PIL's convention: output pixel (x, y)
# (column, row; pixel centres at +0.5) samples the input at
# (a x + b y + c, d x + e y + f). name -> fn(m, H, W) -> [[a, b, c], [d, e, f]].
_GEOMETRIC = {
    'Rotate': _rotation,
    'ShearX': lambda m, h, w: _affine(1, 0.03 * m, 0, 0, 1, 0),  # +-0.3
    'ShearY': lambda m, h, w: _affine(1, 0, 0, 0.03 * m, 1, 0),
    'TranslateXRel': lambda m, h, w: _affine(1, 0, 0.045 * m * w, 0, 1, 0),
    'TranslateYRel': lambda m, h, w: _affine(1, 0, 0, 0, 1, 0.045 * m * h),
}


def _warp(img, matrix, fill):
  """img [H, W, C] through an affine map, bilinear; taps outside the image
  read `fill` [C] (timm fills with the dataset mean)."""
  h, w, c = img.shape
  y, x = jnp.meshgrid(jnp.arange(h) + 0.5, jnp.arange(w) + 0.5, indexing='ij')
  sx = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2] - 0.5
  sy = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2] - 0.5
  x0, y0 = jnp.floor(sx), jnp.floor(sy)
  fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  flat = img.reshape(h * w, c)

  def tap(yy, xx):
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    pixel = flat[jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)]
    return jnp.where(inside[..., None], pixel, fill)

  top = (1 - fx) * tap(y0, x0) + fx * tap(y0, x0 + 1)
  bottom = (1 - fx) * tap(y0 + 1, x0) + fx * tap(y0 + 1, x0 + 1)
  return (1 - fy) * top + fy * bottom


# timm's _RAND_INCREASING_TRANSFORMS, in its order.
RAND_AUGMENT_OPS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
    'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing',
    'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing',
    'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
OpFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _op(name: str) -> OpFn:
  def op(image, magnitude, fill):
    m = jnp.asarray(magnitude, jnp.float32)
    if name in _COLOR:
      return _COLOR[name](image, m)
    matrix = _GEOMETRIC[name](m, *image.shape[:2])
    return _warp(image, matrix, jnp.asarray(fill, image.dtype))
  return op


# name -> fn(image [H, W, C] in [0, 1], signed magnitude, fill [C]) -> image.
OPS: dict[str, OpFn] = {name: _op(name) for name in RAND_AUGMENT_OPS}


def _apply_op(frames, index, m, fill):
  """RAND_AUGMENT_OPS[index] with magnitude m on every frame [T, H, W, C].

  Under vmap lax.switch evaluates every branch, so the five geometric ops
  share one warp: the switch picks a matrix (identity for colour ops) and
  the colour op (identity for geometric ones)."""
  h, w = frames.shape[1:3]
  eye = jnp.eye(2, 3)
  matrix = jnp.stack([_GEOMETRIC[n](m, h, w) if n in _GEOMETRIC else eye
                      for n in RAND_AUGMENT_OPS])[index]
  geometric = jnp.array([n in _GEOMETRIC for n in RAND_AUGMENT_OPS])[index]
  branches = [jax.vmap(_COLOR.get(n, lambda img, m: img), (0, None))
              for n in RAND_AUGMENT_OPS]
  colored = jax.lax.switch(index, branches, frames, m)
  warped = jax.vmap(_warp, (0, None, None))(frames, matrix, fill)
  return jnp.where(geometric, warped, colored)


def rand_augment(key: jax.Array, images: jax.Array, *, mean: Sequence[float],
                 std: Sequence[float], num_ops: int = 2,
                 magnitude: float = 9.0, magnitude_std: float = 0.5,
                 fill: Sequence[float] | None = None) -> jax.Array:
  """timm's RandAugment `rand-m{magnitude}-mstd{magnitude_std}-inc1`.

  Each example draws num_ops ops uniformly (with replacement) from
  RAND_AUGMENT_OPS and applies each with probability 0.5, at a magnitude
  ~ N(magnitude, magnitude_std) clipped to [0, 10] (magnitude_std = inf:
  uniform in [0, magnitude]), with a random sign.

  Args:
    key: PRNG key.
    images: normalized [B, H, W, C] or [B, T, H, W, C].
    mean, std: the per-channel normalization (length C).
    num_ops, magnitude, magnitude_std: timm's n, m and mstd (n = 0: identity).
    fill: [C] pixels in [0, 1] for what geometric ops uncover (default
      `mean`, as timm's img_mean).

  Returns:
    images like the input; an example with no op applied is returned as is.
  """
  if num_ops <= 0:
    return images
  x = images if images.ndim == 5 else images[:, None]  # [B, T, H, W, C]
  b = x.shape[0]
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  fill = mean if fill is None else jnp.asarray(fill, jnp.float32)
  u = jax.random.uniform(key, (4, b, num_ops))  # op, apply, magnitude, sign
  n = len(RAND_AUGMENT_OPS)
  index = jnp.minimum(jnp.floor(u[0] * n).astype(jnp.int32), n - 1)
  apply = u[1] < 0.5  # timm: skipped when random() > prob = 0.5
  if math.isinf(magnitude_std):
    m = u[2] * magnitude
  elif magnitude_std > 0:  # the normal's inverse CDF; ndtri(0) = -inf -> 0
    m = magnitude + magnitude_std * jax.scipy.special.ndtri(u[2])
  else:
    m = jnp.full(u[2].shape, magnitude)
  m = jnp.clip(m, 0.0, 10.0) * jnp.where(u[3] < 0.5, -1.0, 1.0)

  def one(frames, index, apply, m):
    def layer(frames, op):  # a scan: the ops are compiled once, not n times
      index, apply, m = op
      return jnp.where(apply, _apply_op(frames, index, m, fill), frames), None
    return jax.lax.scan(layer, frames, (index, apply, m))[0]

  pixels = jnp.clip(x.astype(jnp.float32) * std + mean, 0.0, 1.0)
  out = (jax.vmap(one)(pixels, index, apply, m) - mean) / std
  changed = apply.any(1).reshape((b,) + (1,) * (x.ndim - 1))
  out = jnp.where(changed, out.astype(x.dtype), x)
  return out if images.ndim == 5 else out[:, 0]


# ----------------------------------------------------------- random erasing
_ERASE_ATTEMPTS = 10  # timm's retries to fit a box


def random_erasing(key: jax.Array, images: jax.Array, *, prob: float = 0.25,
                   min_area: float = 0.02, max_area: float = 1 / 3,
                   min_aspect: float = 0.3, mode: str = 'pixel') -> jax.Array:
  """timm's RandomErasing (count 1) per example: normalized images
  [B, H, W, C] or [B, T, H, W, C] (one box per clip) -> the same shape.

  With probability `prob` an example gets one box: area fraction
  ~ U(min_area, max_area), aspect h / w log-uniform in
  [min_aspect, 1 / min_aspect], sides rounded; the first of 10 attempts with
  h < H and w < W is used (none fits: no box), at a uniform position. Its
  values (mode): 'pixel' N(0, 1) per pixel, 'rand' per channel, 'const' 0.
  """
  if mode not in ('pixel', 'rand', 'const'):
    raise ValueError(f"mode={mode!r}: allowed 'pixel', 'rand', 'const'")
  if prob <= 0:
    return images
  x = images if images.ndim == 5 else images[:, None]  # [B, T, H, W, C]
  b, _, h, w, c = x.shape
  k_uniform, k_values = jax.random.split(key)
  u = jax.random.uniform(k_uniform, (b, 2 * _ERASE_ATTEMPTS + 3))
  u_area, u_aspect = jnp.split(u[:, :-3], 2, axis=1)
  area = (min_area + (max_area - min_area) * u_area) * (h * w)
  log_aspect = math.log(min_aspect)  # to -log_aspect, as timm's default
  aspect = jnp.exp(log_aspect * (1.0 - 2.0 * u_aspect))
  box_h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  box_w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (box_h < h) & (box_w < w)
  first = jnp.argmax(fits, axis=1)[:, None]  # the first attempt that fits
  box_h = jnp.take_along_axis(box_h, first, 1)[:, 0]
  box_w = jnp.take_along_axis(box_w, first, 1)[:, 0]
  top = jnp.minimum(jnp.floor(u[:, -3] * (h - box_h + 1)), h - box_h)
  left = jnp.minimum(jnp.floor(u[:, -2] * (w - box_w + 1)), w - box_w)
  erase = (u[:, -1] < prob) & fits.any(1)
  box = _box(top, top + box_h, left, left + box_w, h, w)  # [B, H, W]
  box &= erase[:, None, None]
  if mode == 'pixel':
    values = jax.random.normal(k_values, x.shape, x.dtype)
  elif mode == 'rand':
    values = jax.random.normal(k_values, (b, 1, 1, 1, c), x.dtype)
  else:
    values = jnp.zeros((), x.dtype)
  out = jnp.where(box[:, None, :, :, None], values, x)
  return out if images.ndim == 5 else out[:, 0]
