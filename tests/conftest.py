"""Shared test helpers. Tests run on the CPU; tests that need several
(simulated) devices or processes start subprocesses."""

import importlib.util
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str = 'test', arg: str | None = None):
  """configs/<name>.py's get_config(arg), unlocked for edits in the test."""
  spec = importlib.util.spec_from_file_location(
      f'configs_{name}', ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.unlock()
  return config


@pytest.fixture
def config():
  return load_config('test')


def subprocess_env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = str(ROOT)
  return env
