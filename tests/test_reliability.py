"""Fault injection: every failure class of docs/reliability.md ends in one
clear message, never a hang, and loses nothing that was written.

Real faults where the machine allows them: a full and a read-only file system
come from a tmpfs in a private mount namespace (`unshare -Urm`, no root
needed), processes are really killed and signalled. Data-worker and
ArrayRecord faults are in test_data_faults.py.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import mae_jax
from mae_jax import errors, train
from conftest import ROOT, load_config, subprocess_env

MAIN = [sys.executable, '-m', 'mae_jax.main']


def _contents(workdir):
  """Every file's bytes except the lock's (it names the last process to try)."""
  return {str(p.relative_to(workdir)): p.read_bytes()
          for p in workdir.rglob('*') if p.is_file() and p.name != '.lock'}


def _records(workdir):
  """metrics.jsonl, parsed as strict JSON (bare NaN / Infinity rejected)."""
  def strict(token):
    raise ValueError(f'non-standard JSON token {token}')
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line, parse_constant=strict) for line in f]


def _steps(workdir):
  return [r['step'] for r in _records(workdir) if 'loss' in r]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished 4-step run with checkpoints at steps 2 and 4."""
  path = tmp_path_factory.mktemp('trained') / 'w'
  train.train(load_config('test', 'steps=4'), str(path))
  assert sorted(os.listdir(path / 'checkpoints')) == ['2', '4']
  return path


@pytest.fixture
def workdir(trained, tmp_path):
  """A private copy of `trained`."""
  path = tmp_path / 'w'
  shutil.copytree(trained, path)
  return path


def _run_cli(args, timeout=120, **kw):
  return subprocess.run(args, cwd=ROOT, env=subprocess_env(), text=True,
                        capture_output=True, timeout=timeout, **kw)


def _one_line_error(out, rc=1):
  assert out.returncode == rc, out.stderr[-2000:]
  assert 'Traceback' not in out.stderr, out.stderr[-3000:]
  lines = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, out.stderr[-3000:]
  return lines[0]


# ------------------------------------------------ 1. checks before writing


def test_rejected_resume_changes_nothing(workdir):
  """Bad data.mean for the model's channels: refused before config.json."""
  before = _contents(workdir)
  c = load_config('test', 'steps=6')
  c.data.mean, c.data.std = (0.5, 0.5), (0.2, 0.2)
  with pytest.raises(errors.ConfigError, match=r'config.data.mean=\(0.5, 0.5\)'):
    train.train(c, str(workdir))
  assert _contents(workdir) == before


def test_missing_eval_split_is_found_before_training(tmp_path):
  from PIL import Image
  for name in ('a', 'b'):
    (tmp_path / 'imgs' / 'train' / name).mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(
        tmp_path / 'imgs' / 'train' / name / 'x.png')
  c = load_config('test')
  c.data.source, c.data.path = 'folder', str(tmp_path / 'imgs')
  c.evals.knn.enabled = True
  with pytest.raises(errors.ConfigError, match="evaluator knn reads split 'test'"):
    train.train(c, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_total_steps_below_the_checkpoint_is_refused(workdir):
  before = _contents(workdir)
  with pytest.raises(errors.ConfigError, match='at step 4, past the end'):
    train.train(load_config('test', 'steps=3'), str(workdir))
  assert _contents(workdir) == before


def test_too_little_free_space_for_a_checkpoint_is_refused(tmp_path, monkeypatch):
  import shutil as shutil_module
  usage = shutil_module.disk_usage(tmp_path)
  monkeypatch.setattr(shutil_module, 'disk_usage',
                      lambda path: usage._replace(free=1000))
  with pytest.raises(errors.WorkdirError, match=r'GiB free, but one checkpoint '
                     'needs about'):
    train.train(load_config('test'), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


# ------------------------------------------- 2. failed saves never hang

_UNSHARE_OK = shutil.which('unshare') and subprocess.run(
    ['unshare', '-Urm', 'true'], capture_output=True).returncode == 0
needs_namespaces = pytest.mark.skipif(
    not _UNSHARE_OK, reason='needs `unshare -Urm` (user + mount namespaces) '
    'for a real full / read-only file system')


def _in_namespace(script: str, tmp_path, timeout=240):
  """Runs a bash script as root of a private mount namespace; $PY is the
  test's Python, $FS a fresh mount point, $OUT a folder outside it."""
  fs = tmp_path / 'fs'
  fs.mkdir()
  env = subprocess_env()
  env.update(PY=sys.executable, FS=str(fs), OUT=str(tmp_path))
  return subprocess.run(['unshare', '-Urm', 'bash', '-euo', 'pipefail', '-c',
                         textwrap.dedent(script)], cwd=ROOT, env=env,
                        text=True, capture_output=True, timeout=timeout)


def test_metric_writer_closes_everything_when_a_flush_fails(tmp_path):
  """A full disk fails TensorBoard's final flush: metrics.jsonl is still
  closed, the error is raised, and tensorboardX's writer thread is stopped
  (left waiting, it printed a traceback at exit, after the one-line error)."""
  from mae_jax import metrics  # pylint: disable=g-import-not-at-top
  writer = metrics.MetricWriter(str(tmp_path), progress=False)
  writer.write(1, {'loss': 1.0})
  (file_writer,) = writer._tb.all_writers.values()
  events = file_writer.event_writer
  worker = events._worker

  def full(*args):
    raise OSError(28, 'No space left on device')

  events._ev_writer.flush = full
  with pytest.raises(OSError, match='No space left'):
    writer.close()
  assert writer._jsonl.closed and not worker.is_alive()
  assert events._closed  # tensorboardX's atexit hook does not flush again


@needs_namespaces
def test_disk_full_during_a_save_stops_with_one_message(tmp_path):
  """A tmpfs with room for about two checkpoints; the run saves every 2
  steps and keeps them all, so a later save fails with ENOSPC."""
  out = _in_namespace('''
      mount -t tmpfs -o size=1300k tmpfs "$FS"
      set +e
      "$PY" -m mae_jax.main --config=test:steps=40 --workdir="$FS/w" \\
          --config.keep_checkpoints=20 2> "$OUT/err"
      echo "rc=$?"
      set -e
      cat "$OUT/err" >&2
      "$PY" -c "import mae_jax; print('loaded step', mae_jax.load('$FS/w').step)"
      ''', tmp_path)
  assert 'rc=1' in out.stdout, out.stdout + out.stderr[-3000:]
  err = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert len(err) == 1 and 'Traceback' not in out.stderr, out.stderr[-3000:]
  assert 'cannot save checkpoint step' in err[0]
  assert 'No space left on device (errno 28)' in err[0]
  assert 'The checkpoints already saved are intact (steps [2' in err[0]
  intact = json.loads(err[0].split('(steps ')[1].split(')')[0])
  assert f'loaded step {intact[-1]}' in out.stdout  # the latest one restores


@needs_namespaces
def test_read_only_workdir_is_refused_before_anything(tmp_path):
  out = _in_namespace('''
      mount -t tmpfs -o size=8m tmpfs "$FS"
      "$PY" -m mae_jax.main --config=test:steps=2 --workdir="$FS/w" > /dev/null
      mount -o remount,ro "$FS"
      for w in "$FS/w" "$FS/new"; do
        set +e
        "$PY" -m mae_jax.main --config=test:steps=4 --workdir="$w"
        echo "rc=$?"
        set -e
      done
      ls "$FS/w/checkpoints"
      ''', tmp_path)
  assert out.stdout.count('rc=1') == 2, out.stdout + out.stderr[-3000:]
  err = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert len(err) == 2 and 'Traceback' not in out.stderr, out.stderr
  assert all('is not writable (read-only file system' in e for e in err)
  assert out.stdout.split()[-1] == '2'  # the checkpoint is still there


def test_stalled_save_stops_the_run_within_the_timeout(tmp_path, monkeypatch):
  release = threading.Event()
  real_wait = ocp.CheckpointManager.wait_until_finished

  def stalled(self):
    release.wait()  # a storage system that never answers
    return real_wait(self)

  monkeypatch.setattr(ocp.CheckpointManager, 'wait_until_finished', stalled)
  c = load_config('test', 'steps=4')
  c.checkpoint_timeout_s = 0.5
  try:
    with pytest.raises(errors.CheckpointSaveError,
                       match=r'step 2 .*did not finish within 0.5 s'):
      train.train(c, str(tmp_path))
  finally:
    release.set()


# ------------------------------------------------ 3. damaged checkpoints


def _truncate_largest_array(step_dir):
  files = sorted((step_dir / 'state').rglob('d/*'), key=lambda p: p.stat().st_size)
  with open(files[-1], 'r+b') as f:
    f.truncate(100)


DAMAGE = {
    'truncated array': (_truncate_largest_array, "item 'state' cannot be read"),
    'missing item': (lambda d: shutil.rmtree(d / 'data'), "item 'data' is missing"),
    'bad meta JSON': (lambda d: (d / 'meta' / 'metadata').write_text('{"step":'),
                      "item 'meta' cannot be read"),
    'bad data JSON': (lambda d: (d / 'data' / 'process_0-of-1.json').write_text('{'),
                      "item 'data' is not valid JSON"),
}


@pytest.mark.parametrize('kind', DAMAGE)
def test_damaged_checkpoint_names_step_and_item(workdir, kind):
  damage, message = DAMAGE[kind]
  damage(workdir / 'checkpoints' / '4')
  before = _contents(workdir)
  with pytest.raises(errors.CheckpointError, match=(
      f"checkpoint step 4 in .* is damaged: {message}.*Earlier checkpoints: "
      r"\[2\]; resume from one with --config.resume_step=2")):
    train.train(load_config('test', 'steps=6'), str(workdir))
  with pytest.raises(errors.CheckpointError, match=f'{message}.*step=2'):
    mae_jax.load(str(workdir))
  assert _contents(workdir) == before


def test_resume_step_recovers_and_sets_the_rest_aside(workdir):
  _truncate_largest_array(workdir / 'checkpoints' / '4')
  (workdir / 'checkpoints' / '6.orbax-checkpoint-tmp-1234').mkdir()
  c = load_config('test', 'steps=6')
  c.resume_step = 2
  train.train(c, str(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4', '6']
  assert _steps(workdir) == [1, 2, 3, 4, 5, 6]  # no step twice
  [kept] = os.listdir(workdir / 'history')
  assert kept.endswith('_step_2')
  aside = workdir / 'history' / kept
  assert os.listdir(aside / 'checkpoints') == ['4']  # damaged, but kept
  assert [r['step'] for r in _records(aside) if 'loss' in r] == [3, 4]
  assert (aside / 'config.json').exists()  # total_steps changed 4 -> 6
  assert mae_jax.load(str(workdir)).step == 6


def test_evaluate_cli_gives_the_same_one_line_message(workdir):
  DAMAGE['bad meta JSON'][0](workdir / 'checkpoints' / '4')
  out = _run_cli([sys.executable, '-m', 'mae_jax.evaluate',
                  f'--workdir={workdir}', '--evals=reconstruction'])
  line = _one_line_error(out)
  assert "checkpoint step 4" in line and "item 'meta'" in line and '--step=2' in line


# -------------------------------------------- 4. recovering from divergence


def test_divergence_resumes_from_an_earlier_step_with_new_hyperparameters(tmp_path):
  c = load_config('test', 'steps=12')
  c.checkpoint_every, c.stop_at_step = 1, 4  # 4 good steps
  train.train(c, str(tmp_path))
  c.stop_at_step, c.optim.base_lr = 0, 1e32  # then the lr explodes
  with pytest.raises(errors.NonFiniteLossError,
                     match=r'non-finite loss at step (\d+).*--config.resume_step=') as e:
    train.train(c, str(tmp_path))
  bad = int(str(e.value).split('at step ')[1].split()[0])
  assert bad > 4
  last = mae_jax.load(str(tmp_path))
  assert 4 <= last.step < bad
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(last.params))
  assert _records(tmp_path)[-1]['loss'] is None  # strict JSON: NaN -> null
  # The advice, followed in the same workdir: an earlier step, a lower lr,
  # clipping (which changes the optimizer chain) and a warmup.
  c.resume_step = 4
  c.optim.base_lr, c.optim.clip_norm, c.optim.warmup_steps = 1e-3, 1.0, 3
  train.train(c, str(tmp_path))
  assert _steps(tmp_path) == list(range(1, 13))  # each step once
  assert all(np.isfinite(r['loss']) for r in _records(tmp_path) if 'loss' in r)
  assert mae_jax.load(str(tmp_path)).step == 12


def test_non_finite_parameters_are_never_saved(tmp_path):
  """lr overflows float32: step 1's update makes the parameters infinite
  while step 1's loss (computed before the update) is still finite."""
  c = load_config('test', 'steps=4')
  c.optim.base_lr, c.optim.warmup_steps = 1e41, 0
  c.checkpoint_every = 1
  with pytest.raises(errors.NonFiniteLossError,
                     match='parameters became non-finite at step 1'):
    train.train(c, str(tmp_path))
  assert os.listdir(tmp_path / 'checkpoints') == []


# ------------------------------------------------ 5. one run per workdir


def _start_training(workdir, *extra, signal_at='step 3/'):
  """A CLI run that is past its first steps: returns (process, output so far)."""
  proc = subprocess.Popen(
      [*MAIN, '--config=test:steps=500', f'--workdir={workdir}',
       '--config.progress=True', '--config.checkpoint_every=1000', *extra],
      cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if signal_at in line:
      break
  return proc, lines


def test_second_run_is_refused_and_a_killed_run_leaves_no_stuck_lock(tmp_path):
  proc, _ = _start_training(tmp_path)
  try:
    with pytest.raises(errors.WorkdirError,
                       match=f'in use by another run \\(pid {proc.pid} on'):
      train.train(load_config('test', 'steps=4'), str(tmp_path))
  finally:
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait(timeout=60)
  result = train.train(load_config('test', 'steps=4'), str(tmp_path))
  assert result['step'] == 4
  assert _steps(tmp_path) == [1, 2, 3, 4]  # the killed run's records set aside


# ------------------------------------------------------------- 6. signals


def test_ctrl_c_saves_like_sigterm(tmp_path):
  proc, lines = _start_training(tmp_path)
  proc.send_signal(signal.SIGINT)
  out = ''.join(lines) + proc.stdout.read()
  assert proc.wait(timeout=120) == 0, out
  assert 'SIGINT: saved step' in out
  [saved] = os.listdir(tmp_path / 'checkpoints')
  assert int(saved) >= 3


def test_second_ctrl_c_aborts_at_once(tmp_path):
  proc, lines = _start_training(tmp_path)
  proc.send_signal(signal.SIGINT)
  for line in proc.stdout:  # the first one was seen: it is saving
    lines.append(line)
    if line.startswith('Ctrl-C: saving'):
      break
  proc.send_signal(signal.SIGINT)
  out = ''.join(lines) + proc.stdout.read()
  assert proc.wait(timeout=60) == 130, out
  assert 'Second Ctrl-C: aborting now without saving.' in out
  assert 'Traceback' not in out


def test_sigterm_during_start_up_exits_cleanly(workdir):
  before = _contents(workdir)
  proc = subprocess.Popen(
      [*MAIN, '--config=test:steps=6', f'--workdir={workdir}', '--verbosity=0'],
      cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  lines = [proc.stdout.readline()]  # the first log line: checks under way
  proc.send_signal(signal.SIGTERM)
  out = ''.join(lines) + proc.stdout.read()
  assert proc.wait(timeout=60) == 0, out
  assert 'SIGTERM during start-up: stopped before the first training step' in out
  assert 'Traceback' not in out
  assert _contents(workdir) == before


# ---------------------------------------------------------------- 7. data


def test_resume_with_another_worker_count_continues_exactly(trained, tmp_path):
  c = load_config('test', 'steps=4')
  c.stop_at_step = 2
  train.train(c, str(tmp_path))
  c.stop_at_step, c.data.worker_count = 0, 2
  train.train(c, str(tmp_path))
  losses = lambda w: [r['loss'] for r in _records(w) if 'loss' in r]
  assert losses(tmp_path) == losses(trained)  # bitwise: the same batches


# ------------------------------------------------- 8. error presentation


def _write(path, text):
  path.write_text(text)
  return str(path)


@pytest.mark.parametrize('make_args,message,rc', [
    (lambda t: ['--config=nope'], "no file 'nope' and no config named 'nope'", 2),
    (lambda t: [f'--config={_write(t / "c.py", "def get_config(:")}'],
     'c.py line 1: invalid syntax', 2),
    (lambda t: [f'--config={_write(t / "c.py", "X = 1")}'],
     'defines no get_config() function', 2),
    (lambda t: ['--config=test:stepz=3'],
     "config argument 'stepz=3': expected KEY=VALUE with KEY one of ['steps']", 2),
    (lambda t: ['--config=test', '--config.model.image_sise=3'],
     '--config.model.image_sise: no such config key; did you mean '
     '--config.model.image_size?', 2),
    (lambda t: ['--config=test', '--config.batch_size=eight'],
     "--config.batch_size=eight: invalid literal for int()", 2),
    (lambda t: ['--config=test', '--config.model.image_size=(16,0)'],
     'config.model.image_size=(16, 0): must be a positive int', 1),
    (lambda t: ['--config=test', f'--workdir={_write(t / "f", "")}'],
     'is a file; give a directory', 1),
])
def test_cli_failures_are_one_line(tmp_path, make_args, message, rc):
  args = make_args(tmp_path)
  if not any(a.startswith('--workdir') for a in args):
    args.append(f'--workdir={tmp_path / "w"}')
  line = _one_line_error(_run_cli([*MAIN, *args]), rc)
  assert message in line
  assert not (tmp_path / 'w').exists()


def test_traceback_on_request(tmp_path):
  env = subprocess_env()
  env['MAE_JAX_TRACEBACK'] = '1'
  out = subprocess.run([*MAIN, '--config=test', '--config.masking.ratio=2.0',
                        f'--workdir={tmp_path}'], cwd=ROOT, env=env, text=True,
                       capture_output=True, timeout=120)
  assert out.returncode == 1
  assert 'Traceback' in out.stderr and 'ConfigError' in out.stderr


def test_evaluate_cli_unknown_evaluator_is_one_line(trained):
  out = _run_cli([sys.executable, '-m', 'mae_jax.evaluate',
                  f'--workdir={trained}', '--evals=linear_probe,foo'])
  assert "unknown evaluators ['foo']" in _one_line_error(out)
