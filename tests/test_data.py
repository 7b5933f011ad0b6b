"""Tests of mae_jax.data: sources, transforms, the train / eval pipelines."""

import io
import json
import os

import numpy as np
from PIL import Image
import pytest

from mae_jax import config
from mae_jax import data
from mae_jax.data import sources
from mae_jax.data import BadRecordError, transforms


def _cfg(**kw):
  d = config.base_config().data
  d.read_threads = 2
  d.update(kw)
  return d


class _Indexed(data.Source):
  """label = index; image = constant index % 256; `bad` indices are float."""

  def __init__(self, n, bad=()):
    self.name = 'indexed:train'
    self.num_classes = n
    self._n = n
    self._bad = set(bad)

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    image = np.full((8, 8, 3), i % 256, np.uint8)
    if i in self._bad:
      image = image.astype(np.float32)
    return {'image': image, 'label': i}


@pytest.fixture
def indexed(monkeypatch):
  """Registers source 'indexed' of data.synthetic_examples records."""
  bad = set()
  monkeypatch.setitem(
      data.SOURCES, 'indexed',
      lambda cfg, split, **_: _Indexed(cfg.synthetic_examples, bad))
  return bad


def _train(d, *, batch=4, seed=0, size=8, channels=3, **kw):
  return data.build_train_iterator(d, image_size=size, channels=channels,
                                   global_batch=batch, seed=seed, **kw)


def _take(it, k):
  return [next(it) for _ in range(k)]


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG')
  return buf.getvalue()


def _write_images(d, names, shape=(20, 24, 3)):
  os.makedirs(d, exist_ok=True)
  for i, name in enumerate(names):
    Image.fromarray(np.full(shape, 10 * i, np.uint8)).save(os.path.join(d, name))


# ------------------------------------------------------------------ sources


def test_mnist_split_is_fixed_disjoint_and_stratified():
  d = _cfg(source='mnist')
  train = data.open_source(d, 'train', image_size=28, channels=1)
  test = data.open_source(d, 'test', image_size=28, channels=1)
  assert (len(train), len(test)) == (4000, 1000)
  assert train.name == 'mnist:train' and train.num_classes == 10
  assert np.bincount(test.labels).tolist() == [100] * 10
  assert np.bincount(train.labels).tolist() == [400] * 10
  assert not set(train.ids) & set(test.ids)
  assert len(set(train.ids) | set(test.ids)) == 5000
  # Pinned: the split must never change (e.g. with a numpy upgrade).
  assert test.ids[:4].tolist() == [2221, 1222, 227, 4662]
  r = test[0]
  assert r['image'].shape == (28, 28) and r['image'].dtype == np.uint8
  assert r['image'].max() > 200 and isinstance(r['label'], int)
  # Rows ship sorted by class; the source order must be mixed.
  assert len(set(test.labels[:30])) > 5
  with pytest.raises(ValueError, match='mnist has splits train / test'):
    data.open_source(d, 'validation', image_size=28, channels=1)


def test_digits_split():
  d = _cfg(source='digits')
  train = data.open_source(d, 'train', image_size=8, channels=1)
  test = data.open_source(d, 'test', image_size=8, channels=1)
  assert len(train) + len(test) == 1797 and not set(train.ids) & set(test.ids)
  per_class = np.bincount(train.labels) + np.bincount(test.labels)
  assert np.array_equal(np.bincount(test.labels), np.round(0.2 * per_class))
  img = test[3]['image']
  assert img.shape == (8, 8) and img.dtype == np.uint8 and img.max() == 255


@pytest.mark.parametrize('channels', [1, 3])
def test_synthetic_is_deterministic_and_labels_are_visible(channels):
  d = _cfg(synthetic_examples=100)
  a = data.open_source(d, 'train', image_size=(32, 24), channels=channels)
  b = data.open_source(d, 'train', image_size=(32, 24), channels=channels)
  test = data.open_source(d, 'test', image_size=(32, 24), channels=channels)
  assert len(a) == 100 and a.num_classes == 10
  assert a[7]['image'].shape == (32, 24, channels)
  assert a[7]['image'].dtype == np.uint8
  assert np.array_equal(a[7]['image'], b[7]['image'])
  assert not np.array_equal(a[7]['image'], test[7]['image'])
  assert sorted(np.bincount([a[i]['label'] for i in range(100)])) == [10] * 10
  # The label is the stripe orientation: the structure tensor recovers it.
  hits = 0
  for i in range(60):
    img = a[i]['image'].astype(np.float32).mean(-1)
    gy, gx = np.gradient(img)
    theta = 0.5 * np.arctan2(2 * (gx * gy).sum(),
                             (gx * gx).sum() - (gy * gy).sum())
    hits += int(np.round(theta / (np.pi / 10))) % 10 == a[i]['label']
  assert hits >= 55


def test_folder_classes_splits_and_unlabeled(tmp_path):
  _write_images(tmp_path / 'train' / 'dog', ['a.png', 'b.JPG'])
  _write_images(tmp_path / 'train' / 'cat' / 'deep', ['c.png'])
  (tmp_path / 'train' / 'cat' / 'notes.txt').write_text('not an image')
  os.makedirs(tmp_path / 'train' / 'empty')
  os.makedirs(tmp_path / 'train' / '.ipynb_checkpoints' / 'x')
  _write_images(tmp_path / 'train' / '.ipynb_checkpoints' / 'x', ['e.png'])
  _write_images(tmp_path / 'test' / 'dog', ['d.png'])
  d = _cfg(source='folder', path=str(tmp_path))
  train = data.open_source(d, 'train', image_size=8, channels=3)
  assert train.name == f'folder:{tmp_path / "train"}'
  assert train.classes == ('cat', 'dog') and train.num_classes == 2
  assert len(train) == 3
  records = [train[i] for i in range(3)]
  assert [r['label'] for r in records] == [0, 1, 1]
  assert all(isinstance(r['image'], bytes) for r in records)
  assert str(tmp_path / 'train' / 'cat' / 'deep' / 'c.png') in train.where(0)
  # The test split lacks 'cat', yet 'dog' keeps the train label.
  test = data.open_source(d, 'test', image_size=8, channels=3)
  assert len(test) == 1 and test[0]['label'] == 1 and test.num_classes == 2
  _write_images(tmp_path / 'test' / 'cow', ['f.png'])
  with pytest.raises(ValueError, match=r"classes \['cow'\] that .* lacks"):
    data.open_source(d, 'test', image_size=8, channels=3)
  with pytest.raises(ValueError, match=r"config\.data\.path=.*'val'"):
    data.open_source(d, 'val', image_size=8, channels=3)

  flat = tmp_path / 'flat'
  _write_images(flat, ['x.png', 'y.webp'])
  unl = data.open_source(_cfg(source='folder', path=str(flat)), 'train',
                         image_size=8, channels=3)
  assert unl.num_classes == 0 and [unl[i]['label'] for i in (0, 1)] == [-1, -1]

  _write_images(tmp_path / 'train', ['loose.png'])
  with pytest.raises(ValueError, match='top level'):
    data.open_source(d, 'train', image_size=8, channels=3)
  os.makedirs(tmp_path / 'none')
  with pytest.raises(ValueError, match=r'config\.data\.path=.*no image files'):
    data.open_source(_cfg(source='folder', path=str(tmp_path / 'none')),
                     'train', image_size=8, channels=3)


def test_sources_pickle():
  import pickle  # pylint: disable=g-import-not-at-top
  for d in (_cfg(source='mnist'), _cfg(source='synthetic')):
    src = data.open_source(d, 'test', image_size=16, channels=1)
    copy = pickle.loads(pickle.dumps(src))
    assert copy.name == src.name
    assert np.array_equal(copy[5]['image'], src[5]['image'])


# --------------------------------------------------------------- transforms


def test_decode_arrays_and_conversions():
  gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
  assert data.decode(gray, channels=1, where='w').shape == (3, 4, 1)
  rgb = data.decode(gray, channels=3, where='w')
  assert rgb.shape == (3, 4, 3) and np.array_equal(rgb[..., 2], gray)
  color = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
  lum = data.decode(color, channels=1, where='w')[..., 0].astype(int)
  pil = np.asarray(Image.fromarray(color).convert('L')).astype(int)
  assert np.abs(lum - pil).max() <= 1
  png = data.decode(_png(color), channels=3, where='w')
  assert np.array_equal(png, color)
  assert data.decode(_png(color), channels=1, where='w').shape == (5, 6, 1)


@pytest.mark.parametrize('image, match', [
    (np.zeros((4, 4), np.float32), 'dtype is float32'),
    (np.zeros((2, 4, 4, 3), np.uint8), r'shape is \(2, 4, 4, 3\)'),
    (np.zeros((4, 4, 2), np.uint8), 'has 2 channels'),
    (np.zeros((0, 4), np.uint8), 'empty'),
    (b'', 'bytes are empty'),
    (b'\x89PNG not really', 'cannot decode 15 image bytes'),
    ('a string', 'is a str'),
])
def test_decode_rejects(image, match):
  with pytest.raises(BadRecordError, match=match) as e:
    data.decode(image, channels=3, where='mnist:train record 17')
  assert str(e.value).startswith('mnist:train record 17: ')
  assert 'expected' in str(e.value)


def test_crops():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
  out = data.random_resized_crop(img, rng, (16, 12), (0.2, 1.0), (0.75, 1.33))
  assert out.shape == (16, 12, 3) and out.dtype == np.uint8
  gray = img[:, :, :1]
  assert data.random_resized_crop(gray, rng, (8, 8), (0.5, 1.0),
                                  (1.0, 1.0)).shape == (8, 8, 1)
  # Full-area, aspect-preserving crop of a square image = a plain resize.
  sq = img[:, :30]
  full = data.random_resized_crop(sq, rng, (10, 10), (1.0, 1.0), (1.0, 1.0))
  assert np.array_equal(full, data.resize_center_crop(sq, (10, 10)))
  # No box of ratio 1 and area 100% fits a 1x4 strip: the fallback is the
  # central square; so is the evaluation view.
  strip = np.zeros((10, 40, 1), np.uint8)
  strip[:, 15:25] = 255
  for out in (data.random_resized_crop(strip, rng, (10, 10), (1, 1), (1, 1)),
              data.resize_center_crop(strip, (10, 10))):
    assert out.shape == (10, 10, 1) and out[:, 2:8].min() == 255
  # Same size in and out is the identity.
  assert np.array_equal(data.resize_center_crop(img, (30, 40)), img)


def test_normalize_round_trip():
  img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  x = data.normalize(img, mean, std)
  assert x.dtype == np.float32
  np.testing.assert_allclose(x[0, 0], -np.array(mean) / np.array(std),
                             rtol=1e-6)
  assert np.array_equal(data.denormalize(x, mean, std), img)
  assert np.array_equal(data.denormalize(x * 10, mean, std).max(), 255)
  g = data.normalize(img[..., :1], (0.5,), (0.5,))
  assert g.shape == (16, 16, 1) and g.min() == -1 and g.max() == 1
  with pytest.raises(ValueError, match='config.data.mean'):
    data.normalize(img[..., :2], mean, std)


# ----------------------------------------------------------------- pipeline


def test_train_batches_and_restore_are_exact(indexed):
  d = _cfg(source='indexed', synthetic_examples=30)
  it = _train(d, batch=6)
  b = next(it)
  assert b['image'].shape == (6, 8, 8, 3) and b['image'].dtype == np.float32
  assert b['label'].dtype == np.int32 and b['skipped'].dtype == np.int32
  assert not b['skipped'].any()
  # Images and labels stay aligned (the image is the constant label value).
  pixels = data.denormalize(b['image'], d.mean, d.std)
  assert np.array_equal(pixels[:, 4, 4, 0], b['label'])

  _take(it, 4)
  state = json.loads(json.dumps(it.get_state()))  # what checkpoints store
  expected = _take(it, 6)  # crosses epoch boundaries (5 batches per epoch)
  again = _train(d, batch=6)
  again.set_state(state)
  assert all(_same(x, y) for x, y in zip(expected, _take(again, 6)))

  first = _take(_train(d, batch=6), 11)
  assert all(_same(x, y) for x, y in zip(first, _take(_train(d, batch=6), 11)))
  other = _take(_train(d, batch=6, seed=1), 11)
  assert not all(_same(x, y) for x, y in zip(first, other))
  # Each epoch is a reshuffled permutation of all records.
  labels = np.concatenate([x['label'] for x in first[:10]])
  assert sorted(labels[:30]) == sorted(labels[30:]) == list(range(30))
  assert not np.array_equal(labels[:30], labels[30:])


def test_batches_and_state_do_not_depend_on_workers_or_threads():
  # A source of mae_jax's: workers need not import this test module (slow).
  d = _cfg(source='synthetic', synthetic_examples=30, read_threads=1)
  ref = _take(_train(d, batch=6), 8)  # crosses an epoch boundary
  d.read_threads = 3
  assert all(_same(x, y) for x, y in zip(ref, _take(_train(d, batch=6), 8)))

  def run(workers, k, state=None):
    d.worker_count = workers
    it = _train(d, batch=6)
    try:
      if state is not None:
        it.set_state(state)
      return _take(it, k), json.loads(json.dumps(it.get_state()))
    finally:
      it.close()

  _, state = run(0, 3)
  assert state == {'batches': 3, 'global_batch': 6, 'process_index': 0,
                   'process_count': 1, 'source': 'synthetic:train',
                   'source_size': 30, 'seed': 0}
  # Resume in 2 worker processes: grain's worker w builds batches 3 + w,
  # 5 + w, ... and they come back in order, the same batches.
  got, state = run(2, 4, state)
  assert all(_same(x, y) for x, y in zip(ref[3:7], got))
  assert state['batches'] == 7
  # And back to none, from JSON bytes (what grain's checkpoint handler passes).
  got, _ = run(0, 1, json.dumps(state).encode())
  assert _same(ref[7], got[0])


def test_set_state_refuses_another_stream(indexed):
  d = _cfg(source='indexed', synthetic_examples=30)
  it = _train(d, batch=6)
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 2)
  it.set_state(state)  # also rewinds a started iterator
  assert all(_same(x, y) for x, y in zip(expected, _take(it, 2)))
  for kw, match in (
      (dict(batch=12), r'made for config\.batch_size=6, this run has '
                       r'config\.batch_size=12'),
      (dict(batch=6, process_count=2),
       r'made for jax\.process_count\(\)=1, this run has '
       r'jax\.process_count\(\)=2'),
  ):
    with pytest.raises(ValueError, match=match):
      _train(d, **kw).set_state(state)
  d.synthetic_examples = 31
  with pytest.raises(ValueError, match=r'training source of 30 records, this '
                     r"run has .* 31 records: .*source 'indexed:train'"):
    _train(d, batch=6).set_state(state)
  # What an older mae_jax saved: grain's own iterator state.
  old = {'next_index': 12, 'parent': {'next_index': 4}}
  with pytest.raises(ValueError, match=r'older mae_jax.*new --workdir'):
    _train(d, batch=6).set_state(json.dumps(old).encode())


def test_processes_share_one_global_stream(indexed):
  d = _cfg(source='indexed', synthetic_examples=24)
  one = _take(_train(d, batch=8), 3)
  shares = [_take(_train(d, batch=8, process_index=p, process_count=2), 3)
            for p in (0, 1)]
  seen = [np.concatenate([b['label'] for b in s]) for s in shares]
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(24))  # one whole epoch
  for k in range(3):  # batch k of the processes, in order = global batch k
    got = np.concatenate([shares[0][k]['label'], shares[1][k]['label']])
    np.testing.assert_array_equal(got, one[k]['label'])
    np.testing.assert_array_equal(one[k]['index'], one[k]['label'])
  with pytest.raises(ValueError, match='not divisible'):
    _train(d, batch=7, process_count=2)


def test_skip_bad_records_replaces_and_counts_them(indexed):
  d = _cfg(source='indexed', synthetic_examples=20)
  # Grain's order depends on (seed, n) only, so a clean run gives the stream
  # that the run with bad records must reproduce, bad ones replaced.
  stream = np.concatenate([b['label'] for b in _take(_train(d, batch=5), 9)])
  indexed.update({3, 7, 11, 12})
  with pytest.raises(BadRecordError, match=r'indexed:train record (3|7|11|12): '
                     'image dtype is float32'):
    _take(_train(d, batch=5), 9)
  d.skip_bad_records = True
  batches = _take(_train(d, batch=5), 9)
  labels = np.concatenate([b['label'] for b in batches])
  skipped = np.concatenate([b['skipped'] for b in batches])
  # A bad record is replaced by the next good one (11 -> 13, twice bad).
  expected = [{3: 4, 7: 8, 11: 13, 12: 13}.get(x, x) for x in stream]
  np.testing.assert_array_equal(labels, expected)
  np.testing.assert_array_equal(np.concatenate([b['index'] for b in batches]),
                                expected)
  np.testing.assert_array_equal(
      skipped, [{3: 1, 7: 1, 11: 2, 12: 1}.get(x, 0) for x in stream])
  # Every bad record was met at least twice in these 2.25 epochs.
  assert skipped.sum() >= 2 * (1 + 1 + 2 + 1)
  # The images still match the labels after a replacement.
  images = np.concatenate([b['image'] for b in batches])
  np.testing.assert_array_equal(
      data.denormalize(images, d.mean, d.std)[:, 4, 4, 0], labels)

  indexed.update(range(20))
  with pytest.raises(BadRecordError, match='every record is bad: all 20 '):
    next(_train(d, batch=5))


def test_folder_pipeline_names_corrupt_file_across_a_worker(tmp_path):
  _write_images(tmp_path / 'a', [f'{i}.png' for i in range(5)])
  _write_images(tmp_path / 'b', [f'{i}.png' for i in range(5)])
  (tmp_path / 'b' / '2.png').write_bytes(b'garbage')
  d = _cfg(source='folder', path=str(tmp_path), crop_scale=(0.5, 1.0))

  def run(workers):
    d.worker_count = workers
    it, got = _train(d, batch=2, size=16), []
    try:
      with pytest.raises(BadRecordError) as e:
        for _ in range(20):
          got.append(next(it))
    finally:
      it.close()
    return got, str(e.value)

  local, message = run(0)
  assert message.startswith(f'folder:{tmp_path} record 7 ')
  assert str(tmp_path / 'b' / '2.png') in message
  # One worker process: the same batches, and the error crosses the process
  # boundary intact (grain re-raises the pickled exception).
  remote, remote_message = run(1)
  assert remote_message == message
  assert len(remote) == len(local)
  assert all(_same(x, y) for x, y in zip(local, remote))


def test_eval_batches_pad_and_share(indexed):
  d = _cfg(source='indexed', synthetic_examples=10)
  kw = dict(image_size=8, channels=3, batch_size=4)
  shares = [list(data.eval_batches(d, 'test', process_index=p,
                                   process_count=2, **kw)) for p in (0, 1)]
  assert [len(s) for s in shares] == [2, 2]
  labels = [np.concatenate([b['label'] for b in s]) for s in shares]
  valid = [np.concatenate([b['valid'] for b in s]) for s in shares]
  assert labels[0].tolist() == list(range(8)) and valid[0].all()
  assert labels[1].tolist() == [8, 9] + [-1] * 6
  assert valid[1].tolist() == [True] * 2 + [False] * 6
  b = shares[0][1]
  assert b['image'].shape == (4, 8, 8, 3) and b['image'].dtype == np.float32
  assert np.array_equal(data.denormalize(b['image'], d.mean, d.std)[:, 0, 0, 0],
                        [4, 5, 6, 7])

  firsts = list(data.eval_batches(d, 'test', max_examples=5, **kw))
  assert len(firsts) == 2 and sum(b['valid'].sum() for b in firsts) == 5

  indexed.add(2)
  with pytest.raises(BadRecordError, match='indexed:train record 2'):
    list(data.eval_batches(d, 'test', **kw))
  d.skip_bad_records = True
  got = list(data.eval_batches(d, 'test', **kw))
  assert np.concatenate([b['valid'] for b in got]).tolist() == (
      [True, True, False] + [True] * 7 + [False] * 2)
  assert data.source_info(d, 'test', image_size=8, channels=3) == (10, 10)


@pytest.mark.parametrize('record_format', ['example', 'image_bytes'])
def test_array_record_round_trip(tmp_path, record_format):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 12, 12, 1), dtype=np.uint8)
  labels = np.array([0, 1, 2, 3, 4, 0, 1])
  with_labels = record_format == 'example'
  for split, n in (('train', 4), ('test', 3)):
    part = slice(0, 4) if split == 'train' else slice(4, 7)
    data.write_array_record(
        str(tmp_path / f'{split}.array_record'), images[part],
        labels[part] if with_labels else None, record_format=record_format)
  d = _cfg(source='array_record', path=str(tmp_path / '{split}.array_record'),
           record_format=record_format, mean=(0.5,), std=(0.5,))
  src = data.open_source(d, 'test', image_size=12, channels=1)
  assert len(src) == 3 and src.name.startswith('array_record:')
  assert src.num_classes == (5 if with_labels else 0)
  (b,) = data.eval_batches(d, 'test', image_size=12, channels=1, batch_size=4)
  got = data.denormalize(b['image'], d.mean, d.std)
  assert np.array_equal(got[:3], images[4:]) and b['valid'].tolist() == [
      True, True, True, False]
  want = labels[4:].tolist() if with_labels else [-1, -1, -1]
  assert b['label'][:3].tolist() == want
  batch = next(_train(d, batch=4, size=12, channels=1))
  assert batch['image'].shape == (4, 12, 12, 1)
  assert sorted(batch['label']) == sorted(
      labels[:4] if with_labels else [-1] * 4)


def test_array_record_bad_records_and_paths(tmp_path):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'train.array_record')
  w = array_record_module.ArrayRecordWriter(path, 'group_size:1')
  w.write(b'\xff\xff not a proto')
  w.close()
  d = _cfg(source='array_record', path=path)
  # Named by file and record within it, then the global record id.
  with pytest.raises(BadRecordError, match=r'train\.array_record record 0 '
                     r'\(record 0 of array_record:.*\): not a serialized tf\.'):
    list(data.eval_batches(d, 'train', image_size=8, channels=3, batch_size=2))
  with pytest.raises(ValueError, match=r"config\.data\.path=.*no '\{split\}'"):
    data.open_source(d, 'test', image_size=8, channels=3)
  d.path = str(tmp_path / 'nothing-*.array_record')
  with pytest.raises(ValueError, match=r'config\.data\.path=.*no files match'):
    data.open_source(d, 'train', image_size=8, channels=3)
  with pytest.raises(ValueError, match='expected uint8'):
    data.write_array_record(path, np.zeros((2, 4, 4), np.float32))


def test_tfds_source(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class Tiny(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(16, 16, 3)),
          'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl):
      return {'train': self._generate_examples(20),
              'test': self._generate_examples(6)}

    def _generate_examples(self, n):
      for i in range(n):
        # PNG bytes as a file object: encoding an ndarray would need TF.
        yield i, {'image': io.BytesIO(_png(np.full((16, 16, 3), i, np.uint8))),
                  'label': i % 3}

  Tiny(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  d = _cfg(source='tfds', tfds_name='tiny', tfds_data_dir=str(tmp_path))
  assert data.source_info(d, 'test', image_size=16, channels=3) == (6, 3)
  src = data.open_source(d, 'train', image_size=16, channels=3)
  assert src.name == 'tfds:tiny:train'
  r = src[0]  # the pixel value is the example number, label its value % 3
  assert r['image'].shape == (16, 16, 3) and r['label'] == r['image'][0, 0, 0] % 3
  batch = next(_train(d, batch=4, size=16))
  assert batch['image'].shape == (4, 16, 16, 3)
  d.tfds_name = 'no_such_dataset_here'
  with pytest.raises(ValueError, match=r"tfds_name='no_such_dataset_here'.*"
                     r'tfds_data_dir=.*array_record'):
    data.open_source(d, 'train', image_size=16, channels=3)
  d.tfds_name, d.image_key = 'tiny', 'img'
  with pytest.raises(ValueError, match=r"config\.data\.image_key='img'"):
    data.open_source(d, 'train', image_size=16, channels=3)


# ------------------------------------------------------------------- config


@pytest.mark.parametrize('key, value, match', [
    ('source', 'imagenet', "allowed .*'mnist'"),
    ('record_format', 'csv', 'allowed'),
    ('crop_scale', (0.5, 0.2), 'min <= max'),
    ('crop_scale', (0.0, 1.0), '0 < min'),
    ('crop_ratio', (0.0, 1.0), '0 < min'),
    ('mean', (0.5, 0.5), 'std'),
    ('std', (0.2, 0.0, 0.2), '> 0'),
    ('worker_count', -1, '>= 0'),
    ('read_threads', 0, '>= 1'),
    ('prefetch_batches', -1, '>= 0'),
    ('synthetic_examples', 0, '>= 1'),
])
def test_check_config_names_the_key(key, value, match):
  d = _cfg(**{key: value})
  with pytest.raises(ValueError, match=rf'config\.data\.{key}=.*{match}'):
    sources.check_config(d)


def test_check_config_paths(tmp_path):
  sources.check_config(_cfg())
  sources.check_config(_cfg(source='folder', path=str(tmp_path)))
  for kw, key in ((dict(source='folder'), 'path'),
                  (dict(source='folder', path=str(tmp_path / 'x')), 'path'),
                  (dict(source='array_record'), 'path'),
                  (dict(source='array_record',
                        path=str(tmp_path / '{split}-*.ar')), 'path'),
                  (dict(source='tfds'), 'tfds_name')):
    with pytest.raises(ValueError, match=rf'config\.data\.{key}='):
      sources.check_config(_cfg(**kw))
  with pytest.raises(ValueError, match=r'config\.data\.mean=.*model\.channels'):
    _train(_cfg(mean=(0.5, 0.5, 0.5), std=(1, 1, 1)), channels=1)


def test_eval_crop_keeps_that_fraction_of_the_shorter_side():
  """crop_pct 0.5 of a 16x16 image at size 8 = its central 8x8, exactly."""
  img = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
  np.testing.assert_array_equal(
      transforms.resize_center_crop(img, (8, 8), 0.5), img[4:12, 4:12])
  ops = transforms.ImageOps((8, 8), 3, (0.2, 1.0), (0.75, 1.33), False, 0.5)
  np.testing.assert_array_equal(ops.eval_view(img), img[4:12, 4:12])
