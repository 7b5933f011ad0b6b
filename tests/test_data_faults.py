"""Faults in the data: bad ArrayRecord shards are named by file, and worker
processes that raise or die never leave next() hanging.

Worker scenarios run in a subprocess under a timeout, so a hang fails the test
instead of stalling the suite.
"""

import io
import json
import subprocess
import sys

from array_record.python import array_record_module
import numpy as np
from PIL import Image
import pytest

from mae_jax import config
from mae_jax import data
from mae_jax.data import BadRecordError
from conftest import ROOT, subprocess_env


def _cfg(**kw):
  d = config.base_config().data
  d.read_threads = 2
  d.update(kw)
  return d


# -------------------------------------------------------- ArrayRecord shards


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG')
  return buf.getvalue()


def _shard(path, records):
  w = array_record_module.ArrayRecordWriter(str(path), 'group_size:1')
  for r in records:
    w.write(r)
  w.close()
  return path


@pytest.fixture
def shards(tmp_path):
  """Two shards of 'example' records: 3 + 4 gray 8x8 images, label = id."""
  images = np.arange(7, dtype=np.uint8)[:, None, None] * np.ones(
      (7, 8, 8), np.uint8)
  data.write_array_record(str(tmp_path / 'train-0.ar'), images[:3],
                          np.arange(3))
  data.write_array_record(str(tmp_path / 'train-1.ar'), images[3:],
                          np.arange(3, 7))
  return tmp_path


def _open(path_glob):
  d = _cfg(source='array_record', path=str(path_glob), mean=(0.5,), std=(0.5,))
  return d, data.open_source(d, 'train', image_size=8, channels=1)


def test_array_record_shards_read_in_order_and_name_their_file(shards):
  d, src = _open(shards / 'train-*.ar')
  assert len(src) == 7
  assert [src[i]['label'] for i in range(7)] == list(range(7))
  assert src.where(4) == (f'{shards / "train-1.ar"} record 1 (record 4 of '
                          f'array_record:{shards / "train-*.ar"})')
  (b,) = data.eval_batches(d, 'train', image_size=8, channels=1, batch_size=7)
  np.testing.assert_array_equal(
      data.denormalize(b['image'], d.mean, d.std)[:, 0, 0, 0], range(7))
  # A record of the second shard that is not a tf.train.Example.
  _shard(shards / 'train-2.ar', [b'\xff\xff not a proto'])
  d, src = _open(shards / 'train-*.ar')
  with pytest.raises(BadRecordError, match=(
      rf'^{shards / "train-2.ar"} record 0 \(record 7 of .*\): not a '
      r'serialized tf\.train\.Example')):
    list(data.eval_batches(d, 'train', image_size=8, channels=1,
                           batch_size=4))


@pytest.mark.parametrize('damage, why', [
    (lambda b: b[:len(b) // 2], 'truncated or corrupt'),
    (lambda b: bytes(range(256)) * 20, 'truncated or corrupt'),
    (lambda b: b'', 'empty'),
], ids=['cut in half', 'garbage', 'empty'])
def test_unreadable_shard_is_named_when_opened(shards, damage, why):
  good = (shards / 'train-1.ar').read_bytes()
  (shards / 'train-1.ar').write_bytes(damage(good))
  # Unchecked, ArrayRecord would read this shard as 0 records: data lost.
  with pytest.raises(ValueError, match=(
      rf'^config\.data\.path=.*: {shards / "train-1.ar"}: cannot be opened '
      rf'as an ArrayRecord shard: .*{why}')):
    _open(shards / 'train-*.ar')


def test_corrupt_record_is_named_when_read(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  payloads = [_png(x) for x in images]  # noise: stored verbatim, uncompressed
  raw = bytearray(_shard(tmp_path / 'train-0.ar', payloads).read_bytes())
  at = raw.find(payloads[1][100:164])
  assert at > 0
  raw[at + 500] ^= 0xFF  # inside record 1: the index and footer stay readable
  (tmp_path / 'train-0.ar').write_bytes(bytes(raw))
  d = _cfg(source='array_record', path=str(tmp_path / 'train-*.ar'),
           record_format='image_bytes')
  with pytest.raises(BadRecordError, match=(
      rf'^{tmp_path / "train-0.ar"} record 1 \(record 1 of .*\): cannot be '
      r'read \(RuntimeError: Corrupted .*hash mismatch')):
    list(data.eval_batches(d, 'train', image_size=32, channels=3,
                           batch_size=3))


# ---------------------------------------------------------- worker processes

_SCRIPT = r'''
import json, multiprocessing, os, signal, sys, time

import ml_collections
import numpy as np

from mae_jax import data
from mae_jax.data import workers as data_workers


class ExitsInWorkers(data.Source):
  """Reading record 5 in a worker process ends it with status 0."""
  name = 'exits:train'

  def __len__(self):
    return 16

  def __getitem__(self, i):
    if i == 5 and multiprocessing.parent_process() is not None:
      os._exit(0)
    return {'image': np.full((8, 8, 3), i, np.uint8), 'label': i}


def main(scenario, data_config):
  d = ml_collections.ConfigDict(json.loads(data_config))
  if scenario == 'exit0':
    data.SOURCES['exits'] = lambda *_, **__: ExitsInWorkers()
    d.source = 'exits'
    data_workers._GONE_GRACE_S = 1.0  # short waits: a quick test
    data_workers._DEAD_CLOSE_WAIT_S = 0.5
  it = data.build_train_iterator(d, image_size=8, channels=3, global_batch=4,
                                 seed=0)
  out = {'batches': 0}
  if scenario == 'kill':
    next(it)
    workers = [p for p in multiprocessing.active_children()
               if p.name.startswith('grain')]
    out['workers'] = len(workers)
    os.kill(workers[0].pid, signal.SIGKILL)  # what the OOM killer sends
  start = time.monotonic()
  try:
    for _ in range(100):
      next(it)
      out['batches'] += 1
  except Exception as e:
    out.update(type=type(e).__name__, message=str(e))
  out['seconds'] = time.monotonic() - start
  start = time.monotonic()
  it.close()
  out['close_seconds'] = time.monotonic() - start
  print(json.dumps(out))


if __name__ == '__main__':  # grain's workers import this file again
  main(*sys.argv[1:])
'''


def _run_scenario(tmp_path, scenario, **data_config):
  """Runs _SCRIPT's `scenario` with 2 workers; returns what it printed."""
  d = _cfg(worker_count=2, read_threads=1, synthetic_examples=64,
           **data_config)
  script = tmp_path / 'scenario.py'
  script.write_text(_SCRIPT)
  out = subprocess.run([sys.executable, str(script), scenario, d.to_json()],
                       cwd=ROOT, env=subprocess_env(), capture_output=True,
                       text=True, timeout=90, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_worker_exception_reaches_the_caller_naming_the_file(tmp_path):
  for i in range(6):
    Image.fromarray(np.full((12, 12, 3), i, np.uint8)).save(
        tmp_path / f'{i}.png')
  (tmp_path / '3.png').write_bytes(b'garbage')
  r = _run_scenario(tmp_path, 'bad_file', source='folder', path=str(tmp_path),
                    crop_scale=(0.5, 1.0))
  assert r['type'] == 'BadRecordError', r
  assert r['message'].startswith(f'folder:{tmp_path} record 3 ')
  assert f'({tmp_path / "3.png"}): cannot decode 7 image bytes' in r['message']


def test_killed_worker_is_reported_not_waited_on(tmp_path):
  r = _run_scenario(tmp_path, 'kill')
  assert r['workers'] == 2 and r['type'] == 'DataWorkerError', r
  assert 'was killed by signal 9 (SIGKILL)' in r['message']
  assert 'config.data.worker_count (now 2)' in r['message']
  assert r['seconds'] < 10 and r['close_seconds'] < 10, r


def test_worker_that_exits_quietly_is_reported_not_waited_on(tmp_path):
  # grain itself would wait forever: it only checks for a failure status.
  r = _run_scenario(tmp_path, 'exit0')
  assert r['type'] == 'DataWorkerError', r
  assert 'exited while the run still needed it' in r['message']
  assert r['seconds'] < 10 and r['close_seconds'] < 10, r


def test_grains_own_report_of_a_killed_worker_gets_the_same_wording(tmp_path):
  """The race the test above may lose: grain reports the dead worker before
  we have seen its pid. The message still says how it died and what to do."""
  from mae_jax.data import workers

  def dead_pipeline():
    raise RuntimeError('Worker process was terminated unexpectedly with exit '
                       'code -9. Search the logs above for the reason.')
    yield  # pylint: disable=unreachable

  pulled = workers.Supervised(dead_pipeline(), workers.WorkerWatch(
      str(tmp_path), count=2), advice='Lower config.data.worker_count.')
  with pytest.raises(workers.DataWorkerError,
                     match=r'a data worker process was killed by signal 9 '
                     r'\(SIGKILL\).*Lower config.data.worker_count'):
    pulled.next()
  pulled.close()
