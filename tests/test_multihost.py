"""Two processes on localhost (jax.distributed, gloo CPU collectives, 2
devices each): they train, checkpoint, restart and resume like one process,
reading disjoint shares of every global batch."""

import json
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from mae_jax import train
from conftest import ROOT, load_config, subprocess_env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _run_two_processes(workdir, *extra):
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'mae_jax.main', '--config=configs/test.py:steps=4',
       f'--workdir={workdir}', f'--coordinator_address=localhost:{port}',
       '--num_processes=2', f'--process_id={i}',
       '--config.data.trace_indices=True', *extra],
      cwd=ROOT, env=subprocess_env(devices=2), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multihost')
  first = _run_two_processes(root / 'multi', '--config.stop_at_step=2')
  second = _run_two_processes(root / 'multi')
  c = load_config('test', 'steps=4')
  c.data.trace_indices = True
  train.train(c, str(root / 'single'))
  return root, first, second


def test_resumes_after_restart_with_both_processes(runs):
  root, first, second = runs
  assert 'stopped at step 2 of 4' in first[0]
  assert 'resuming at step 2' in second[0]
  data_state = sorted(p.name for p in (root / 'multi' / 'checkpoints' / '2' /
                                       'data').glob('process_*.json'))
  assert data_state == ['process_0-of-2.json', 'process_1-of-2.json']


def test_two_processes_train_like_one(runs):
  root, _, _ = runs
  multi = [r for r in _read_jsonl(root / 'multi' / 'metrics.jsonl') if 'loss' in r]
  single = [r for r in _read_jsonl(root / 'single' / 'metrics.jsonl') if 'loss' in r]
  assert [r['step'] for r in multi] == [1, 2, 3, 4]  # only process 0 logs
  np.testing.assert_allclose([r['loss'] for r in multi],
                             [r['loss'] for r in single], rtol=1e-5)


def test_processes_read_disjoint_shares_of_each_batch(runs):
  root, _, _ = runs
  traces = [_read_jsonl(root / 'multi' / 'data_trace' / f'process_{i}-of-2.jsonl')
            for i in range(2)]
  single = _read_jsonl(root / 'single' / 'data_trace' / 'process_0-of-1.jsonl')
  assert [t['step'] for t in traces[0]] == [1, 2, 3, 4]
  for a, b, one in zip(traces[0], traces[1], single):
    assert len(a['index']) == len(b['index']) == 4
    assert not set(a['index']) & set(b['index'])
    assert a['index'] + b['index'] == one['index']


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  port = _free_port()
  procs = []
  for i in range(2):
    log = open(tmp_path / f'log{i}.txt', 'w')
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'mae_jax.main', '--config=configs/test.py:steps=500',
         f'--workdir={tmp_path / "run"}', f'--coordinator_address=localhost:{port}',
         '--num_processes=2', f'--process_id={i}', '--config.progress=True',
         '--config.checkpoint_every=1000'],
        cwd=ROOT, env=subprocess_env(devices=2), text=True,
        stdout=subprocess.PIPE if i == 0 else log, stderr=subprocess.STDOUT))
  for line in procs[0].stdout:  # the preempted host: process 0
    if line.startswith('step 3/500'):
      procs[0].terminate()  # SIGTERM
      break
  out = procs[0].communicate(timeout=300)[0]
  assert procs[1].wait(timeout=300) == 0, (tmp_path / 'log1.txt').read_text()[-3000:]
  assert procs[0].returncode == 0, out[-3000:]
  assert 'SIGTERM: saved step' in out
  steps = [p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir()]
  assert len(steps) == 1 and 3 <= int(steps[0]) < 500
  data = sorted(p.name for p in (tmp_path / 'run' / 'checkpoints' / steps[0] /
                                 'data').iterdir() if p.suffix == '.json')
  assert data == ['process_0-of-2.json', 'process_1-of-2.json']


def test_a_killed_process_stops_the_other_with_a_message(tmp_path):
  """kill -9 of process 1 (as the OOM killer does): process 0 does not train
  on alone or hang. Either jax's coordination service notices first and ends
  it (its own fatal message, SIGABRT), or our barrier at the next sync point
  does, within peer_timeout_s."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'mae_jax.main', '--config=configs/test.py:steps=5000',
       f'--workdir={tmp_path / "run"}', f'--coordinator_address=localhost:{port}',
       '--num_processes=2', f'--process_id={i}', '--config.progress=True',
       '--config.peer_timeout_s=5', '--heartbeat_timeout_s=5'],
      cwd=ROOT, env=subprocess_env(devices=2), text=True,
      stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
      stderr=subprocess.STDOUT) for i in range(2)]
  lines = []
  for line in procs[0].stdout:
    lines.append(line)
    if line.startswith('step 3/5000'):
      procs[1].kill()
      break
  out = ''.join(lines) + procs[0].communicate(timeout=120)[0]
  procs[1].wait(timeout=60)
  if procs[0].returncode == -signal.SIGABRT:
    assert 'JAX distributed service detected fatal errors' in out, out[-3000:]
    return
  assert procs[0].returncode == 1, out[-3000:]
  errors = [l for l in out.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, out[-3000:]
  assert 'not every process reached step' in errors[0]
  assert 'one was killed (out of memory?) or hangs' in errors[0]
  assert int(errors[0].split('reached step ')[1].split()[0]) < 1000
