"""Tests of the clip input pipeline (model.frames > 0): video decoding,
frame sampling, crops, repeated sampling, resume, bad files, manifests,
pre-decoded ArrayRecord clips and the moving-digits source. Tiny videos."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mae_jax import config
from mae_jax import data
from mae_jax.data import BadRecordError
from mae_jax.data import manifests, moving_digits, pipeline, sources, video
from mae_jax.data import video_prepare
from conftest import ROOT, subprocess_env


def _cfg(**kw):
  d = config.base_config().data
  d.read_threads = 2
  d.mean, d.std = (0.5,), (0.5,)  # any channel count
  d.update(kw)
  return d


def _train(d, *, batch=4, seed=0, size=16, channels=1, frames=4, **kw):
  return data.build_train_iterator(d, image_size=size, channels=channels,
                                   global_batch=batch, seed=seed,
                                   frames=frames, **kw)


def _take(it, k):
  try:
    return [next(it) for _ in range(k)]
  finally:
    it.close()


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _pixels(batch, d):
  return data.denormalize(batch['image'], d.mean, d.std)


def _write_manifest(path, rows, header=True):
  with open(path, 'w', encoding='utf-8') as f:
    if header:
      f.write('path,label\n')
    for row in rows:
      f.write(','.join(str(x) for x in row) + '\n')


def _ramp_video(path, num_frames, size=(8, 12), codec='ffv1'):
  """A gray video whose frame i is the constant 8 * i."""
  frames = np.repeat((8 * np.arange(num_frames, dtype=np.uint8))[:, None],
                     size[0] * size[1], axis=1).reshape(num_frames, *size)
  video.write_video(str(path), frames, codec=codec)
  return frames


@pytest.fixture
def textured(monkeypatch):
  """Registers video source 'textured': video i = 6 identical frames of a
  random texture (seeded by i), label i."""

  class Textured(data.Source):
    video = True
    num_classes = 8

    def __init__(self, n=8):
      self.name, self._n = 'textured:train', n

    def __len__(self):
      return self._n

    def __getitem__(self, i):
      img = np.random.default_rng(i).integers(0, 256, (20, 24), np.uint8)
      return {'image': np.repeat(img[None], 6, axis=0), 'label': i}

  monkeypatch.setitem(data.SOURCES, 'textured', lambda *_, **__: Textured())
  monkeypatch.setattr(sources, 'VIDEO_SOURCES',
                      sources.VIDEO_SOURCES | {'textured'})


# ------------------------------------------------------------------ decoding


def test_written_moving_digits_decode_to_the_in_memory_videos(tmp_path):
  d = _cfg(source='moving_digits', frame_stride=2)
  d.moving_digits.update(videos=8, video_frames=10, size=24, digit_size=10)
  mem = data.open_source(d, 'train', image_size=24, channels=1, frames=4)
  # The command, as a user runs it (lossless ffv1 in .mkv by default).
  r = subprocess.run(
      [sys.executable, '-m', 'mae_jax.data.moving_digits', f'--out={tmp_path}',
       '--split=train', '--videos=3', '--video_frames=10', '--size=24',
       '--digit_size=10', '--frames=4', '--frame_stride=2'],
      env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  assert r.returncode == 0, r.stderr
  assert sorted(os.listdir(tmp_path / 'train')) == [
      '00000.mkv', '00001.mkv', '00002.mkv']
  lines = (tmp_path / 'train.csv').read_text().splitlines()
  assert lines[0] == 'path,label' and len(lines) == 4
  d.update(source='video_files', path=str(tmp_path / '{split}.csv'))
  src = data.open_source(d, 'train', image_size=24, channels=1, frames=4)
  assert len(src) == 3 and src.video
  for i in range(3):
    got = video.decode(src[i]['image'], channels=1, where='x')
    frames = video.take(got, range(len(got)))
    assert frames.shape == (10, 24, 24, 1)
    np.testing.assert_array_equal(frames[..., 0], mem[i]['image'])
    assert src[i]['label'] == mem[i]['label']
    rgb = video.decode(src[i]['image'], channels=3, where='x')
    np.testing.assert_array_equal(video.take(rgb, [0, 9])[..., 1],
                                  mem[i]['image'][[0, 9]])
  # A lossy codec every FFmpeg has: close, not equal.
  source = moving_digits.MovingDigits('test', d.moving_digits, 4, 2,
                                      videos=1)
  manifest = moving_digits.write_files(str(tmp_path), 'test', source,
                                       codec='mpeg4')
  assert manifest == str(tmp_path / 'test.csv')
  src = data.open_source(d, 'test', image_size=24, channels=1, frames=4)
  got = video.decode(src[0]['image'], channels=1, where='x')
  diff = np.abs(video.take(got, range(10))[..., 0].astype(int)
                - source[0]['image'])
  assert diff.mean() < 8, diff.mean()


def test_frame_stride_picks_every_kth_frame(tmp_path):
  _ramp_video(tmp_path / 'long.mkv', 30)
  _ramp_video(tmp_path / 'short.mp4', 5, codec='mpeg4')
  _write_manifest(tmp_path / 'train.csv', [('long.mkv', 0)])
  d = _cfg(source='video_files', path=str(tmp_path / 'train.csv'),
           frame_stride=3, crop_scale=(1, 1), crop_ratio=(1.5, 1.5),
           hflip=False)
  batches = _take(_train(d, batch=2, size=(8, 12)), 6)
  starts = set()
  for b in batches:
    values = _pixels(b, d)[:, :, 4, 6, 0].astype(int)  # [b, T]
    for clip in values:
      i0 = clip[0] // 8
      starts.add(i0)
      np.testing.assert_array_equal(clip, 8 * (i0 + 3 * np.arange(4)))
      assert 0 <= i0 <= 30 - 10  # the window (T - 1) * 3 + 1 = 10 fits
  assert len(starts) > 3  # temporal jitter
  # Evaluation: the centre window (30 - 10) // 2 = 10, 13, 16, 19.
  (b,) = data.eval_batches(d, 'train', image_size=(8, 12), channels=1,
                           batch_size=1, frames=4)
  np.testing.assert_array_equal(_pixels(b, d)[0, :, 4, 6, 0],
                                [80, 104, 128, 152])
  # Shorter than the window: indices past the end repeat the last frame.
  ops = video.ClipOps((8, 12), 1, 4, 2, 1, (1, 1), (1.5, 1.5), False)
  v = ops.decode((tmp_path / 'short.mp4').read_bytes(), 'short')
  assert len(v) == 5
  np.testing.assert_allclose(ops.eval_view(v)[:, 4, 6, 0], [0, 16, 32, 32],
                             atol=3)
  np.testing.assert_array_equal(video.clip_indices(0, 4, 2, 5), [0, 2, 4, 4])
  assert video.centre_start(5, 4, 2) == 0 and video.span(4, 2) == 7


def test_one_crop_and_flip_per_clip_and_repeated_sampling(textured):
  d = _cfg(source='textured', clips_per_video=2, crop_scale=(0.1, 0.5))
  batches = _take(_train(d, batch=8, size=12, frames=3), 3)
  b = batches[0]
  assert b['image'].shape == (8, 3, 12, 12, 1)
  assert b['image'].dtype == np.float32
  assert b['label'].shape == b['index'].shape == b['skipped'].shape == (8,)
  for b in batches:
    # R = 2 clips per video: rows 2j and 2j + 1 come from one video ...
    np.testing.assert_array_equal(b['index'][0::2], b['index'][1::2])
    np.testing.assert_array_equal(b['label'], b['index'])
    assert len(set(b['index'][0::2])) == 4
    for clip in b['image']:
      # ... every frame of a video is the same, so one crop and one flip
      # per clip give identical frames ...
      assert all(np.array_equal(clip[0], f) for f in clip[1:])
    # ... and each clip has its own crop.
    for j in range(0, 8, 2):
      assert not np.array_equal(b['image'][j], b['image'][j + 1])
  with pytest.raises(ValueError, match=r'config\.data\.clips_per_video=4: '
                     r'must divide the per-process batch 6'):
    _train(_cfg(source='textured', clips_per_video=4), batch=6)
  with pytest.raises(ValueError, match=r'per-process batch 2'):
    _train(_cfg(source='textured', clips_per_video=4), batch=8,
           process_count=4)


def test_clip_resume_is_exact_and_refuses_other_clips_per_video():
  d = _cfg(source='moving_digits', clips_per_video=2, frame_stride=2)
  d.moving_digits.update(videos=10, video_frames=12, size=20, digit_size=8)
  it = _train(d, batch=4)
  first = [next(it) for _ in range(3)]
  state = json.loads(json.dumps(it.get_state()))
  assert state['clips_per_video'] == 2 and state['batches'] == 3
  expected = _take(it, 4)  # crosses an epoch (5 batches of 2 videos)
  again = _train(d, batch=4)
  again.set_state(state)
  assert all(_same(x, y) for x, y in zip(expected, _take(again, 4)))
  assert all(_same(x, y) for x, y in zip(first, _take(_train(d, batch=4), 3)))
  d.clips_per_video = 1
  with pytest.raises(ValueError, match=r'made for config\.data\.'
                     r'clips_per_video=2, this run has config\.data\.'
                     r'clips_per_video=1'):
    _train(d, batch=4).set_state(state)


def test_video_files_in_a_worker_process_give_the_same_batches(tmp_path):
  for i in range(4):
    _ramp_video(tmp_path / f'{i}.mkv', 8 + i)
  _write_manifest(tmp_path / 'train.csv', [(f'{i}.mkv', i) for i in range(4)])
  d = _cfg(source='video_files', path=str(tmp_path / 'train.csv'),
           frame_stride=2)
  local = _take(_train(d, batch=2), 3)
  d.worker_count = 1
  remote = _take(_train(d, batch=2), 3)
  assert all(_same(x, y) for x, y in zip(local, remote))


# ---------------------------------------------------------------- bad files


def test_bad_video_files_are_named_or_skipped_and_counted(tmp_path):
  _ramp_video(tmp_path / 'good.mkv', 12)
  _ramp_video(tmp_path / 'cut.mp4', 12, codec='mpeg4')
  _ramp_video(tmp_path / 'cut.mkv', 40)
  for name in ('cut.mp4', 'cut.mkv'):
    raw = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(raw[:len(raw) // 2])
  (tmp_path / 'empty.mkv').write_bytes(b'')
  (tmp_path / 'garbage.mp4').write_bytes(b'not a video' * 50)
  names = ['good.mkv', 'empty.mkv', 'cut.mp4', 'cut.mkv', 'garbage.mp4',
           'missing.mkv']
  _write_manifest(tmp_path / 'train.csv', [(n, 0) for n in names])
  d = _cfg(source='video_files', path=str(tmp_path / 'train.csv'))
  src = data.open_source(d, 'train', image_size=8, channels=1, frames=2)
  load = pipeline._Load(src, pipeline._ops(d, (8, 8), 1, 2, src))
  assert len(load(0)['image']) == 12
  for i, why in ((1, 'empty'), (2, '(cannot decode|no video stream)'),
                 (3, r'decoded \d+ frames of the 40 .* truncated'),
                 (4, 'cannot decode'), (5, 'cannot be read')):
    with pytest.raises(BadRecordError, match=rf'record {i} \(.*'
                       rf'{names[i]}\): .*{why}'):
      load(i)
  with pytest.raises(BadRecordError, match=r'\.(mkv|mp4)\)'):
    _take(_train(d, batch=6, size=8, frames=2), 1)
  with pytest.raises(BadRecordError, match='empty.mkv'):
    list(data.eval_batches(d, 'train', image_size=8, channels=1,
                           batch_size=6, frames=2))
  d.skip_bad_records = True
  (b,) = _take(_train(d, batch=6, size=8, frames=2), 1)
  assert (b['index'] == 0).all()  # every bad one replaced by the next good
  assert sorted(b['skipped']) == [0, 1, 2, 3, 4, 5]
  (b,) = data.eval_batches(d, 'train', image_size=8, channels=1,
                           batch_size=6, frames=2)
  np.testing.assert_array_equal(b['valid'], [1, 0, 0, 0, 0, 0])


def test_manifests(tmp_path):
  (tmp_path / 'v').mkdir()
  (tmp_path / 'ok.csv').write_text('path,label\nv/a.mp4,3\n\n"v/b,c.mp4",0\n')
  files_, labels = manifests.read_manifest(str(tmp_path / 'ok.csv'))
  assert files_ == ['v/a.mp4', 'v/b,c.mp4'] and list(labels) == [3, 0]
  (tmp_path / 'unl.csv').write_text('/abs/a.mkv\nb.mkv\n')
  d = _cfg(source='video_files', path=str(tmp_path / 'unl.csv'),
           video_root=str(tmp_path / 'v'))
  src = data.open_source(d, 'train', image_size=8, channels=1, frames=2)
  assert src.num_classes == 0 and src.label(1) == -1
  assert src.path(0) == '/abs/a.mkv'
  assert src.path(1) == str(tmp_path / 'v' / 'b.mkv')
  d.path = str(tmp_path / 'ok.csv')
  d.video_root = ''
  src = data.open_source(d, 'train', image_size=8, channels=1, frames=2)
  assert src.num_classes == 4 and src.path(0) == str(tmp_path / 'v/a.mp4')
  for text, match in (
      ('a.mp4,1,2\n', r'line 1: 3 fields'),
      ('path\nx.mp4,1\n,2\n', r'line 3: empty path'),
      ('a.mp4,cat\n', r"line 1: label 'cat' is not a class number"),
      ('a.mp4,-1\n', r"line 1: label '-1'"),
      ('a.mp4,1\nb.mp4\n', r'line 2: no label, unlike line 1'),
  ):
    (tmp_path / 'bad.csv').write_text(text)
    with pytest.raises(ValueError, match=rf'bad\.csv {match}'):
      manifests.read_manifest(str(tmp_path / 'bad.csv'))
  # Multi-label (AudioSet-style): class sets, multi-hot labels.
  (tmp_path / 'multi.csv').write_text('a.mp4,0;3\nb.mp4,2\n')
  with pytest.raises(ValueError, match=r"line 1: label '0;3' is not a class"
                     r'.*multi_label=True'):
    manifests.read_manifest(str(tmp_path / 'multi.csv'))
  _, sets = manifests.read_manifest(str(tmp_path / 'multi.csv'), 4)
  np.testing.assert_array_equal(sets[0], [1, 0, 0, 1])
  np.testing.assert_array_equal(sets[1], [0, 0, 1, 0])
  with pytest.raises(ValueError, match=r"line 1: label '0;3' is not a set "
                     r'of class numbers; .*\[0, 3\)'):
    manifests.read_manifest(str(tmp_path / 'multi.csv'), 3)
  d.update(path=str(tmp_path / 'multi.csv'), multi_label=True, num_classes=4)
  src = data.open_source(d, 'train', image_size=8, channels=1, frames=2)
  assert src.multi_label and src.label_shape == (4,) and src.num_classes == 4
  d.update(multi_label=False, num_classes=0)
  (tmp_path / 'empty.csv').write_text('path,label\n')
  for path, split, match in (
      ('empty.csv', 'train', 'lists no files'),
      ('ok.csv', 'test', r"has no '\{split\}'"),
      ('{split}.csv', 'test', r'no manifest .*test\.csv for split'),
  ):
    d.path = str(tmp_path / path)
    with pytest.raises(ValueError, match=r'config\.data\.path=.*' + match):
      data.open_source(d, split, image_size=8, channels=1, frames=2)


def test_video_sources_need_frames_and_config_checks():
  d = _cfg(source='moving_digits')
  with pytest.raises(ValueError, match=r"source='moving_digits': holds "
                     r'videos, but config\.model\.frames=0'):
    data.open_source(d, 'train', image_size=8, channels=1)
  with pytest.raises(ValueError, match=r'model\.frames to the clip length'):
    pipeline.check_clips(d, 0, 8)
  pipeline.check_clips(d, 4, 8)
  d.record_format = 'clip'
  d.source = 'array_record'
  assert data.gives_clips(d)
  with pytest.raises(ValueError, match=r"record_format='clip' gives video"):
    pipeline.check_clips(d, 0)
  for key, value, match in (
      ('label_key', 'colour', r"labels are \('label', 'direction'\)"),
      ('moving_digits.digit_size', 40, 'smaller than moving_digits.size'),
      ('moving_digits.speed', (2.0, 1.0), 'min <= max'),
      ('moving_digits.videos', 0, 'an int >= 1'),
      ('frame_stride', 0, '>= 1'),
      ('clips_per_video', 0, '>= 1'),
  ):
    d = _cfg(source='moving_digits')
    if '.' in key:
      d.moving_digits[key.split('.')[1]] = value
    else:
      d[key] = value
    with pytest.raises(ValueError, match=rf'config\.data\.{key}=.*{match}'):
      data.check_config(d)


# ----------------------------------------------------- pre-decoded clips


def test_array_record_clips_round_trip(tmp_path):
  d = _cfg(source='moving_digits', frame_stride=2, label_key='direction')
  d.moving_digits.update(videos=6, video_frames=8, size=16, digit_size=8)
  mem = data.open_source(d, 'train', image_size=16, channels=1, frames=3)
  n, skipped = video_prepare.prepare(mem, str(tmp_path / 'train.ar'),
                                     channels=1, shards=2)
  assert n == 6 and not skipped
  d.update(source='array_record', record_format='clip',
           path=str(tmp_path / '{split}.ar*'))
  src = data.open_source(d, 'train', image_size=16, channels=1, frames=3)
  assert len(src) == 6 and src.video
  assert src.num_classes == 1 + max(mem[i]['label'] for i in range(6))
  for i in range(6):
    np.testing.assert_array_equal(src[i]['image'][..., 0], mem[i]['image'])
    assert src[i]['label'] == mem[i]['label']
  b = _take(_train(d, batch=2, size=16, frames=3, channels=3), 1)[0]
  assert b['image'].shape == (2, 3, 16, 16, 3)
  # Resized (short side) and every 2nd frame: [4, 8, 8, 1].
  video_prepare.prepare(mem, str(tmp_path / 'small.ar'), channels=1,
                        short_side=8, frame_step=2)
  d.path = str(tmp_path / 'small.ar')
  assert data.open_source(d, 'train', image_size=8, channels=1,
                          frames=3)[0]['image'].shape == (4, 8, 8, 1)
  # A record that is not a clip is named with its file and index.
  data.write_array_record(str(tmp_path / 'img.ar'), np.zeros((2, 4, 4),
                                                             np.uint8),
                          record_format='image_bytes')
  d.path = str(tmp_path / 'img.ar')
  src = data.open_source(d, 'train', image_size=8, channels=1, frames=2)
  with pytest.raises(BadRecordError, match=r'img\.ar record 1 .*not a clip '
                     'record'):
    src[1]


def test_video_prepare_command(tmp_path):
  for i in range(2):
    _ramp_video(tmp_path / f'{i}.mkv', 6, size=(8, 12))
  _write_manifest(tmp_path / 'train.csv', [(f'{i}.mkv', i) for i in range(2)])
  (tmp_path / 'test.csv').write_text('0.mkv,1\nbroken.mkv,0\n')
  (tmp_path / 'broken.mkv').write_bytes(b'xx')
  cmd = [sys.executable, '-m', 'mae_jax.data.video_prepare',
         f'--manifest={tmp_path}/{{split}}.csv', '--short_side=4',
         f'--out={tmp_path}/out/{{split}}.array_record', '--splits=train,test']
  r = subprocess.run(cmd, env=subprocess_env(), cwd=ROOT, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 1 and 'broken.mkv' in r.stderr, r.stderr
  assert 'train: 2 videos' in r.stdout
  assert not os.path.exists(tmp_path / 'out' / 'test.array_record')
  r = subprocess.run(cmd + ['--skip_bad'], env=subprocess_env(), cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and 'test: 1 videos' in r.stdout, r.stderr
  d = _cfg(source='array_record', record_format='clip',
           path=str(tmp_path / 'out' / '{split}.array_record'))
  src = data.open_source(d, 'train', image_size=4, channels=1, frames=2)
  assert src[1]['image'].shape == (6, 4, 6, 3) and src[1]['label'] == 1


# ----------------------------------------------------------- moving digits


def _centre_of_mass(frames):
  """uint8 [F, H, W] -> float [F, 2] (x, y)."""
  f = frames.astype(np.float64)
  ys, xs = np.mgrid[:f.shape[1], :f.shape[2]]
  m = f.sum(axis=(1, 2))
  return np.stack([(f * xs).sum(axis=(1, 2)) / m,
                   (f * ys).sum(axis=(1, 2)) / m], axis=1)


def test_moving_digits_motion_and_labels():
  d = _cfg(source='moving_digits', frame_stride=3, label_key='direction')
  d.moving_digits.update(videos=40, video_frames=20, size=32, digit_size=12,
                         speed=(1.0, 2.5))
  src = data.open_source(d, 'train', image_size=32, channels=1, frames=4)
  assert len(src) == 40 and src.num_classes == 8
  assert len(data.open_source(d, 'test', image_size=32, channels=1,
                              frames=4)) == 10
  w0 = video.centre_start(20, 4, 3)  # evaluation clip: w0, w0 + 3, ...
  directions = set()
  for i in range(40):
    rec = src[i]
    assert rec['image'].shape == (20, 32, 32) and rec['image'].dtype == np.uint8
    assert np.array_equal(rec['image'], src[i]['image'])  # deterministic
    v = src.motion(i)['velocity']
    step = np.diff(_centre_of_mass(rec['image']), axis=0)  # [F - 1, 2]
    for a in range(2):
      straight = np.abs(np.abs(step[:, a]) - abs(v[a])) < 0.05
      # A bounce shortens one step and reverses the motion on that axis.
      for t in np.flatnonzero(~straight):
        assert abs(step[t, a]) < abs(v[a])
        if 0 < t < len(step) - 1:  # (the clip may end or start in one)
          assert np.sign(step[t - 1, a]) == -np.sign(step[t + 1, a]) != 0
    # The evaluation clip (travel 9 x speed <= 20 px here) has no bounce.
    if 9 * np.abs(v).max() <= 20:
      np.testing.assert_allclose(step[w0:w0 + 9], np.tile(v, (9, 1)),
                                 atol=0.05)
    # The label is the direction seen between its first two frames.
    dx, dy = _centre_of_mass(rec['image'][[w0, w0 + 3]])[1] - (
        _centre_of_mass(rec['image'][[w0]])[0])
    k = int(np.round(np.arctan2(-dy, dx) / (np.pi / 4))) % 8
    assert rec['label'] == k
    directions.add(k)
  assert len(directions) >= 6
  # 'label': the digit, from the split's own MNIST digits.
  d.label_key = 'label'
  src = data.open_source(d, 'train', image_size=32, channels=1, frames=4)
  test = data.open_source(d, 'test', image_size=32, channels=1, frames=4)
  assert src.num_classes == 10
  assert len({src[i]['label'] for i in range(40)}) >= 8
  train_glyphs, _ = moving_digits._glyphs('train', 12)
  test_glyphs, test_digits = moving_digits._glyphs('test', 12)
  assert len(train_glyphs) == 4000 and len(test_glyphs) == 1000
  assert test[3]['label'] == test_digits[test.motion(3)['digit']]


# ------------------------------------------------------------- evaluation


def test_eval_batches_of_clips_and_still_images():
  d = _cfg(source='moving_digits', frame_stride=2)
  d.moving_digits.update(videos=12, video_frames=8, size=16, digit_size=8)
  kw = dict(image_size=12, channels=3, batch_size=2, frames=3)
  got = list(data.eval_batches(d, 'test', **kw))  # 3 test videos
  assert len(got) == 2 and got[0]['image'].shape == (2, 3, 12, 12, 3)
  np.testing.assert_array_equal(np.concatenate([b['valid'] for b in got]),
                                [1, 1, 1, 0])
  src = data.open_source(d, 'test', image_size=12, channels=3, frames=3)
  # The centre window (8 - 5) // 2 = 1: frames 1, 3, 5, resized 16 -> 12.
  ops = video.ClipOps((12, 12), 3, 3, 2, 1, (1, 1), (1, 1), False)
  want = ops.eval_view(ops.decode(src[2]['image'], 'x'))
  np.testing.assert_allclose(_pixels(got[1], d)[0], want, atol=1)
  assert got[1]['label'][0] == src[2]['label'] and got[1]['label'][1] == -1
  assert data.source_info(d, 'test', image_size=12, channels=3,
                          frames=3) == (3, 10)
  # An image source feeds clip models as still clips.
  d = _cfg(source='synthetic', synthetic_examples=4)
  (b,) = data.eval_batches(d, 'train', image_size=8, channels=3,
                           batch_size=4, frames=2)
  assert b['image'].shape == (4, 2, 8, 8, 3)
  np.testing.assert_array_equal(b['image'][:, 0], b['image'][:, 1])
  b = _take(_train(d, batch=2, size=8, channels=3, frames=2), 1)[0]
  np.testing.assert_array_equal(b['image'][:, 0], b['image'][:, 1])
