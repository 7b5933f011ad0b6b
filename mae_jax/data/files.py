"""File-backed sources: image folders, ArrayRecord files (images or clips),
prepared TFDS data. Video files listed in a manifest: manifests.py.

Registered (and imported on first use) by sources.py; see there for the record
format. Records keep images and videos encoded: decoding happens in the
pipeline.
"""

from __future__ import annotations

from concurrent import futures
import glob
import io
import os
import threading
from typing import Sequence

from array_record.python import array_record_module
import numpy as np
from PIL import Image

from mae_jax.data import video
from mae_jax.data.sources import RECORD_FORMATS, Source
from mae_jax.data.transforms import BadRecordError


def _fail(key: str, value, allowed: str):
  raise ValueError(f'config.data.{key}={value!r}: {allowed}')


# ------------------------------------------------------------------- folder

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(root: str) -> list[str]:
  """Image files below `root`, relative to it, in a deterministic order
  (hidden directories such as .ipynb_checkpoints are ignored)."""
  found = []
  for d, dirs, files in os.walk(root, followlinks=True):
    dirs[:] = sorted(x for x in dirs if not x.startswith('.'))
    rel = os.path.relpath(d, root)
    found.extend(os.path.normpath(os.path.join(rel, f)) for f in sorted(files)
                 if _is_image(f))
  return found


def _has_images(d: str) -> bool:
  """Whether any image lies below `d`; stops at the first one (cheap)."""
  with os.scandir(d) as entries:
    subdirs = []
    for e in entries:
      if e.is_file() and _is_image(e.name):
        return True
      if e.is_dir() and not e.name.startswith('.'):
        subdirs.append(e.path)
  return any(_has_images(x) for x in subdirs)


def _class_names(root: str) -> list[str]:
  """Sorted immediate subdirectories of `root` that hold images."""
  with os.scandir(root) as entries:
    dirs = [e for e in entries if e.is_dir() and not e.name.startswith('.')]
  return sorted(e.name for e in dirs if _has_images(e.path))


class _FileList(Source):
  """Files under `root` (self._files: their relative paths as bytes) with
  labels; a record is a file's bytes, decoded in the pipeline."""

  root: str
  _files: np.ndarray
  _labels: np.ndarray

  def __len__(self) -> int:
    return len(self._files)

  def path(self, index: int) -> str:
    return os.path.join(self.root, os.fsdecode(self._files[index]))

  def where(self, index: int) -> str:
    return f'{self.name} record {index} ({self.path(index)})'

  def label(self, index: int) -> int:
    return int(self._labels[index])

  def __getitem__(self, index: int) -> dict:
    index = self._checked(index)
    with open(self.path(index), 'rb') as f:
      return {'image': f.read(), 'label': self.label(index)}


class FolderSource(_FileList):
  """Encoded image files below a directory; records are the file bytes."""

  def __init__(self, root: str, files: Sequence[str], labels: np.ndarray,
               classes: Sequence[str]):
    self.name = f'folder:{root}'
    self.root = root
    self.classes = tuple(classes)
    self.num_classes = len(classes)
    # One bytes array instead of a list of str: compact and quick to pickle
    # into worker processes, even for millions of files.
    self._files = np.array([os.fsencode(f) for f in files], dtype=bytes)
    self._labels = labels.astype(np.int32)


def open_folder(data_cfg, split: str) -> Source:
  """`data.path/<split>/`, or `data.path` itself for 'train'. Immediate
  subdirectories that hold images are classes (sorted names -> 0..n-1; other
  splits use the train split's numbering); without them the images are
  unlabeled."""
  base = os.path.abspath(os.path.expanduser(data_cfg.path))
  root = os.path.join(base, split)
  if not os.path.isdir(root):
    if split != 'train':
      _fail('path', data_cfg.path,
            f'has no {split!r} subdirectory ({root}) for split {split!r}; '
            'only the train split may be the directory itself')
    root = base
  if not os.path.isdir(root):
    _fail('path', data_cfg.path, 'must be an existing directory')
  classes = _class_names(root)
  files, labels = [], []
  if classes:
    loose = [e.name for e in os.scandir(root)
             if e.is_file() and _is_image(e.name)]
    if loose:
      _fail('path', data_cfg.path,
            f'{root} has class subdirectories and also {len(loose)} images '
            f'at its top level (e.g. {sorted(loose)[0]}); move them into a '
            'class directory or remove them')
    train_root = os.path.join(base, 'train')
    if root != train_root and os.path.isdir(train_root):
      # A label must mean the same class in every split, even when this split
      # lacks some classes: number them by the train split's classes.
      names = _class_names(train_root)
      extra = sorted(set(classes) - set(names))
      if extra:
        _fail('path', data_cfg.path,
              f'{root} has classes {extra[:5]} that {train_root} lacks; '
              'every split must use the train classes')
      classes = names
    for label, name in enumerate(classes):
      if os.path.isdir(os.path.join(root, name)):
        found = _images_under(os.path.join(root, name))
        files.extend(os.path.join(name, f) for f in found)
        labels.extend([label] * len(found))
  else:
    files = _images_under(root)
    labels = [-1] * len(files)
  if not files:
    _fail('path', data_cfg.path,
          f'no image files ({", ".join(IMAGE_EXTENSIONS)}) below {root}')
  return FolderSource(root, files, np.asarray(labels), classes)


# ------------------------------------------------------ array_record, tfds


def _example_proto():
  # Deferred: importing tensorflow_datasets costs ~0.2 s (no TF needed).
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  return tf_example_pb2


class _Parse:
  """Reader record -> raw record, for `kind` 'example' (tf.train.Example
  bytes), 'image_bytes' (an encoded image file), 'clip' (video.clip_record
  bytes: decoded frames + label) or 'dict' (TFDS)."""

  def __init__(self, kind: str, image_key: str, label_key: str):
    self.kind, self.image_key, self.label_key = kind, image_key, label_key

  def label(self, record, where: str) -> int:
    """The record's label alone (clips: without reading the frames)."""
    if self.kind == 'clip':
      return video.clip_record_label(record, where)
    return self(record, where)['label']

  def __call__(self, record, where: str) -> dict:
    if self.kind == 'image_bytes':
      return {'image': record, 'label': -1}
    if self.kind == 'clip':
      return video.parse_clip_record(record, where)
    if self.kind == 'dict':
      return {'image': record[self.image_key],
              'label': int(record.get(self.label_key, -1))}
    try:
      feats = _example_proto().Example.FromString(record).features.feature
    except Exception as e:  # protobuf's DecodeError
      raise BadRecordError(
          f'{where}: not a serialized tf.train.Example ({e}); expected '
          "config.data.record_format='example' records, or set "
          "'image_bytes'") from e
    image = feats[self.image_key].bytes_list.value if (
        self.image_key in feats) else []
    if len(image) != 1:
      raise BadRecordError(
          f'{where}: needs one bytes value under config.data.image_key='
          f'{self.image_key!r}; the record has features {sorted(feats)}')
    label = feats[self.label_key].int64_list.value if (
        self.label_key in feats) else []
    return {'image': image[0], 'label': int(label[0]) if label else -1}


class ReaderSource(Source):
  """A random-access reader (ArrayRecord files, a TFDS data source) whose
  records `parse` turns into raw records."""

  def __init__(self, name: str, reader, parse: _Parse,
               num_classes: int | None = None):
    self.name = name
    self._reader = reader
    self._parse = parse
    self._num_classes = num_classes  # None: scan the labels on first use
    self.video = parse.kind == 'clip'

  def __len__(self) -> int:
    return len(self._reader)

  def __getitem__(self, index: int) -> dict:
    index = self._checked(index)
    return self._parse(self._reader[index], self.where(index))

  @property
  def num_classes(self) -> int:
    """max label + 1 (0 if unlabeled); a full scan on first use if unknown."""
    if self._num_classes is None:
      top = -1
      for i in range(len(self)):
        try:
          top = max(top, self._parse.label(self._reader[i], self.where(i)))
        except BadRecordError:
          pass  # reported when the pipeline reads it
      self._num_classes = top + 1
    return self._num_classes


# Random access: no readahead, a small file buffer (grain's own choice).
_READER_OPTIONS = 'readahead_buffer_size:0'
_READER_BUFFER = 32768


def _open_shard(path: str):
  """An ArrayRecordReader for `path`; ValueError naming the file if unusable.

  The reader does not raise on a bad file: it reports ok() = False and 0
  records (which would silently drop a truncated shard from the data), and
  says why only when closed.
  """
  reader = array_record_module.ArrayRecordReader(
      path, _READER_OPTIONS, file_reader_buffer_size=_READER_BUFFER)
  if reader.ok():
    return reader
  try:
    reader.close()
    why = ''
  except Exception as e:  # pylint: disable=broad-except  # the reader's status
    why = str(e).strip()
  size = os.path.getsize(path) if os.path.exists(path) else None
  what = ('it does not exist' if size is None else
          'it is empty (0 bytes)' if size == 0 else
          f'its {size} bytes are not a readable ArrayRecord file (truncated '
          'or corrupt)')
  raise ValueError(f'{path}: cannot be opened as an ArrayRecord shard: '
                   f'{what}{f" ({why})" if why else ""}; rewrite or remove '
                   'this file')


class ArrayRecordShards:
  """Records of several ArrayRecord files as one sequence.

  Global index i is record i - starts[k] of file k (files in the given
  order). Readers open lazily, once per process and file, so the object
  pickles small into grain worker processes.
  """

  def __init__(self, paths: Sequence[str]):
    self.paths = tuple(paths)
    # Opening reads each file's index: in parallel, for many-shard data sets.
    with futures.ThreadPoolExecutor(min(16, len(self.paths))) as pool:
      counts = list(pool.map(self._count, self.paths))
    # starts[k] = global index of file k's first record; starts[-1] = total.
    self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self._readers: dict[int, object] = {}
    self._lock = threading.Lock()

  @staticmethod
  def _count(path: str) -> int:
    reader = _open_shard(path)
    try:
      return reader.num_records()
    finally:
      reader.close()

  def __len__(self) -> int:
    return int(self.starts[-1])

  def locate(self, index: int) -> tuple[str, int]:
    """(file, record index within that file) of global record `index`."""
    k = int(np.searchsorted(self.starts, index, side='right')) - 1
    return self.paths[k], int(index - self.starts[k])

  def __getitem__(self, index: int) -> bytes:
    k = int(np.searchsorted(self.starts, index, side='right')) - 1
    reader = self._readers.get(k)
    if reader is None:
      with self._lock:  # reader threads share one reader per file
        reader = self._readers.get(k)
        if reader is None:
          reader = self._readers[k] = _open_shard(self.paths[k])
    return reader.read([int(index - self.starts[k])])[0]

  def __getstate__(self) -> dict:
    state = self.__dict__.copy()
    state['_readers'], state['_lock'] = {}, None
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()


class ArrayRecordSource(ReaderSource):
  """ArrayRecord shards; errors name the file and the record within it."""

  def where(self, index: int) -> str:
    path, j = self._reader.locate(index)
    return f'{path} record {j} (record {index} of {self.name})'


def open_array_record(data_cfg, split: str) -> Source:
  """`data.path` is a glob; '{split}' in it is replaced by the split. Without
  '{split}' the files are the train split only. Files are read in sorted
  name order; each is opened here, so a truncated or corrupt one is named
  before training starts."""
  pattern = os.path.expanduser(data_cfg.path)
  if '{split}' not in pattern and split != 'train':
    _fail('path', data_cfg.path,
          f"has no '{{split}}' to select split {split!r}; without it the "
          'files are the train split only')
  pattern = pattern.replace('{split}', split)
  paths = sorted(glob.glob(pattern))
  if not paths:
    _fail('path', data_cfg.path,
          f'no files match {pattern!r} (split {split!r})')
  try:
    shards = ArrayRecordShards(paths)
  except ValueError as e:
    _fail('path', data_cfg.path, str(e))
  if not len(shards):
    _fail('path', data_cfg.path,
          f'the {len(paths)} files matching {pattern!r} hold no records')
  fmt = data_cfg.record_format
  return ArrayRecordSource(
      f'array_record:{pattern}', shards,
      _Parse(fmt, data_cfg.image_key, data_cfg.label_key),
      num_classes=0 if fmt == 'image_bytes' else None)


def write_array_record(path: str, images: np.ndarray, labels=None, *,
                       record_format: str = 'example',
                       image_format: str = 'PNG', image_key: str = 'image',
                       label_key: str = 'label') -> None:
  """Writes uint8 images [N, H, W(, C)] (and int labels [N], 'example' only)
  to one ArrayRecord file that the 'array_record' source reads."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise ValueError(f'write_array_record: images are {images.dtype} '
                     f'{images.shape}; expected uint8 [N, H, W(, C)]')
  if record_format not in RECORD_FORMATS:
    raise ValueError(f'write_array_record: record_format={record_format!r}; '
                     f'allowed {RECORD_FORMATS}')
  if labels is not None and (record_format != 'example' or
                             np.shape(labels) != (len(images),)):
    raise ValueError(f'write_array_record: labels need shape ({len(images)},) '
                     f"and record_format='example'; got {np.shape(labels)}, "
                     f'{record_format!r}')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # group_size:1 makes every record individually addressable (random access).
  writer = array_record_module.ArrayRecordWriter(str(path), 'group_size:1')
  try:
    for i, img in enumerate(images):
      if img.ndim == 3 and img.shape[-1] == 1:
        img = img[:, :, 0]  # PIL's 'L' mode wants [H, W]
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format=image_format)
      data = buf.getvalue()
      if record_format == 'example':
        ex = _example_proto().Example()
        ex.features.feature[image_key].bytes_list.value.append(data)
        if labels is not None:
          ex.features.feature[label_key].int64_list.value.append(int(labels[i]))
        data = ex.SerializeToString()
      writer.write(data)
  finally:
    writer.close()


def open_tfds(data_cfg, split: str) -> Source:
  """A TFDS data set already prepared in array_record format (read without
  TensorFlow); records are dicts with data.image_key / data.label_key."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, data_dir = data_cfg.tfds_name, data_cfg.tfds_data_dir
  try:
    reader = tfds.data_source(name, split=split, data_dir=data_dir or None,
                              download=False)
  except Exception as e:  # not found / not prepared / wrong format / split
    first = (str(e).strip().splitlines() or [''])[0]  # skip TFDS's name list
    raise ValueError(
        f'config.data.tfds_name={name!r} split {split!r} (config.data.'
        f'tfds_data_dir={data_dir!r}) cannot be opened: {type(e).__name__}: '
        f'{first}. It must already be prepared in array_record format '
        '(nothing is downloaded here). Without TensorFlow, make one from an '
        'image folder: `python -m mae_jax.data.tfds_prepare --folder=DIR '
        '--name=NAME --data_dir=DATA_DIR` (README: "Preparing a TFDS dataset '
        'without TensorFlow")') from e
  features = reader.dataset_info.features
  if data_cfg.image_key not in features:
    _fail('image_key', data_cfg.image_key,
          f'{name} has features {sorted(features.keys())}')
  num_classes = 0
  if data_cfg.label_key in features:
    num_classes = getattr(features[data_cfg.label_key], 'num_classes', 0) or 0
  return ReaderSource(f'tfds:{name}:{split}', reader,
                      _Parse('dict', data_cfg.image_key, data_cfg.label_key),
                      num_classes)
