"""Per-image numpy transforms: decode, crops, normalization, and the image
modality's ops (ImageOps).

Everything here works on one uint8 image `[H, W, C]` at a time and uses PIL
bicubic resampling (the torchvision / MAE reference). Pure numpy, so it runs in
grain reader threads and worker processes without touching jax.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from mae_jax.errors import DataError

# PIL modes the decoder converts encoded files to, by channel count.
_MODES = {1: 'L', 3: 'RGB'}


class BadRecordError(DataError):
  """A record that cannot be turned into an image; the message names where."""


def decode(image, *, channels: int, where: str) -> np.ndarray:
  """Raw record image (encoded bytes or uint8 array) -> uint8 [H, W, channels].

  Grayscale and RGB convert into each other (repeat / ITU-R 601 luminance, as
  PIL's 'L' mode); anything else that does not match raises BadRecordError
  whose message starts with `where` (source, record index, file).
  """
  if isinstance(image, (bytes, bytearray, memoryview)):
    return _decode_bytes(bytes(image), channels, where)
  if not isinstance(image, np.ndarray):
    raise BadRecordError(
        f'{where}: image is a {type(image).__name__}; expected encoded image '
        'bytes or a uint8 array [H, W] / [H, W, C]')
  expected = 'expected a uint8 array [H, W] or [H, W, C]'
  if image.dtype != np.uint8:
    raise BadRecordError(
        f'{where}: image dtype is {image.dtype}; {expected} (scale other '
        'dtypes to 0..255 uint8 when writing the data)')
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3:
    raise BadRecordError(f'{where}: image shape is {image.shape}; {expected}')
  if image.size == 0:
    raise BadRecordError(f'{where}: image is empty {image.shape}; {expected}')
  have = image.shape[-1]
  if have == channels:
    return image
  if have == 1 and channels == 3:
    return np.repeat(image, 3, axis=-1)
  if have == 3 and channels == 1:
    return _luminance(image)
  raise BadRecordError(
      f'{where}: image has {have} channels {image.shape}; expected '
      f'{channels} (model.channels), or 1 <-> 3 which are converted')


def _decode_bytes(data: bytes, channels: int, where: str) -> np.ndarray:
  if channels not in _MODES:
    raise BadRecordError(
        f'{where}: encoded images decode to 1 or 3 channels, but '
        f'model.channels={channels}; store such data as uint8 arrays')
  if not data:
    raise BadRecordError(
        f'{where}: image bytes are empty; expected a PNG/JPEG/BMP/GIF/WEBP '
        'file')
  try:
    with Image.open(io.BytesIO(data)) as pil:
      pil = pil.convert(_MODES[channels])  # convert() also forces the decode
  except Exception as e:  # PIL raises many types for corrupt files
    # PIL's own message for an unknown format only names the BytesIO object.
    why = ('unrecognized format' if isinstance(e, UnidentifiedImageError)
           else f'{type(e).__name__}: {e}')
    raise BadRecordError(
        f'{where}: cannot decode {len(data)} image bytes ({why}); expected a '
        'PNG/JPEG/BMP/GIF/WEBP file') from e
  out = np.asarray(pil, dtype=np.uint8)
  return out[:, :, None] if out.ndim == 2 else out


def _luminance(rgb: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> [H, W, 1] with PIL's 'L' weights."""
  y = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.clip(np.round(y), 0, 255).astype(np.uint8)[:, :, None]


def resize_box(img: np.ndarray, size: Sequence[int],
               box: tuple[float, float, float, float]) -> np.ndarray:
  """Bicubic resize of the `box` (left, top, right, bottom) of `img` [H, W, C]
  to `size` (h, w) -> uint8 [h, w, C]. PIL resamples the box directly, so no
  intermediate crop is materialized."""
  h, w = size
  c = img.shape[-1]
  # PIL has one uint8 mode for 3 channels ('RGB'; 'RGBA' would premultiply
  # alpha); any other count is resized plane by plane as 'L'.
  planes = [img] if c == 3 else [img[:, :, k] for k in range(c)]
  out = [np.asarray(Image.fromarray(p).resize((w, h), Image.BICUBIC, box=box))
         for p in planes]
  return out[0] if c == 3 else np.stack(out, axis=-1)


def random_crop_box(height: int, width: int, rng: np.random.Generator,
                    scale: Sequence[float], ratio: Sequence[float]
                    ) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box (left, top, right, bottom) in an
  image of `height` x `width`.

  10 tries at a box of area `scale` x H*W and log-uniform aspect `ratio`
  (w / h) that fits; otherwise the whole image center-cropped to the nearest
  allowed aspect ratio.
  """
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, left + w, top + h
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return left, top, left + w, top + h


def random_resized_crop(img: np.ndarray, rng: np.random.Generator,
                        size: Sequence[int], scale: Sequence[float],
                        ratio: Sequence[float]) -> np.ndarray:
  """torchvision's RandomResizedCrop: uint8 [H, W, C] -> [h, w, C]; the box
  is `random_crop_box`'s."""
  box = random_crop_box(img.shape[0], img.shape[1], rng, scale, ratio)
  return resize_box(img, size, box)


def center_box(height: int, width: int, size: Sequence[int],
               fraction: float = 1.0) -> tuple[float, float, float, float]:
  """The central box of an image of `height` x `width` with the aspect ratio
  of `size` (h, w), as large as fits, scaled by `fraction`: see
  resize_center_crop."""
  h, w = size
  s = min(height / h, width / w) * fraction  # source pixels per output pixel
  ch, cw = h * s, w * s
  top, left = (height - ch) / 2, (width - cw) / 2
  return left, top, left + cw, top + ch


def resize_center_crop(img: np.ndarray, size: Sequence[int],
                       fraction: float = 1.0) -> np.ndarray:
  """Evaluation view: uint8 [H, W, C] -> [h, w, C].

  Equivalent to resizing (keeping the aspect ratio) until the image covers
  `size` / fraction, then taking the center `size`; done as one resize of
  the central box. fraction 0.875 is timm's / MAE's crop_pct (resize to 256,
  crop 224).
  """
  return resize_box(img, size, center_box(img.shape[0], img.shape[1], size,
                                          fraction))


class ImageOps:
  """The image modality of the pipeline (model.frames = 0): decode a raw
  record's image, its training augmentation and its evaluation view.
  video.ClipOps is the same for clips; the pipeline picks one of the two.

  size: (h, w) of the model input; scale / ratio: the random resized crop's
  ranges (data.crop_scale, data.crop_ratio); hflip: random horizontal flip.
  """

  clips = False  # elements are single examples, not stacks of clips

  def __init__(self, size: Sequence[int], channels: int,
               scale: Sequence[float], ratio: Sequence[float], hflip: bool,
               eval_crop: float = 1.0):
    self.size = tuple(size)
    self.channels = channels
    self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
    self.eval_crop = eval_crop

  @property
  def shape(self) -> tuple[int, ...]:
    """One example: (h, w, C)."""
    return (*self.size, self.channels)

  def decode(self, raw, where: str) -> np.ndarray:
    """Raw record image -> uint8 [H, W, C] (see `decode`)."""
    return decode(raw, channels=self.channels, where=where)

  def augment(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [H, W, C] -> random resized crop (+ flip) uint8 [h, w, C]."""
    img = random_resized_crop(img, rng, self.size, self.scale, self.ratio)
    if self.hflip and rng.random() < 0.5:
      img = img[:, ::-1]
    return np.ascontiguousarray(img)

  def eval_view(self, img: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C] -> resize + center crop uint8 [h, w, C] (the crop
    keeps `eval_crop` of the resized image's shorter side)."""
    return resize_center_crop(img, self.size, self.eval_crop)


def _stats(mean, std, channels: int) -> tuple[np.ndarray, np.ndarray]:
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if mean.shape != std.shape or mean.size not in (1, channels):
    raise ValueError(
        f'config.data.mean / std have {mean.size} / {std.size} entries; '
        f'expected 1 or {channels} (model.channels) each')
  return mean, std


def normalize(img: np.ndarray, mean, std) -> np.ndarray:
  """uint8 [..., C] -> float32 (img / 255 - mean) / std; a float input (a
  log-mel spectrogram) is already in its units: (img - mean) / std."""
  mean, std = _stats(mean, std, img.shape[-1])
  if img.dtype != np.uint8:
    return (img.astype(np.float32) - mean) / std
  return (img.astype(np.float32) * np.float32(1 / 255) - mean) / std


def denormalize(x: np.ndarray, mean, std) -> np.ndarray:
  """Inverse of `normalize`: float [..., C] -> uint8, clipped to 0..255."""
  mean, std = _stats(mean, std, np.shape(x)[-1])
  y = (np.asarray(x, np.float32) * std + mean) * 255
  return np.clip(np.round(y), 0, 255).astype(np.uint8)
