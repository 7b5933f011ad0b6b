"""End-to-end training on the tiny test config: the workdir contract, exact
resume, preemption, non-finite losses and refusing incompatible checkpoints."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import mae_jax
from mae_jax import config as config_lib
from mae_jax import train
from conftest import ROOT, load_config, subprocess_env


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _contents(workdir):
  """Every file's bytes, except the lock (it names the last process to take it)."""
  return {p: p.read_bytes() for p in workdir.rglob('*')
          if p.is_file() and p.name != '.lock'}


def _losses(workdir):
  return {r['step']: r['loss'] for r in _records(workdir) if 'loss' in r}


def test_run_writes_the_workdir_contract_and_learns(tmp_path):
  c = load_config('test', 'steps=40')
  c.optim.base_lr = 3.2e-2  # peak lr = 3.2e-2 * 8 / 256 = 1e-3
  c.optim.warmup_steps = 4
  c.checkpoint_every = 20
  c.evals.reconstruction.enabled = True
  result = train.train(c, str(tmp_path))
  recs = _records(tmp_path)
  steps = [r['step'] for r in recs if 'loss' in r]
  assert steps == list(range(1, 41))
  for r in recs[:-1]:
    assert {'step', 'loss', 'learning_rate', 'examples_per_sec'} <= set(r)
  losses = [r['loss'] for r in recs if 'loss' in r]
  assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
  assert max(r['learning_rate'] for r in recs if 'loss' in r) == pytest.approx(1e-3)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['20', '40']
  assert json.loads((tmp_path / 'config.json').read_text())['total_steps'] == 40
  assert any(p.startswith('events.out.tfevents') for p in os.listdir(tmp_path))
  assert os.listdir(tmp_path / 'images') == ['reconstruction_0000040.png']
  assert np.isfinite(result['reconstruction/loss'])
  assert not result['preempted']


def test_resume_is_exact(tmp_path):
  """6 straight steps == 3 steps, a new process state, 3 more steps."""
  straight, split = tmp_path / 'straight', tmp_path / 'split'
  c = load_config('test', 'steps=6')
  train.train(c, str(straight))
  c.stop_at_step = 3
  first = train.train(c, str(split))
  assert first['step'] == 3
  assert sorted(os.listdir(split / 'checkpoints')) == ['2', '3']
  c.stop_at_step = 0
  train.train(c, str(split))
  assert _losses(split) == _losses(straight)  # bitwise-equal floats
  a, b = mae_jax.load(str(straight)), mae_jax.load(str(split))
  assert a.step == b.step == 6
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_sigterm_saves_current_step_and_exits_cleanly(tmp_path):
  cmd = [sys.executable, '-m', 'mae_jax.main', '--config=configs/test.py:steps=500',
         f'--workdir={tmp_path}', '--config.progress=True',
         '--config.checkpoint_every=1000']
  proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  lines = []
  for line in proc.stdout:  # wait, by its own output, until training runs
    lines.append(line)
    if line.startswith('step 3/500'):
      proc.send_signal(signal.SIGTERM)
      break
  out = ''.join(lines) + proc.stdout.read()
  assert proc.wait(timeout=120) == 0, out
  assert 'SIGTERM: saved step' in out
  saved = [int(d) for d in os.listdir(tmp_path / 'checkpoints')]
  assert len(saved) == 1 and 3 <= saved[0] < 500, out
  # The same command continues from there.
  c = load_config('test', 'steps=500')
  c.stop_at_step = saved[0] + 1
  assert train.train(c, str(tmp_path))['step'] == saved[0] + 1


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  c = load_config('test', 'steps=20')
  c.optim.base_lr = 1e32
  c.optim.warmup_steps = 0
  c.checkpoint_every = 1
  with pytest.raises(train.NonFiniteLossError, match=r'non-finite loss at step (\d+)') as e:
    train.train(c, str(tmp_path))
  bad_step = int(str(e.value).split('at step ')[1].split()[0])
  good = mae_jax.load(str(tmp_path))
  assert good.step < bad_step
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(good.params))


BAD_CONFIGS = [
    ('masking.ratio', 1.0, 'config.masking.ratio=1.0'),
    ('masking.ratio', 0.0, 'open interval'),
    ('masking.ratio', 0.99, 'at least one must stay visible'),
    ('model.image_size', 18, 'config.model.image_size=18'),
    ('model.variant', 'Z/4', "model.variant='Z/4'"),
    ('model.decoder', '32d', "model.decoder='32d'"),
    ('model.dtype', 'float16', "config.model.dtype='float16'"),
    ('masking.name', 'tube', "masking.name='tube'"),
    ('target', 'hog', "target='hog'"),
    ('data.source', 'imagenet', "data.source='imagenet'"),
    ('total_steps', 0, 'total_steps'),
    ('optim.base_lr', -1.0, 'config.optim.base_lr'),
    ('log_every', 0, 'config.log_every'),
    ('mesh.data', 0, 'config.mesh.data=0'),
]


@pytest.mark.parametrize('key,value,message', BAD_CONFIGS)
def test_invalid_config_names_the_key_before_anything_runs(tmp_path, key,
                                                           value, message):
  c = load_config('test')
  section, _, leaf = key.rpartition('.')
  (c[section] if section else c)[leaf] = value
  workdir = tmp_path / 'w'
  with pytest.raises(config_lib.ConfigError, match=message.replace('(', r'\(')):
    train.train(c, str(workdir))
  assert not workdir.exists()  # nothing was written


def test_batch_must_divide_over_data_parallel_devices():
  c = load_config('test')
  c.batch_size = 6
  with pytest.raises(config_lib.ConfigError, match='data-parallel size 4'):
    config_lib.validate(c, num_devices=4)
  c.batch_size = 8
  config_lib.validate(c, num_devices=4)


def test_cli_reports_config_error_without_traceback(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'mae_jax.main', '--config=configs/test.py',
       f'--workdir={tmp_path}', '--config.masking.ratio=1.5'],
      cwd=ROOT, env=subprocess_env(), capture_output=True, text=True)
  assert out.returncode == 1
  assert 'error: config.masking.ratio=1.5: must be in the open interval (0, 1)' in out.stderr
  assert 'Traceback' not in out.stderr


def test_incompatible_checkpoint_is_refused_and_nothing_is_lost(tmp_path):
  c = load_config('test')
  c.stop_at_step = 2
  train.train(c, str(tmp_path))
  before = _contents(tmp_path)
  other = load_config('test')
  other.model.variant = 'mu/8'
  with pytest.raises(config_lib.ConfigError,
                     match="model.variant: checkpoint has 'mu/4', config has 'mu/8'"):
    train.train(other, str(tmp_path))
  other = load_config('test')
  other.model.cls_token = False
  with pytest.raises(config_lib.ConfigError, match='model.cls_token'):
    train.train(other, str(tmp_path))
  assert _contents(tmp_path) == before


def test_bad_records_are_named_or_skipped_and_counted(tmp_path):
  from PIL import Image
  folder = tmp_path / 'images'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(12):
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8)).save(
        folder / f'{i:02d}.png')
  (folder / '05.png').write_bytes(b'not a png')
  c = load_config('test', 'steps=3')
  c.data.source, c.data.path = 'folder', str(folder)
  c.data.eval_split = ''
  c.batch_size = 4
  with pytest.raises(mae_jax.data.transforms.BadRecordError, match='05.png'):
    train.train(c, str(tmp_path / 'strict'))
  c.data.skip_bad_records = True
  train.train(c, str(tmp_path / 'skip'))
  assert _records(tmp_path / 'skip')[-1]['bad_records_skipped'] == 1


def test_missing_split_is_a_config_error(tmp_path):
  from PIL import Image
  (tmp_path / 'imgs').mkdir()
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / 'imgs' / 'a.png')
  c = load_config('test')
  c.data.source, c.data.path, c.data.split = 'folder', str(tmp_path / 'imgs'), 'val'
  with pytest.raises(config_lib.ConfigError, match="'val'"):
    train.train(c, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()
