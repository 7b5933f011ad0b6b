"""The benchmark harness on CPU: it runs, its numbers are consistent, and the
PyTorch reference (when PyTorch is importable) is the same model."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from mae_jax import bench, flops
from conftest import ROOT, load_config, subprocess_env


@pytest.fixture(scope='module')
def result():
  c = load_config('test')
  return bench.run(c, steps=2, repeats=2, warmup=1, data_batches=3)


def test_step_time_and_derived_numbers_are_consistent(result):
  c = load_config('test')
  assert result['platform'] == 'cpu' and result['devices'] == 1
  assert len(result['step_seconds_all']) == 2
  assert result['step_seconds'] > 0
  assert result['examples_per_sec'] == pytest.approx(8 / result['step_seconds'])
  assert result['flops_per_step'] == flops.train_flops(c)['per_step']
  assert result['tflops_per_device'] == pytest.approx(
      result['flops_per_step'] / result['step_seconds'] / 1e12)
  assert result['mfu_measured_peak'] == pytest.approx(
      result['tflops_per_device'] / result['matmul']['tflops'])
  assert result['matmul']['tflops'] > 0
  assert result['mfu_datasheet'] is None  # no datasheet peak for a CPU
  assert result['input_pipeline']['examples_per_sec'] > 0


def test_xla_counts_what_the_model_should_do(result):
  # XLA's count includes elementwise work the analytic count leaves out, so
  # it is a little higher, never lower.
  xla, expected = result['xla_flops_per_device'], result['xla_counted_flops_expected']
  assert expected <= xla < 1.5 * expected


def test_cli_prints_report_and_json(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'mae_jax.bench', '--config=configs/test.py',
       '--steps=2', '--repeats=1', '--warmup=1', '--data_batches=0',
       f'--json={tmp_path}/b.json'], cwd=ROOT, env=subprocess_env(),
      capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'examples/s' in out.stdout and 'MFU' in out.stdout
  saved = json.loads((tmp_path / 'b.json').read_text())
  assert saved['variant'] == 'mu/4' and saved['step_seconds'] > 0


# A Python with PyTorch: this one, or MAE_JAX_TORCH_PYTHON (PyTorch is an
# optional extra; a CPU build for another Python version works too).
TORCH_PYTHON = os.environ.get('MAE_JAX_TORCH_PYTHON') or (
    sys.executable if importlib.util.find_spec('torch') else None)


@pytest.mark.skipif(TORCH_PYTHON is None, reason='no Python with PyTorch '
                    '(set MAE_JAX_TORCH_PYTHON)')
def test_torch_reference_is_the_same_model():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from mae_jax.models import mae, vit  # pylint: disable=g-import-not-at-top
  c = load_config('test')
  ref = bench.torch_reference(c, TORCH_PYTHON, steps=1, repeats=1, warmup=1,
                              compile_model=False)
  ours = vit.count_params(nnx.to_pure_dict(nnx.state(mae.build(c, nnx.Rngs(0)))))
  assert ref['params'] == ours
  assert ref['step_seconds'] > 0
