"""Input pipelines: a checkpointable pretraining iterator, and a
deterministic, padded batch generator for evaluation.

Train: one grain MapDataset up to the finished batch,
  range -> read + decode (skip mode: a bad record is replaced by the next
  good one) -> shuffle -> repeat (reshuffled per epoch) -> augment
  -> this process's share -> batch -> normalize,
so batch k is a pure function of (seed, k): every random choice depends on
(seed, position) only. One skeleton for every modality: decode, augment and
the evaluation view come from the modality's ops, picked by the input shape
(`_ops`): transforms.ImageOps for images [H, W, C] (random resized crop +
flip), video.ClipOps for clips [T, H, W, C] (model.frames = T > 0: T frames
every data.frame_stride from a random start, one crop + flip for all frames).
For clips an element is one video giving data.clips_per_video = R clips
(repeated sampling, MAE-ST): a batch of b clips reads b / R videos.

TrainIterator returns batches k, k + 1, ... of the stream, built by
`data.read_threads` threads (one whole batch each) in the main process or in
each of `data.worker_count` worker processes (worker w builds batches w,
w + W, ...; grain interleaves them back in order). So the batches do not
depend on worker_count or read_threads, and the iterator state is k plus
what identifies the stream: a run may resume with other values of both.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import weakref
from typing import Iterator

from absl import flags
import grain
import numpy as np

from mae_jax.data import transforms, video, workers
from mae_jax.data.sources import Source, gives_clips, open_source
from mae_jax.data.transforms import BadRecordError

# Key of the marker element that a bad record becomes in evaluation's skip
# mode. Not None: grain's to_iter_dataset silently drops Nones.
_BAD = 'bad_record'
_EVAL_AHEAD_BYTES = 256 << 20

def _hw(image_size) -> tuple[int, int]:
  if isinstance(image_size, int):
    return image_size, image_size
  return tuple(int(s) for s in image_size)


def check_norm(data_cfg, channels: int) -> None:
  if len(data_cfg.mean) not in (1, channels):
    raise ValueError(
        f'config.data.mean={tuple(data_cfg.mean)!r}: needs 1 or {channels} '
        f'entries for model.channels={channels} (and as many in data.std)')


def check_clips(data_cfg, frames: int,
                per_process_batch: int | None = None) -> None:
  """Clip settings against the model input (frames = model.frames, 0 =
  images) and this process's training batch (None: not checked); ValueError
  naming the key. Images ignore frame_stride and clips_per_video."""
  d = data_cfg
  if frames == 0:
    if gives_clips(d):
      what = ("record_format='clip'" if d.source == 'array_record' else
              f'source={d.source!r}')
      raise ValueError(
          f'config.data.{what} gives video clips, but config.model.frames=0 '
          '(images): set config.model.frames to the clip length T > 0')
    return
  if d.frame_stride < 1:
    raise ValueError(f'config.data.frame_stride={d.frame_stride!r}: must be '
                     '>= 1 (1 = consecutive frames)')
  r = d.clips_per_video
  if r < 1:
    raise ValueError(f'config.data.clips_per_video={r!r}: must be >= 1')
  if per_process_batch is not None and per_process_batch % r:
    raise ValueError(
        f'config.data.clips_per_video={r}: must divide the per-process batch '
        f'{per_process_batch} (config.batch_size / processes), since a batch '
        f'holds the R clips of each of batch / R videos')


def _ops(data_cfg, size, channels: int, frames: int, source: Source):
  """The modality's decode / augment / eval view, by the source and the
  input shape."""
  d = data_cfg
  if source.audio:
    from mae_jax.data import audio  # pylint: disable=g-import-not-at-top
    return audio.AudioOps(size, d.sample_rate, roll_mag=d.random_gain)
  if not frames:
    return transforms.ImageOps(size, channels, d.crop_scale, d.crop_ratio,
                               d.hflip, d.eval_crop)
  return video.ClipOps(size, channels, frames, d.frame_stride,
                       d.clips_per_video, d.crop_scale, d.crop_ratio, d.hflip,
                       video=getattr(source, 'video', False))


def _derive_seed(seed: int, stream: int) -> int:
  """Independent 32-bit seed per random stage (grain wants [0, 2**32))."""
  ss = np.random.SeedSequence([int(seed) % 2**63, stream])
  return int(ss.generate_state(1)[0])


class _Load:
  """index -> {'image': decoded (uint8 [H, W, C], or a video of F frames for
  clips), 'label', 'index'}.

  Reads the source here rather than in a grain source node, so a record that
  cannot even be read (truncated file, corrupt proto) raises BadRecordError
  naming the source, index and file, like an undecodable image.
  """

  def __init__(self, source: Source, ops):
    self.source = source
    self.ops = ops

  def __call__(self, index: int) -> dict:
    index = int(index)
    where = self.source.where(index)
    try:
      raw = self.source[index]
    except BadRecordError:
      raise
    except Exception as e:  # I/O and parse errors of any kind
      raise BadRecordError(
          f'{where}: cannot be read ({type(e).__name__}: {e})') from e
    image = self.ops.decode(raw['image'], where)
    return {'image': image, 'label': raw['label'], 'index': index}


class _LoadGood:
  """Train reads: index -> _Load's record plus 'skipped' (int32).

  Strict mode raises on a bad record. Skip mode replaces it by the next good
  record of the source (index + 1, + 2, ... modulo its size) and 'skipped'
  counts the bad ones passed over: a fixed-size MapDataset batch cannot drop
  an element, and a replacement that depends on the source alone keeps batch
  k a function of (seed, k).
  """

  def __init__(self, load: _Load, skip: bool):
    self.load = load
    self.skip = skip
    # index -> error, per process: a run of bad records (a corrupt shard) is
    # read once, not once per element that lands in it.
    self._bad: dict[int, str] = {}

  def __call__(self, index: int) -> dict:
    index = int(index)
    if not self.skip:
      return {**self.load(index), 'skipped': np.int32(0)}
    n = len(self.load.source)
    for skipped in range(n):
      i = (index + skipped) % n
      if i in self._bad:
        continue
      try:
        el = self.load(i)
      except BadRecordError as e:
        self._bad[i] = str(e)
        continue
      el['skipped'] = np.int32(skipped)
      return el
    raise BadRecordError(
        f'every record is bad: all {n} records of {self.load.source.name} '
        'fail to load (config.data.skip_bad_records=True replaces a bad '
        f'record by the next good one; there is none). Record {index}: '
        f'{self._bad.get(index)}')


class _Augment:
  """The modality's training augmentation (ops.augment): images -> uint8
  [h, w, C]; clips -> the R clips of one video, uint8 [R, T, h, w, C]."""

  def __init__(self, ops):
    self.ops = ops

  def __call__(self, el: dict, rng: np.random.Generator) -> dict:
    # uint8 until batched: 4x less memory while the batch is assembled.
    return {'image': self.ops.augment(el['image'], rng),
            'label': _label(el['label']), 'index': np.int64(el['index']),
            'skipped': el['skipped']}


def _label(label) -> np.ndarray:
  """A class id -> int32; a multi-hot vector [K] stays float32."""
  if np.ndim(label):
    return np.asarray(label, np.float32)
  return np.int32(label)


class _Normalize:
  """Batch: uint8 image [b, H, W, C] -> float32 normalized. Clips: the
  batch's videos [n, R, T, h, w, C] -> clips [n * R, T, h, w, C] first, each
  video's label, index and skipped repeated for its R clips."""

  def __init__(self, mean, std, clips: bool = False):
    self.mean = tuple(mean)
    self.std = tuple(std)
    self.clips = clips

  def __call__(self, batch: dict) -> dict:
    if self.clips:
      n, r = batch['image'].shape[:2]
      batch['image'] = batch['image'].reshape(n * r, *batch['image'].shape[2:])
      for key in ('label', 'index', 'skipped'):
        batch[key] = np.repeat(batch[key], r, axis=0)
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


def _close(it, pulled: workers.Supervised | None, folder: str | None) -> None:
  """Finalizer of a started TrainIterator (a function: it must not hold the
  iterator itself)."""
  try:
    if pulled is not None:
      pulled.close()
    elif it is not None:
      it.close()
  finally:
    if folder:
      shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------ train


class TrainIterator:
  """Endless host batches of this process; see build_train_iterator.

  State (get_state / set_state, JSON): {'batches': k, the batches returned
  so far, and the stream it counts in: 'global_batch', 'process_index',
  'process_count', 'source', 'source_size', 'seed', and for clips
  'clips_per_video'}. Nothing in it depends on data.worker_count or
  data.read_threads. set_state takes the dict or its JSON bytes (what
  grain.checkpoint.CheckpointHandler passes) and continues at batch k.
  """

  def __init__(self, batches: grain.MapDataset, stream: dict, *,
               worker_count: int, read_threads: int, prefetch: int):
    self._batches = batches
    self._stream = dict(stream)
    self._workers, self._threads, self._ahead = (worker_count, read_threads,
                                                 prefetch)
    self._k = 0
    self._it = None       # grain iterator over batches k, k + 1, ...
    self._pulled = None   # the same, supervised, with worker processes
    self._finalizer = None
    self._error = None    # raised again: the stream cannot skip a batch
    self._closed = False

  def _start(self) -> None:
    if self._closed:
      raise ValueError('TrainIterator is closed')
    if self._finalizer is not None:
      return
    ds = self._batches[self._k:].to_iter_dataset(grain.ReadOptions(
        num_threads=self._threads,
        # One thread builds one whole batch: a shorter buffer idles threads.
        prefetch_buffer_size=max(self._ahead, self._threads)))
    folder = None
    if self._workers:
      # grain reads absl flags when it starts workers; outside absl.app.run
      # (tests, notebooks) they are unparsed and reading them raises.
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      folder = tempfile.mkdtemp(prefix='mae_jax-data-workers-')
      ds = ds.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=self._workers,
                                       per_worker_buffer_size=self._ahead),
          worker_init_fn=workers.WorkerInit(folder))
      self._pulled = workers.Supervised(
          iter(ds), workers.WorkerWatch(folder, self._workers), self._advice())
    else:
      self._it = iter(ds)
    self._finalizer = weakref.finalize(self, _close, self._it, self._pulled,
                                       folder)

  def _advice(self) -> str:
    return (
        'Each worker holds its own read threads and prefetched batches: lower '
        f'config.data.worker_count (now {self._workers}), '
        f'config.data.read_threads (now {self._threads}) or '
        'config.data.prefetch_batches, or give the job more memory. With '
        'worker_count=0 the main process reads, and a crash shows where')

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict:
    if self._error is not None:
      raise self._error
    self._start()
    try:
      batch = self._pulled.next() if self._pulled else next(self._it)
    except Exception as e:
      self._error = e
      raise
    self._k += 1
    return batch

  def start_prefetch(self) -> None:
    """Starts reading (threads, worker processes) before the first next()."""
    self._start()
    if self._it is not None:
      self._it.start_prefetch()

  def get_state(self) -> dict:
    return {'batches': self._k, **self._stream}

  def set_state(self, state: dict | bytes | str) -> None:
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    if not isinstance(state, dict) or 'batches' not in state:
      keys = sorted(state)[:6] if isinstance(state, dict) else type(state)
      raise ValueError(
          f"the checkpoint's data iterator state (keys {keys}) comes from an "
          "older mae_jax, which saved grain's own iterator state; this "
          'version cannot continue it exactly. Finish that run with the '
          'mae_jax version that wrote it, or start a new --workdir')
    mine = self._stream
    checks = (
        ('global_batch', lambda v: f'config.batch_size={v}',
         'resume with the batch size it was trained with'),
        ('process_count', lambda v: f'jax.process_count()={v}',
         'resume on as many processes'),
        ('source_size', lambda v: f'a training source of {v} records',
         f'the data (config.data, source {mine["source"]!r}) changed since; '
         'resume on the same data'),
        ('clips_per_video', lambda v: f'config.data.clips_per_video={v}',
         'resume with the clips per video it was trained with'))
    for key, what, fix in checks:
      # Images have no clips_per_video: 1 video = 1 example.
      if state.get(key, 1) != mine.get(key, 1):
        raise ValueError(
            f"the checkpoint's data iterator was made for "
            f'{what(state.get(key, 1))}, this run has {what(mine.get(key, 1))}'
            f': {fix}, or start a new --workdir')
    k = state['batches']
    if not isinstance(k, int) or k < 0:
      raise ValueError(f"the checkpoint's data iterator state has batches="
                       f'{k!r}; expected an int >= 0')
    self._stop()
    self._k, self._error = k, None

  def _stop(self) -> None:
    if self._finalizer is not None:
      self._finalizer()
    self._finalizer = self._it = self._pulled = None

  def close(self) -> None:
    """Stops the read threads and worker processes."""
    self._stop()
    self._closed = True


def build_train_iterator(data_cfg, *, image_size, channels: int,
                         global_batch: int, seed: int, process_index: int = 0,
                         process_count: int = 1, source: Source | None = None,
                         frames: int = 0) -> TrainIterator:
  """Endless pretraining batches for this process.

  Yields {'image': float32 [b, H, W, C] normalized (clips, frames = T > 0:
  [b, T, H, W, C]), 'label': int32 [b], 'index': int64 [b] (source record
  ids), 'skipped': int32 [b] (bad records replaced by the next good one, in
  skip mode)} with b = global_batch // process_count. Clips: b / R videos
  (R = data.clips_per_video) give R consecutive rows each, which share
  label, index and skipped. Process p takes rows [p*b, (p+1)*b) of
  every global batch of one global stream (_ProcessShard), so the processes'
  batch k together is exactly the single-process batch k. The batches and
  the state (see TrainIterator) are the same for any data.worker_count and
  data.read_threads. Reading starts at the first next() or start_prefetch().
  source: data_cfg's split, when the caller has opened it already.
  """
  if global_batch % process_count:
    raise ValueError(f'global batch {global_batch} is not divisible by the '
                     f'{process_count} processes (config.batch_size)')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in '
                     f'[0, {process_count})')
  d = data_cfg
  check_norm(d, channels)
  size = _hw(image_size)
  b = global_batch // process_count
  check_clips(d, frames, b)
  if source is None:
    source = open_source(d, d.split, image_size=size, channels=channels,
                         frames=frames)
  ops = _ops(d, size, channels, frames, source)
  # Elements (images, or videos of R clips) per global / per-process batch.
  r = d.clips_per_video if ops.clips else 1

  ds = grain.MapDataset.range(len(source))
  ds = ds.map(_LoadGood(_Load(source, ops), d.skip_bad_records))
  ds = ds.shuffle(seed=_derive_seed(seed, 0))
  ds = ds.repeat(None)  # each epoch is shuffled with a different seed
  ds = ds.random_map(_Augment(ops), seed=_derive_seed(seed, 1))
  ds = _ProcessShard(ds, process_index, process_count, global_batch // r)
  ds = ds.batch(b // r, drop_remainder=True)
  ds = ds.map(_Normalize(d.mean, d.std, clips=ops.clips))
  stream = {'global_batch': global_batch, 'process_index': process_index,
            'process_count': process_count, 'source': source.name,
            'source_size': len(source), 'seed': seed}
  if ops.clips:
    stream['clips_per_video'] = r
  return TrainIterator(ds, stream, worker_count=d.worker_count,
                       read_threads=d.read_threads,
                       prefetch=max(1, d.prefetch_batches))


# --------------------------------------------------------------- evaluation


class _LoadEval:
  """index -> {'image': float32 [h, w, C] (clips: [T, h, w, C]), 'label'}:
  the deterministic evaluation view (ops.eval_view); a bad record becomes a
  marker in skip mode."""

  def __init__(self, load: _Load, skip: bool, mean, std):
    self.load = load
    self.skip = skip
    self.mean = tuple(mean)
    self.std = tuple(std)

  def __call__(self, index: int) -> dict:
    try:
      el = self.load(index)
    except BadRecordError as e:
      if not self.skip:
        raise
      return {_BAD: str(e)}
    img = self.load.ops.eval_view(el['image'])
    return {'image': transforms.normalize(img, self.mean, self.std),
            'label': _label(el['label'])}


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
                 process_count: int = 1, max_examples: int = 0,
                 frames: int = 0) -> Iterator[dict]:
  """Yields {'image': float32 [batch_size, H, W, C] (clips, frames = T > 0:
  [batch_size, T, H, W, C]), 'label': int32 [batch_size] (multi-label:
  float32 [batch_size, K] multi-hot), 'valid': bool [batch_size]} in source
  order, no augmentation. A clip is the centre window of its video (one per
  video, whatever data.clips_per_video).

  Uses the first `max_examples` examples (all if 0). Every process yields
  ceil(n / (process_count * batch_size)) batches; padding (and, in skip mode,
  bad records) have valid=False, label -1 (multi-label: no class) and a zero
  image.
  """
  if batch_size < 1:
    raise ValueError(f'eval batch_size={batch_size}: must be >= 1')
  d = data_cfg
  check_norm(d, channels)
  check_clips(d, frames)
  size = _hw(image_size)
  source = open_source(d, split, image_size=size, channels=channels,
                       frames=frames)
  ops = _ops(d, size, channels, frames, source)
  n = len(source) if max_examples <= 0 else min(max_examples, len(source))
  start, stop, num_batches = _eval_range(n, batch_size, process_index,
                                         process_count)
  load = _LoadEval(_Load(source, ops), d.skip_bad_records, d.mean, d.std)
  ds = grain.MapDataset.range(start, stop).map(load)
  # Examples read ahead: data.prefetch_batches batches, but at most ~256 MiB
  # of them (a batch of 16-frame clips at 224 px is GBs of float32).
  ahead = min(max(1, d.prefetch_batches) * batch_size,
              _EVAL_AHEAD_BYTES // (4 * math.prod(ops.shape)))
  it = iter(ds.to_iter_dataset(grain.ReadOptions(
      num_threads=d.read_threads,
      prefetch_buffer_size=max(ahead, d.read_threads))))
  try:
    for _ in range(num_batches):
      image = np.zeros((batch_size, *ops.shape), np.float32)
      label = (np.zeros((batch_size, *source.label_shape), np.float32)
               if source.label_shape else np.full((batch_size,), -1, np.int32))
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


def source_info(data_cfg, split: str, *, image_size, channels: int,
                frames: int = 0) -> tuple[int, int]:
  """(number of examples, number of classes; 0 = unlabeled) of a split;
  for clips the examples are videos."""
  source = open_source(data_cfg, split, image_size=_hw(image_size),
                       channels=channels, frames=frames)
  return len(source), source.num_classes
