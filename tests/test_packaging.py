"""A wheel built from the repository works on its own: every module and config
inside, the `mae-jax` console script runs a shipped config by name from an
unrelated directory, prints the start-up summary, and takes tuple-valued keys
(a non-square image) from the command line."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """(site folder, console script) of the wheel, installed without deps
  (they are this venv's) into a folder of its own."""
  root = tmp_path_factory.mktemp('wheel')
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
                  str(ROOT), '-w', str(root / 'dist')], check=True,
                 capture_output=True, timeout=300)
  [wheel] = (root / 'dist').glob('mae_jax-*.whl')
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
                  '--target', str(root / 'site'), str(wheel)], check=True,
                 capture_output=True, timeout=300)
  return wheel, root / 'site', root / 'site' / 'bin' / 'mae-jax'


def test_wheel_holds_every_module_and_config(installed):
  wheel, _, _ = installed
  names = set(zipfile.ZipFile(wheel).namelist())
  source = {str(p.relative_to(ROOT)) for p in (ROOT / 'mae_jax').rglob('*.py')}
  assert source <= names
  configs = {f'mae_jax/configs/{p.name}' for p in (ROOT / 'configs').glob('*.py')}
  assert configs and configs <= names


def test_console_script_runs_a_shipped_config_by_name(installed, tmp_path):
  _, site, script = installed
  env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS='cpu')
  out = subprocess.run(
      [sys.executable, str(script), '--config=test:steps=2',
       f'--workdir={tmp_path / "w"}', "--config.model.image_size=(16,32)"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  for line in ('devices   1 x cpu', 'model     ViT-mu/4 encoder + 32d1b decoder, '
               'input (16, 32, 3)', 'data      synthetic:train: 64 examples',
               'schedule  2 steps', f'workdir   {tmp_path / "w"}: starting'):
    assert line in out.stdout, out.stdout
  config = json.loads((tmp_path / 'w' / 'config.json').read_text())
  assert config['model']['image_size'] == [16, 32]
  imported = subprocess.run(
      [sys.executable, '-c', 'import mae_jax; print(mae_jax.__file__)'],
      cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
  assert imported.stdout.startswith(str(site))  # the wheel, not the checkout
