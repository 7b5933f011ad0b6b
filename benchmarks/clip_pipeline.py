"""Clips/s of mae_jax's clip input pipeline: video files vs pre-decoded
ArrayRecord clips (16 frames x 112 x 112, frame stride 4, batch 16).

  python benchmarks/clip_pipeline.py DIR [videos=24] [batches=12] [threads=2]

Makes DIR/videos/*.mp4 (H.264 via PyAV's libx264, 320x240, 30 fps, 10 s =
300 frames of a panning smooth texture with a moving square: a Kinetics-like
clip at 240p) and DIR/clips.array_record (video_prepare.prepare at short side
128: 300 frames of 171x128 per record), then times build_train_iterator on
each, the first batch excluded."""

import os
import sys
import time

import numpy as np
from PIL import Image

from mae_jax import config
from mae_jax.data import build_train_iterator, manifests, video, video_prepare


def make(out, n):
  h, w, f = 240, 320, 300
  os.makedirs(f'{out}/videos', exist_ok=True)
  rows = []
  for i in range(n):
    rng = np.random.default_rng(i)
    tex = np.asarray(Image.fromarray(rng.integers(0, 256, (40, 60, 3), np.uint8)
                                     ).resize((w * 2, h * 2), Image.BICUBIC))
    frames = np.stack([tex[t // 3:t // 3 + h, t:t + w] for t in range(f)])
    for t in range(f):
      y, x = 20 + (t * 2) % 180, 30 + (t * 3) % 250
      frames[t, y:y + 40, x:x + 40] = (255, 40 * (i % 6), 0)
    video.write_video(f'{out}/videos/{i:03d}.mp4', frames, codec='libx264',
                      fps=30)
    rows.append(f'videos/{i:03d}.mp4,{i % 10}')
  with open(f'{out}/train.csv', 'w') as fh:
    fh.write('path,label\n' + '\n'.join(rows) + '\n')
  d = config.base_config().data
  d.update(source='video_files', path=f'{out}/train.csv')
  t = time.perf_counter()
  video_prepare.prepare(manifests.open_video_files(d, 'train'),
                        f'{out}/clips.array_record', short_side=128, workers=2)
  print(f'video_prepare: {time.perf_counter() - t:.1f} s for {n} videos')


def bench(name, batches, batch=16, **kw):
  d = config.base_config().data
  d.update(frame_stride=4, worker_count=0, prefetch_batches=2)
  d.update(kw)
  it = build_train_iterator(d, image_size=112, channels=3, global_batch=batch,
                            seed=0, frames=16)
  try:
    b = next(it)
    assert b['image'].shape == (batch, 16, 112, 112, 3)
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
      next(it)
    s, cpu = time.perf_counter() - t, time.process_time() - cpu
  finally:
    it.close()
  # CPU ms per clip: this process's threads only (not worker processes).
  print(f'{name:56s} {batches * batch / s:6.1f} clips/s  '
        f'{1000 * cpu / (batches * batch):5.1f} CPU ms/clip', flush=True)


def main():
  out = sys.argv[1]
  args = dict(a.split('=') for a in sys.argv[2:])
  n, batches = int(args.get('videos', 24)), int(args.get('batches', 12))
  threads = int(args.get('threads', 2))
  if not os.path.exists(f'{out}/clips.array_record'):
    make(out, n)
  mib = os.path.getsize(f'{out}/clips.array_record') / 2**20
  vmib = sum(os.path.getsize(f'{out}/videos/{f}')
             for f in os.listdir(f'{out}/videos')) / 2**20
  print(f'{n} videos: {vmib:.1f} MiB as H.264, {mib:.0f} MiB pre-decoded')
  files_kw = dict(source='video_files', path=f'{out}/train.csv')
  rec_kw = dict(source='array_record', record_format='clip',
                path=f'{out}/clips.array_record')
  for r in (1, 2):
    bench(f'video files, R={r}, {threads} read threads', batches,
          clips_per_video=r, read_threads=threads, **files_kw)
    bench(f'pre-decoded ArrayRecord, R={r}, {threads} read threads', batches,
          clips_per_video=r, read_threads=threads, **rec_kw)
  bench(f'video files, R=1, {threads} worker processes x 1 thread', batches,
        worker_count=threads, read_threads=1, **files_kw)


if __name__ == '__main__':
  main()
