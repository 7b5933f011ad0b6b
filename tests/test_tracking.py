"""W&B and MLflow trackers, for real and offline: a run that is resumed on the
same workdir continues one tracker run, with the metric histories and keys of
metrics.jsonl and the config as params. No test touches the network."""

import json
import pathlib
import socket
import struct
import sys
import time
import types

import pytest

from mae_jax import tracking
from mae_jax.config import ConfigError
from conftest import load_config

_LOCAL_HOSTS = ('127.0.0.1', '::1', 'localhost', '0.0.0.0', '')


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
  """Records any connection to a non-local host (from any thread) and fails the
  test on it; points every W&B/MLflow directory and switch at tmp_path."""
  attempts = []
  real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

  def connect(sock, address):
    if (sock.family in (socket.AF_INET, socket.AF_INET6)
        and address[0] not in _LOCAL_HOSTS):
      attempts.append(address)
      raise OSError('tests must not use the network')
    return real_connect(sock, address)

  def getaddrinfo(host, *args, **kwargs):
    if host not in _LOCAL_HOSTS and host is not None:
      attempts.append(host)
      raise socket.gaierror('tests must not use the network')
    return real_getaddrinfo(host, *args, **kwargs)

  monkeypatch.setattr(socket.socket, 'connect', connect)
  monkeypatch.setattr(socket, 'getaddrinfo', getaddrinfo)
  home = tmp_path / 'home'
  for name, value in dict(
      WANDB_MODE='offline', WANDB_SILENT='true', WANDB_CONSOLE='off',
      WANDB_ERROR_REPORTING='false', WANDB_DIR=home, WANDB_CONFIG_DIR=home,
      WANDB_CACHE_DIR=home, WANDB_DATA_DIR=home,
      MLFLOW_DISABLE_TELEMETRY='true', DO_NOT_TRACK='true').items():
    monkeypatch.setenv(name, str(value))
  monkeypatch.delenv('WANDB_API_KEY', raising=False)
  yield
  assert not attempts, f'network access attempted: {attempts}'


def _config(**tracker_overrides):
  c = load_config('test')
  if 'tracking' not in c:  # until config.py carries the section
    c.tracking = tracking.default_config()
  for key, value in tracker_overrides.items():
    section, name = key.split('__')
    c.tracking[section][name] = value
  return c


def _records(steps):
  """What MetricWriter writes: None for non-finite, evaluator keys with '/',
  and a value that is not a number."""
  out = []
  for s in steps:
    r = {'step': s, 'loss': 1.0 / s, 'learning_rate': 1e-4 * s,
         'examples_per_sec': 100.0 + s, 'grad_norm': None if s == 2 else 0.5 * s,
         'bad_records_skipped': s // 2, 'data_source': 'synthetic'}
    if s % 3 == 0:
      r.update({'linear_probe/accuracy': 0.1 * s, 'knn/acc@1': 0.05 * s})
    out.append(r)
  return out


def _histories(records):
  """{key: [(step, value)]} of what a tracker must log."""
  out = {}
  for r in records:
    for k, v in r.items():
      if k != 'step' and isinstance(v, (int, float)):
        out.setdefault(k, []).append((r['step'], v))
  return out


def _session(config, workdir, steps):
  """One start of the train loop on `workdir`: build, write, close."""
  [tracker] = tracking.build(config, str(workdir), enabled=True)
  for r in _records(steps):
    tracker.write(r['step'], r)
  tracker.close()
  return tracker.run_id


def test_mlflow_resumed_run_is_one_run_with_the_metrics_jsonl_histories(tmp_path):
  from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
  c = _config(mlflow__enabled=True)
  c.stop_at_step = 3
  tracking.check_config(c)
  ids = [_session(c, tmp_path, [1, 2, 3])]
  c.stop_at_step = 6  # a resume that changes a param MLflow would refuse
  ids.append(_session(c, tmp_path, [4, 5, 6]))

  state = json.loads((tmp_path / 'tracking.json').read_text())
  assert set(ids) == {state['mlflow']['run_id']}
  client = MlflowClient(tracking_uri=f'sqlite:///{tmp_path}/mlflow.db')
  exp = client.get_experiment_by_name('mae_jax')
  runs = client.search_runs([exp.experiment_id])
  assert [r.info.run_id for r in runs] == ids[:1]
  run = runs[0]
  assert run.info.status == 'FINISHED'
  assert run.info.run_name == tmp_path.name

  want = _histories(_records(range(1, 7)))
  want['knn/acc_1'] = want.pop('knn/acc@1')  # MLflow refuses '@'
  assert set(run.data.metrics) == set(want)
  for key, points in want.items():
    history = client.get_metric_history(run.info.run_id, key)
    got = sorted((m.step, m.value) for m in history)
    assert got == [(s, float(v)) for s, v in points], key

  params = run.data.params
  assert params == tracking.mlflow_params({**c.to_dict(), 'stop_at_step': 3})
  assert params['model.variant'] == c.model.variant
  assert params['data.mean'] == repr(tuple(c.data.mean))
  assert params['stop_at_step'] == '3'  # the first value stays


def test_mlflow_names_and_params_follow_mlflow_rules():
  assert tracking.mlflow_key('linear_probe/accuracy') == 'linear_probe/accuracy'
  assert tracking.mlflow_key('loss/recon') == 'loss/recon'
  assert tracking.mlflow_key('knn/top-1 (k=20)') == 'knn/top-1 _k_20_'
  assert tracking.mlflow_key('a:b') == 'a_b'
  assert tracking.mlflow_key('/a//./b/') == 'a/b'
  params = tracking.mlflow_params(
      {'m': {'v': 'B/16', 'n': 3, 't': (1, 2), 'e': {}}, 'long': 'x' * 9000})
  assert params == {'m.v': 'B/16', 'm.n': '3', 'm.t': '(1, 2)', 'm.e': '{}',
                    'long': 'x' * 497 + '...'}


def _wandb_records(path):
  """The protobuf records of an offline .wandb file: W&B's leveldb-style log
  (7-byte file header; 32 KiB blocks of [crc32 u32, length u16, type u8] chunks,
  types FULL=1 FIRST=2 MIDDLE=3 LAST=4). wandb 0.31 has no Python reader."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  data = pathlib.Path(path).read_bytes()
  assert data[:4] == b':W&B'
  block, pos, chunk, out = 32768, 7, b'', []
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # the block's zero-filled tail
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
    if pos + 7 + length > len(data):  # still being written
      break
    chunk += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(chunk)
      out.append(record)
      chunk = b''
  return out


def _finished_wandb_records(path, timeout=30.0):
  """finish() returns before wandb-core has flushed the file (it does by
  process exit): wait for the run's closing 'exit' record."""
  deadline = time.monotonic() + timeout
  while True:
    records = _wandb_records(path)
    if records and records[-1].WhichOneof('record_type') == 'exit':
      return records
    assert time.monotonic() < deadline, f'{path} did not get its exit record'
    time.sleep(0.05)


def test_wandb_offline_resumed_run_keeps_its_id_keys_and_config(tmp_path):
  c = _config(wandb__enabled=True, wandb__mode='offline', wandb__tags=('test',))
  tracking.check_config(c)
  ids = [_session(c, tmp_path, steps) for steps in ([1, 2, 3], [4, 5, 6])]
  run_id = json.loads((tmp_path / 'tracking.json').read_text())['wandb']['run_id']
  assert ids == [run_id, run_id]

  # One offline directory per start, both for the same run id.
  files = sorted((tmp_path / 'wandb').glob('offline-run-*/run-*.wandb'))
  assert [f.name for f in files] == [f'run-{run_id}.wandb'] * 2
  history, runs = {}, []
  for f in files:
    for record in _finished_wandb_records(f):
      kind = record.WhichOneof('record_type')
      if kind == 'run':
        runs.append(record.run)
      elif kind == 'history':
        for item in record.history.item:
          key = item.key or '/'.join(item.nested_key)
          if not key.startswith('_'):
            history.setdefault(key, []).append(
                (record.history.step.num, json.loads(item.value_json)))
  assert history == _histories(_records(range(1, 7)))
  assert [(r.run_id, r.project, r.display_name, list(r.tags)) for r in runs] == [
      (run_id, 'mae_jax', tmp_path.name, ['test'])] * 2
  config = {i.key: json.loads(i.value_json) for i in runs[0].config.update}
  assert config['model']['variant'] == c.model.variant
  assert config['data']['mean'] == list(c.data.mean)


def test_a_failing_tracker_warns_once_and_training_goes_on(tmp_path, monkeypatch,
                                                           capsys):
  """A recording stand-in for wandb whose log fails (a server outage)."""
  calls = []

  class Run:
    def log(self, metrics, step):
      calls.append(step)
      raise ConnectionError('server down')

    def finish(self):
      calls.append('finish')

  fake = types.ModuleType('wandb')
  fake.init = lambda **kwargs: calls.append(kwargs) or Run()
  monkeypatch.setitem(sys.modules, 'wandb', fake)
  c = _config(wandb__enabled=True)
  [tracker] = tracking.build(c, str(tmp_path), enabled=True)
  for r in _records([1, 2, 3]):
    tracker.write(r['step'], r)
  tracker.close()
  init = calls[0]
  assert (init['id'], init['resume'], init['dir'], init['mode']) == (
      tracker.run_id, 'allow', str(tmp_path), 'online')
  assert init['config'] == c.to_dict()
  assert calls[1:] == [1, 2, 3, 'finish']
  assert capsys.readouterr().err.count('tracking: wandb could not log') == 1


def test_off_by_default_and_only_process_zero_tracks(tmp_path):
  c = _config()
  tracking.check_config(c)
  assert tracking.build(c, str(tmp_path), enabled=True) == []
  c.tracking.mlflow.enabled = True
  assert tracking.build(c, str(tmp_path), enabled=False) == []
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('overrides, hidden, match', [
    (dict(wandb__enabled=True), 'wandb',
     r"config\.tracking\.wandb\.enabled=True: needs the wandb package: "
     r"pip install 'mae_jax\[wandb\]'"),
    (dict(mlflow__enabled=True), 'mlflow',
     r"config\.tracking\.mlflow\.enabled=True: needs the mlflow package: "
     r"pip install 'mae_jax\[mlflow\]'"),
    (dict(mlflow__enabled=True), 'sqlalchemy',
     r"config\.tracking\.mlflow\.tracking_uri='': a database store .* needs "
     r"sqlalchemy and alembic"),
    (dict(wandb__enabled=True, wandb__mode='cloud'), None,
     r"config\.tracking\.wandb\.mode='cloud': allowed \('online', 'offline'\)"),
    (dict(mlflow__enabled=True, mlflow__experiment=''), None,
     r"config\.tracking\.mlflow\.experiment=''"),
])
def test_check_config_names_the_key(monkeypatch, overrides, hidden, match):
  if hidden:
    monkeypatch.setitem(sys.modules, hidden, None)  # as if not installed
  with pytest.raises(ConfigError, match=match):
    tracking.check_config(_config(**overrides))


def test_a_remote_mlflow_store_needs_no_sqlalchemy(monkeypatch):
  monkeypatch.setitem(sys.modules, 'sqlalchemy', None)
  tracking.check_config(_config(mlflow__enabled=True,
                                mlflow__tracking_uri='http://mlflow.example:5000'))


def test_an_unreadable_tracking_json_is_an_error_not_a_new_run(tmp_path):
  (tmp_path / 'tracking.json').write_text('{not json')
  with pytest.raises(ConfigError, match='tracking.json: unreadable'):
    tracking.build(_config(mlflow__enabled=True), str(tmp_path), enabled=True)


def test_mlflow_starts_a_new_run_when_the_stored_one_is_gone(tmp_path):
  """E.g. the workdir was copied without its store, or the run was deleted."""
  (tmp_path / 'tracking.json').write_text(json.dumps({'mlflow': {'run_id': 'f' * 32}}))
  run_id = _session(_config(mlflow__enabled=True), tmp_path, [1])
  assert run_id != 'f' * 32
  state = json.loads((tmp_path / 'tracking.json').read_text())
  assert state['mlflow']['run_id'] == run_id
