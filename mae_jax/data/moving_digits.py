r"""Moving digits: synthetic videos with known motion, and a command that
writes them as real video files plus a manifest.

  python -m mae_jax.data.moving_digits --out=DIR --split=train --videos=200
  python -m mae_jax.data.moving_digits --out=DIR --split=test --videos=50
  # DIR/train/00000.mkv ... and DIR/train.csv ("path,label"); read them with
  # --config.data.source=video_files --config.data.path=DIR/{split}.csv
  # (the same --frames / --frame_stride / --label_key as model.frames,
  # data.frame_stride, data.label_key give the in-memory source's videos)

Video `index` of a split: an MNIST digit of the bundled subset (the test
split uses the held-out digits of sources.mnist's fixed train / test split),
resized to `digit_size`, moving at a constant speed (px / frame, uniform in
`speed`) in one of 8 compass directions on a black `size` x `size` canvas,
bouncing off the walls (a bounce mirrors one velocity component), for
`video_frames` frames: uint8 [F, size, size] (1 channel). The digit is drawn
at sub-pixel positions (bilinear), so its centre of mass moves by exactly
the velocity each frame, except where it bounces. Every video is a pure
function of (config.data.moving_digits, split, index, model.frames,
data.frame_stride).

Labels (config.data.label_key): 'label' = the digit (10 classes);
'direction' = the compass direction k (8 classes, DIRECTIONS[k]: angle
k x 45 degrees counter-clockwise from east = right; north = up) of the
velocity at the first frame of the evaluation clip, the centre window of
model.frames frames every data.frame_stride (video.centre_start). The
digit's position there is drawn so that it moves straight through the whole
evaluation clip when that fits on the canvas (travel <= size - digit_size),
else through as many frames as fit: at least one frame_stride step whenever
frame_stride x max speed <= size - digit_size. So the direction is seen in
the evaluation clip's first two frames.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import sys
import zlib

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from mae_jax.data import video
from mae_jax.data.sources import Source, _mnist, _stratified_split

DIRECTIONS = ('E', 'NE', 'N', 'NW', 'W', 'SW', 'S', 'SE')
LABEL_KEYS = {'label': 10, 'direction': 8}  # -> number of classes
# Unit velocity of direction k in image axes (x right, y down), with exact
# zeros on the axes.
_UNIT = np.round(np.array([(math.cos(k * math.pi / 4), -math.sin(
    k * math.pi / 4)) for k in range(8)]), 12) + 0.0  # no -0.0


def _fail(key: str, value, allowed: str):
  raise ValueError(f'config.data.{key}={value!r}: {allowed}')


def check_config(data_cfg) -> None:
  """config.data.moving_digits and label_key; ValueError naming the key."""
  m = data_cfg.moving_digits
  for key in ('videos', 'video_frames', 'size', 'digit_size'):
    if not isinstance(m[key], int) or m[key] < 1:
      _fail(f'moving_digits.{key}', m[key], 'must be an int >= 1')
  if m.digit_size >= m.size:
    _fail('moving_digits.digit_size', m.digit_size,
          f'must be smaller than moving_digits.size={m.size}, so the digit '
          'can move')
  speed = tuple(m.speed)
  if len(speed) != 2 or not 0 < speed[0] <= speed[1]:
    _fail('moving_digits.speed', m.speed,
          'must be a (min, max) pair of px / frame with 0 < min <= max')
  if data_cfg.label_key not in LABEL_KEYS:
    _fail('label_key', data_cfg.label_key,
          f'moving_digits labels are {tuple(LABEL_KEYS)} (the digit, or its '
          'motion direction out of 8)')


@functools.lru_cache(maxsize=64)
def _glyphs(split: str, digit_size: int) -> tuple[np.ndarray, np.ndarray]:
  """float32 digits [n, d, d] of the mnist `split` and their labels [n]."""
  images, labels = _mnist()
  ids = _stratified_split(labels, split, lambda n: 100, 'moving_digits')
  # Reshuffled: a prefix of the train split's order over-represents the
  # classes whose 100 test rows come first in it.
  ids = ids[np.random.default_rng(1).permutation(len(ids))]
  small = np.stack([np.asarray(Image.fromarray(images[i]).resize(
      (digit_size, digit_size), Image.BILINEAR)) for i in ids])
  return small.astype(np.float32), labels[ids]


def _reflect(u: np.ndarray, length: float) -> np.ndarray:
  """Unfolded coordinate -> position in [0, length] bouncing off both ends
  (a triangle wave)."""
  return length - np.abs(np.mod(u, 2 * length) - length)


def _render(glyph: np.ndarray, xy: np.ndarray, size: int) -> np.ndarray:
  """glyph float [d, d] at top-left positions xy float [F, 2] (x, y) ->
  uint8 [F, size, size]; sub-pixel offsets are bilinear weights of the 4
  neighbouring integer placements."""
  d = glyph.shape[0]
  n = len(xy)
  whole = np.floor(xy).astype(np.int64)
  fx, fy = (xy - whole).T
  padded = np.zeros((4, d + 1, d + 1), np.float32)
  padded[0, :d, :d] = glyph   # at (x0, y0)
  padded[1, :d, 1:] = glyph   # at (x0 + 1, y0)
  padded[2, 1:, :d] = glyph   # at (x0, y0 + 1)
  padded[3, 1:, 1:] = glyph   # at (x0 + 1, y0 + 1)
  weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy,
                      fx * fy], axis=1).astype(np.float32)
  patches = np.einsum('fk,kij->fij', weights, padded)
  canvas = np.zeros((n, size + 1, size + 1), np.float32)
  for t, (x0, y0) in enumerate(whole):
    canvas[t, y0:y0 + d + 1, x0:x0 + d + 1] = patches[t]
  return np.clip(np.round(canvas[:, :size, :size]), 0, 255).astype(np.uint8)


class MovingDigits(Source):
  """Moving-digit videos of one split; see the module docstring."""

  video = True

  def __init__(self, split: str, cfg, frames: int, frame_stride: int,
               label_key: str = 'label', videos: int | None = None):
    self.name = f'moving_digits:{split}'
    self.split = split
    # Video i does not depend on the length: a longer source only adds some.
    if videos is None:
      videos = cfg.videos if split == 'train' else max(1, cfg.videos // 4)
    self._videos = videos
    self.video_frames, self.size = cfg.video_frames, cfg.size
    self.digit_size = cfg.digit_size
    self.speed = tuple(float(s) for s in cfg.speed)
    self.frames, self.frame_stride = frames, frame_stride
    self.label_key = label_key
    self.num_classes = LABEL_KEYS[label_key]
    self._split_id = zlib.crc32(self.name.encode())  # stable, unlike hash()
    _glyphs(split, self.digit_size)  # a bad split fails here, not in a read

  def __len__(self) -> int:
    return self._videos

  def motion(self, index: int) -> dict:
    """The motion of video `index`: 'digit' (its row in the split),
    'direction' (class), 'velocity' float [2] (x, y px / frame),
    'reference' (first frame of the evaluation clip), 'straight' (frames
    after it without a bounce, at least), 'positions' float [F, 2] (the
    digit's top-left x, y in every frame)."""
    index = self._checked(index)
    rng = np.random.default_rng([self._split_id, index])
    k = int(rng.integers(8))
    v = rng.uniform(*self.speed) * _UNIT[k]
    free = float(self.size - self.digit_size)  # room to move, per axis
    f = self.video_frames
    w0 = video.centre_start(f, self.frames, self.frame_stride)
    last = min(f - 1, w0 + video.span(self.frames, self.frame_stride) - 1)
    fastest = float(np.abs(v).max())
    run = min(last - w0, int(free / fastest))
    # Start where `run` frames of travel stay on the canvas on each axis.
    travel = run * np.abs(v)
    lo = np.where(v < 0, travel, 0.0)
    start = lo + rng.uniform(0.0, 1.0, 2) * (free - travel)
    t = np.arange(f, dtype=np.float64)[:, None] - w0
    positions = _reflect(start + v * t, free)
    return {'digit': index % len(_glyphs(self.split, self.digit_size)[0]),
            'direction': k, 'velocity': v, 'reference': w0,
            'straight': run, 'positions': positions}

  def __getitem__(self, index: int) -> dict:
    m = self.motion(index)
    glyphs, digits = _glyphs(self.split, self.digit_size)
    frames = _render(glyphs[m['digit']], m['positions'], self.size)
    label = (int(digits[m['digit']]) if self.label_key == 'label' else
             m['direction'])
    return {'image': frames, 'label': label}


def open_moving_digits(data_cfg, split: str, frames: int) -> MovingDigits:
  """The `split` ('train' / 'test') of data.moving_digits; `frames` =
  model.frames (the evaluation clip defines the direction labels)."""
  check_config(data_cfg)
  if split not in ('train', 'test'):
    raise ValueError(f'moving_digits has splits train / test, not {split!r} '
                     '(config.data.split / config.data.eval_split)')
  return MovingDigits(split, data_cfg.moving_digits, frames,
                      data_cfg.frame_stride, data_cfg.label_key)


# ----------------------------------------------------------- the command


def write_files(out: str, split: str, source: MovingDigits, *,
                codec: str = 'ffv1', fps: int = 25) -> str:
  """Writes every video of `source` to out/<split>/NNNNN.<ext> and the
  manifest out/<split>.csv (header "path,label", paths relative to `out`,
  labels by source.label_key); -> the manifest's path."""
  ext = video.CODECS[codec][0] if codec in video.CODECS else ''
  os.makedirs(os.path.join(out, split), exist_ok=True)
  rows = []
  for i in range(len(source)):
    rec = source[i]
    rel = f'{split}/{i:05d}{ext}'
    video.write_video(os.path.join(out, rel), rec['image'], codec=codec,
                      fps=fps)
    rows.append((rel, rec['label']))
  manifest = os.path.join(out, f'{split}.csv')
  tmp = manifest + '.tmp'
  with open(tmp, 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(('path', 'label'))
    w.writerows(rows)
  os.replace(tmp, manifest)  # a manifest is never half written
  return manifest


def main(argv) -> None:
  from mae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  d = config_lib.base_config().data
  d.update(source='moving_digits', label_key=f.label_key,
           frame_stride=f.frame_stride)
  m = d.moving_digits
  try:
    for key in ('video_frames', 'size', 'digit_size'):
      if f[key].value is not None:
        m[key] = f[key].value
    if f.speed is not None:
      m.speed = tuple(float(s) for s in f.speed)
    if f.codec not in video.CODECS:
      raise ValueError(f'--codec={f.codec!r}: allowed {sorted(video.CODECS)}')
    if f.videos is not None and f.videos < 1:
      raise ValueError(f'--videos={f.videos}: must be >= 1')
    check_config(d)
    source = MovingDigits(f.split, m, f.frames, f.frame_stride, f.label_key,
                          videos=f.videos)
    manifest = write_files(f.out, f.split, source, codec=f.codec, fps=f.fps)
  except ValueError as e:
    sys.exit(f'moving_digits: {e}'.replace('config.data.moving_digits.', '--')
             .replace('config.data.', '--'))
  print(f'{len(source)} videos of {source.name} in {f.out}/{f.split}/; '
        f'manifest {manifest}')


def _define_flags() -> None:
  """Flags of the command only (this module is also the source)."""
  flags.DEFINE_string('out', None, 'output directory')
  flags.DEFINE_string('split', 'train', 'train or test')
  flags.DEFINE_string('codec', 'ffv1', f'one of {sorted(video.CODECS)} '
                      '(ffv1: lossless, .mkv; others .mp4)')
  flags.DEFINE_integer('fps', 25, 'frame rate written in the files')
  flags.DEFINE_string('label_key', 'label', 'label | direction')
  flags.DEFINE_integer('frames', 8, 'model.frames the direction labels are '
                       'defined for (see the module docstring)')
  flags.DEFINE_integer('frame_stride', 4, 'data.frame_stride, idem')
  flags.DEFINE_integer('videos', None, 'videos to write (indices 0..N-1 of '
                       'the split); default: as the in-memory source, '
                       'config.data.moving_digits.videos for train, a '
                       'quarter for test')
  flags.DEFINE_integer('video_frames', None, 'frames per video')
  flags.DEFINE_integer('size', None, 'canvas size, px')
  flags.DEFINE_integer('digit_size', None, 'digit size, px')
  flags.DEFINE_list('speed', None, 'min,max speed, px / frame')
  flags.mark_flag_as_required('out')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
