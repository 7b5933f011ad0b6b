r"""Videos -> pre-decoded clips in ArrayRecord (data.record_format='clip').

  python -m mae_jax.data.video_prepare --manifest=DIR/{split}.csv \
      --splits=train,test --out=OUT/{split}.array_record --short_side=128
  python -m mae_jax.data.video_prepare --source=moving_digits \
      --splits=train,test --out=OUT/{split}.array_record
  # then: --config.data.source=array_record --config.data.record_format=clip
  #       --config.data.path='OUT/{split}.array_record*'

Each record is one video: its decoded frames uint8 [F, H, W, C] (resized so
that the shorter side is --short_side, 0 = as decoded; every --frame_step-th
frame) and its label, as video.clip_record writes them (np.savez bytes, no
pickle), in manifest order. Training then reads frames instead of decoding
video files: faster per clip, at the cost of disk (a 10 s, 30 fps video at
short side 128 and 4:3 is ~20 MB; --frame_step=2 halves it, and then
data.frame_stride counts stored frames, half as many as in the video).

--manifest is as for data.source='video_files' (CSV `path[,label]`, '{split}'
replaced, paths relative to --video_root or the manifest's folder);
--source=moving_digits writes the in-memory synthetic videos (--videos, the
labels of --label_key for --frames / --frame_stride, as moving_digits.py).
A video that cannot be decoded stops the command naming its file, or with
--skip_bad is left out and listed. Several shards (--shards) are written as
<out>-NNNNN-of-MMMMM; files appear only when complete.
"""

from __future__ import annotations

from concurrent import futures
import os
import sys

from absl import app
from absl import flags
from array_record.python import array_record_module
import numpy as np
from PIL import Image

from mae_jax.data import manifests, moving_digits, video
from mae_jax.data.transforms import BadRecordError


def _resize_short(frames: np.ndarray, short_side: int) -> np.ndarray:
  """uint8 [F, H, W, C] -> shorter side `short_side` (bicubic, per frame)."""
  h, w = frames.shape[1:3]
  if not short_side or min(h, w) == short_side:
    return frames
  s = short_side / min(h, w)
  size = (max(1, round(w * s)), max(1, round(h * s)))  # PIL: (w, h)
  c = frames.shape[-1]
  out = []
  for f in frames:
    planes = [f] if c == 3 else [f[..., k] for k in range(c)]
    r = [np.asarray(Image.fromarray(p).resize(size, Image.BICUBIC))
         for p in planes]
    out.append(r[0] if c == 3 else np.stack(r, axis=-1))
  return np.stack(out)


class _Frames:
  """index -> (uint8 frames [F', H', W', C], label) of a source's video."""

  def __init__(self, source, channels: int, short_side: int, frame_step: int):
    self.source, self.channels = source, channels
    self.short_side, self.step = short_side, frame_step

  def __call__(self, index: int) -> tuple[np.ndarray, int]:
    where = self.source.where(index)
    try:
      raw = self.source[index]
    except OSError as e:
      raise BadRecordError(f'{where}: cannot be read ({e})') from e
    v = video.decode(raw['image'], channels=self.channels, where=where)
    frames = video.take(v, range(0, len(v), self.step))
    return _resize_short(frames, self.short_side), raw['label']


def prepare(source, out: str, *, channels: int = 3, short_side: int = 0,
            frame_step: int = 1, shards: int = 1, workers: int = 4,
            skip_bad: bool = False, compression: str = 'uncompressed'
            ) -> tuple[int, list[str]]:
  """Writes `source`'s videos to `out` (one file, or `shards` files
  <out>-NNNNN-of-MMMMM); -> (records written, messages of skipped videos).
  compression: ArrayRecord's ('uncompressed', 'zstd:3', 'brotli:6',
  'snappy'); uncompressed reads fastest, and video frames gain little."""
  if shards < 1 or frame_step < 1 or short_side < 0:
    raise ValueError(f'--shards={shards}, --frame_step={frame_step}, '
                     f'--short_side={short_side}: need >= 1, >= 1, >= 0')
  if shards > len(source):
    raise ValueError(f'--shards={shards}: more than the {len(source)} videos')
  paths = ([out] if shards == 1 else
           [f'{out}-{k:05d}-of-{shards:05d}' for k in range(shards)])
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  load = _Frames(source, channels, short_side, frame_step)
  n, written, skipped = len(source), 0, []
  bounds = np.linspace(0, n, shards + 1).astype(int)  # videos per shard
  tmps = [p + '.incomplete' for p in paths]
  try:
    with futures.ThreadPoolExecutor(workers) as pool:
      for k, tmp in enumerate(tmps):
        # group_size:1 = random access to every record.
        writer = array_record_module.ArrayRecordWriter(
            tmp, f'group_size:1,{compression}')
        try:
          for start in range(bounds[k], bounds[k + 1], 64):  # bounded memory
            chunk = range(start, min(start + 64, bounds[k + 1]))
            results = [pool.submit(load, i) for i in chunk]
            for r in results:
              try:
                frames, label = r.result()
              except BadRecordError as e:
                if not skip_bad:
                  raise
                skipped.append(str(e))
                continue
              writer.write(video.clip_record(frames, label))
              written += 1
        finally:
          writer.close()
    for tmp, path in zip(tmps, paths):
      os.replace(tmp, path)
  finally:
    for tmp in tmps:
      if os.path.exists(tmp):
        os.remove(tmp)
  return written, skipped


def _define_flags() -> None:
  """Flags of the command only: importing this module (tests, tfds_prepare's
  neighbours) must not define flags such as --channels twice."""
  f = flags
  f.DEFINE_string('manifest', None, "manifest CSV of videos ('{split}' is "
                  'replaced)')
  f.DEFINE_string('source', None, "'moving_digits' instead of --manifest")
  f.DEFINE_list('splits', ['train'], 'splits to write')
  f.DEFINE_string('out', None, "output file ('{split}' is replaced)")
  f.DEFINE_string('video_root', '', 'manifest paths are relative to it '
                  "('' = the manifest's folder)")
  f.DEFINE_integer('short_side', 0, 'resize frames to this shorter side '
                   '(0 = keep)')
  f.DEFINE_integer('frame_step', 1, 'keep every k-th frame')
  f.DEFINE_integer('channels', 3, '3: RGB, 1: gray')
  f.DEFINE_integer('shards', 1, 'output files per split')
  f.DEFINE_integer('workers', 4, 'decoding threads')
  f.DEFINE_string('compression', 'uncompressed', "ArrayRecord's: "
                  'uncompressed, zstd:3, brotli:6, snappy')
  f.DEFINE_bool('skip_bad', False, 'leave out (and list) videos that cannot '
                'be decoded')
  f.DEFINE_integer('videos', None, 'moving_digits: videos per split '
                   '(default: as the source)')
  f.DEFINE_integer('frames', 8, 'moving_digits: model.frames of the '
                   'direction labels')
  f.DEFINE_integer('frame_stride', 4, 'moving_digits: data.frame_stride of '
                   'the labels')
  f.DEFINE_string('label_key', 'label', 'moving_digits: label | direction')
  f.mark_flags_as_required(['out'])


def _open(split: str):
  from mae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  d = config_lib.base_config().data
  if f.source == 'moving_digits':
    d.update(source='moving_digits', label_key=f.label_key,
             frame_stride=f.frame_stride)
    moving_digits.check_config(d)
    if f.videos is not None and f.videos < 1:
      raise ValueError(f'--videos={f.videos}: must be >= 1')
    return moving_digits.MovingDigits(split, d.moving_digits, f.frames,
                                      f.frame_stride, f.label_key,
                                      videos=f.videos)
  d.update(source='video_files', path=f.manifest, video_root=f.video_root)
  return manifests.open_manifest('video_files', d, split)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  if bool(f.manifest) == bool(f.source) or f.source not in (
      None, 'moving_digits'):
    sys.exit('video_prepare: give --manifest=CSV or --source=moving_digits')
  if len(f.splits) > 1 and '{split}' not in f.out:
    sys.exit(f"video_prepare: --out={f.out!r} needs '{{split}}' to write "
             f'several splits {f.splits}')
  for split in f.splits:
    out = f.out.replace('{split}', split)
    try:
      source = _open(split)
      n, skipped = prepare(source, out, channels=f.channels,
                           short_side=f.short_side, frame_step=f.frame_step,
                           shards=f.shards, workers=f.workers,
                           skip_bad=f.skip_bad, compression=f.compression)
    except (ValueError, BadRecordError) as e:
      sys.exit(f'video_prepare: {e}'.replace('config.data.path=',
                                             '--manifest='))
    for why in skipped:
      print(f'skipped: {why}')
    print(f'{split}: {n} videos of {source.name} in {out}'
          f'{"-*" if f.shards > 1 else ""}'
          f'{f" ({len(skipped)} skipped)" if skipped else ""}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
