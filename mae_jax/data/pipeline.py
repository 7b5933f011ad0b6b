"""Input pipelines: a checkpointable grain iterator for pretraining, and a
deterministic, padded batch generator for evaluation.

Train: range -> read + decode -> shuffle -> repeat (reshuffled per epoch) ->
random crop / flip -> this process's share -> threads -> drop skipped bad
records -> batch -> normalize -> optional worker processes. Every random choice
is a function of (seed, position), so the iterator state is one position and a
restored iterator continues exactly.
"""

from __future__ import annotations

import math
from typing import Iterator

from absl import flags
import grain
import numpy as np

from mae_jax.data import transforms
from mae_jax.data.sources import Source, open_source
from mae_jax.data.transforms import BadRecordError

# Key of the marker element that a bad record becomes in skip mode. Not None:
# grain's to_iter_dataset silently drops Nones, and we need to count them.
_BAD = 'bad_record'


def _hw(image_size) -> tuple[int, int]:
  if isinstance(image_size, int):
    return image_size, image_size
  return tuple(int(s) for s in image_size)


def _check_norm(data_cfg, channels: int) -> None:
  if len(data_cfg.mean) not in (1, channels):
    raise ValueError(
        f'config.data.mean={tuple(data_cfg.mean)!r}: needs 1 or {channels} '
        f'entries for model.channels={channels} (and as many in data.std)')


def _derive_seed(seed: int, stream: int) -> int:
  """Independent 32-bit seed per random stage (grain wants [0, 2**32))."""
  ss = np.random.SeedSequence([int(seed) % 2**63, stream])
  return int(ss.generate_state(1)[0])


class _Load:
  """index -> {'image': uint8 [H, W, C], 'label'}, or a marker in skip mode.

  Reads the source here rather than in a grain source node, so a record that
  cannot even be read (truncated file, corrupt proto) is named by index and
  handled like an undecodable image.
  """

  def __init__(self, source: Source, channels: int, skip: bool):
    self.source = source
    self.channels = channels
    self.skip = skip

  def __call__(self, index: int) -> dict:
    index = int(index)
    try:
      where = self.source.where(index)
      try:
        raw = self.source[index]
      except BadRecordError:
        raise
      except Exception as e:  # I/O and parse errors of any kind
        raise BadRecordError(
            f'{where}: cannot be read ({type(e).__name__}: {e})') from e
      image = transforms.decode(raw['image'], channels=self.channels,
                                where=where)
    except BadRecordError as e:
      if not self.skip:
        raise
      return {_BAD: str(e)}
    return {'image': image, 'label': raw['label'], 'index': index}


class _Augment:
  """Random resized crop + optional horizontal flip; markers pass through."""

  def __init__(self, size, scale, ratio, hflip: bool):
    self.size = size
    self.scale = tuple(scale)
    self.ratio = tuple(ratio)
    self.hflip = hflip

  def __call__(self, el: dict, rng: np.random.Generator) -> dict:
    if _BAD in el:
      return el
    img = transforms.random_resized_crop(el['image'], rng, self.size,
                                         self.scale, self.ratio)
    if self.hflip and rng.random() < 0.5:
      img = img[:, ::-1]
    # uint8 until batched: 4x less memory in the prefetch buffers.
    return {'image': np.ascontiguousarray(img),
            'label': np.int32(el['label']), 'index': np.int64(el['index'])}


class _Normalize:
  """Batch: uint8 image [b, H, W, C] -> float32 normalized."""

  def __init__(self, mean, std):
    self.mean = tuple(mean)
    self.std = tuple(std)

  def __call__(self, batch: dict) -> dict:
    batch['image'] = transforms.normalize(batch['image'], self.mean, self.std)
    return batch


class _ProcessShard(grain.MapDataset):
  """This process's share of a global stream of batches of `global_batch`.

  Element j of process p is global element (j // b) * B + p * b + j % b
  (b = B / P): every global batch is split into P contiguous, disjoint
  pieces, so the processes' batch k, concatenated in process order, is exactly
  the batch k a single process would read.
  """

  def __init__(self, parent: grain.MapDataset, index: int, count: int,
               global_batch: int):
    super().__init__(parent)
    self._p, self._count = index, count
    self._b, self._global = global_batch // count, global_batch

  def __len__(self) -> int:
    return len(self._parent) // self._count

  def __getitem__(self, j):
    if isinstance(j, slice):
      return self.slice(j)
    j = int(j)
    return self._parent[(j // self._b) * self._global + self._p * self._b
                        + j % self._b]

  def __str__(self) -> str:
    return f'ProcessShard({self._p} of {self._count})'


class _DropBadRecords(grain.IterDataset):
  """Drops skip-mode markers; each kept element gets 'skipped' = the number
  of markers dropped just before it (so a batch's sum counts its skips)."""

  def __init__(self, parent: grain.IterDataset, limit: int):
    super().__init__(parent)
    self._limit = limit

  def __iter__(self) -> grain.DatasetIterator:
    return _DropBadRecordsIterator(self._parent.__iter__(), self._limit)

  def __str__(self) -> str:
    return f'DropBadRecords(limit={self._limit})'


class _DropBadRecordsIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, limit: int):
    super().__init__(parent)
    self._limit = limit

  def __next__(self) -> dict:
    skipped = 0
    while True:
      el = next(self._parent)
      if _BAD not in el:
        el['skipped'] = np.int32(skipped)
        return el
      skipped += 1
      if skipped > self._limit:
        raise BadRecordError(
            f'every record is bad: skipped {skipped} in a row, more than the '
            f'{self._limit} records of the source (config.data.'
            f'skip_bad_records=True); the last one: {el[_BAD]}')

  # The count lives only inside one __next__ call, so the parent's position
  # is the whole state and a restore is exact.
  def get_state(self) -> dict:
    return self._parent.get_state()

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state)


def build_train_iterator(data_cfg, *, image_size, channels: int,
                         global_batch: int, seed: int, process_index: int = 0,
                         process_count: int = 1) -> grain.DatasetIterator:
  """Endless pretraining batches for this process.

  Yields {'image': float32 [b, H, W, C] normalized, 'label': int32 [b],
  'index': int64 [b] (source record ids), 'skipped': int32 [b]} with
  b = global_batch // process_count. Process p takes rows [p*b, (p+1)*b) of
  every global batch of one global stream (_ProcessShard), so the processes'
  batch k together is exactly the single-process batch k. Supports get_state / set_state (JSON-able)
  and grain.checkpoint.CheckpointSave / CheckpointRestore; a state restores
  only into an iterator with the same source, batch, process count and
  worker_count (with workers it holds one position per worker).
  """
  if global_batch % process_count:
    raise ValueError(f'global batch {global_batch} is not divisible by the '
                     f'{process_count} processes (config.batch_size)')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in '
                     f'[0, {process_count})')
  d = data_cfg
  _check_norm(d, channels)
  size = _hw(image_size)
  b = global_batch // process_count
  source = open_source(d, d.split, image_size=size, channels=channels)
  ahead = max(1, d.prefetch_batches)

  ds = grain.MapDataset.range(len(source))
  ds = ds.map(_Load(source, channels, d.skip_bad_records))
  ds = ds.shuffle(seed=_derive_seed(seed, 0))
  ds = ds.repeat(None)  # each epoch is shuffled with a different seed
  ds = ds.random_map(_Augment(size, d.crop_scale, d.crop_ratio, d.hflip),
                     seed=_derive_seed(seed, 1))
  ds = _ProcessShard(ds, process_index, process_count, global_batch)
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=d.read_threads, prefetch_buffer_size=ahead * b))
  ds = _DropBadRecords(ds, limit=len(source))
  ds = ds.batch(b, drop_remainder=True)
  ds = ds.map(_Normalize(d.mean, d.std))
  if d.worker_count > 0:
    # grain reads absl flags when it starts workers; outside absl.app.run
    # (tests, notebooks) they are unparsed and reading them raises.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    # Each worker runs the stages above on every worker_count-th element
    # (grain slices before to_iter_dataset); batches are interleaved back.
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=d.worker_count, per_worker_buffer_size=ahead))
  return iter(ds)


class _LoadEval:
  """index -> {'image': float32 [h, w, C], 'label'} (or a marker): the
  deterministic evaluation view."""

  def __init__(self, load: _Load, size, mean, std):
    self.load = load
    self.size = size
    self.mean = tuple(mean)
    self.std = tuple(std)

  def __call__(self, index: int) -> dict:
    el = self.load(index)
    if _BAD in el:
      return el
    img = transforms.resize_center_crop(el['image'], self.size)
    return {'image': transforms.normalize(img, self.mean, self.std),
            'label': el['label']}


def _eval_range(n: int, batch_size: int, process_index: int,
                process_count: int) -> tuple[int, int, int]:
  """(start, stop, num_batches): a contiguous, equal-size (after padding)
  share of the first n examples for this process."""
  num_batches = math.ceil(n / (process_count * batch_size))
  share = num_batches * batch_size
  start = min(n, process_index * share)
  return start, min(n, start + share), num_batches


def eval_batches(data_cfg, split: str, *, image_size, channels: int,
                 batch_size: int, process_index: int = 0,
                 process_count: int = 1,
                 max_examples: int = 0) -> Iterator[dict]:
  """Yields {'image': float32 [batch_size, H, W, C], 'label': int32
  [batch_size], 'valid': bool [batch_size]} in source order, no augmentation.

  Uses the first `max_examples` examples (all if 0). Every process yields
  ceil(n / (process_count * batch_size)) batches; padding (and, in skip mode,
  bad records) have valid=False, label -1 and a zero image.
  """
  if batch_size < 1:
    raise ValueError(f'eval batch_size={batch_size}: must be >= 1')
  d = data_cfg
  _check_norm(d, channels)
  size = _hw(image_size)
  source = open_source(d, split, image_size=size, channels=channels)
  n = len(source) if max_examples <= 0 else min(max_examples, len(source))
  start, stop, num_batches = _eval_range(n, batch_size, process_index,
                                         process_count)
  load = _LoadEval(_Load(source, channels, d.skip_bad_records), size, d.mean,
                   d.std)
  ds = grain.MapDataset.range(start, stop).map(load)
  it = iter(ds.to_iter_dataset(grain.ReadOptions(
      num_threads=d.read_threads,
      prefetch_buffer_size=max(1, d.prefetch_batches) * batch_size)))
  try:
    for _ in range(num_batches):
      image = np.zeros((batch_size, *size, channels), np.float32)
      label = np.full((batch_size,), -1, np.int32)
      valid = np.zeros((batch_size,), bool)
      for j in range(batch_size):
        el = next(it, None)
        if el is None:
          break
        if _BAD not in el:
          image[j], label[j], valid[j] = el['image'], el['label'], True
      yield {'image': image, 'label': label, 'valid': valid}
  finally:
    it.close()  # stops the reader threads, also when abandoned early


def source_info(data_cfg, split: str, *, image_size,
                channels: int) -> tuple[int, int]:
  """(number of examples, number of classes; 0 = unlabeled) of a split."""
  source = open_source(data_cfg, split, image_size=_hw(image_size),
                       channels=channels)
  return len(source), source.num_classes
