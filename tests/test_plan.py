"""The ahead-of-time planner, end to end through its CLI on 8 simulated CPU
devices (a subprocess each: the device count is fixed when jax starts).

TPU topologies (--topology) need libtpu, which CI does not install; they are
not tested here.
"""

import functools
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest
from flax import nnx

from mae_jax.models import mae, vit
from conftest import ROOT, load_config, subprocess_env


@functools.lru_cache(maxsize=None)
def _plan(*args: str) -> tuple[int, str, str, dict | None]:
  """Runs the planner on configs/test.py -> (status, stdout, stderr, json)."""
  out = pathlib.Path(tempfile.mkdtemp()) / 'plan.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'mae_jax.plan', '--config=configs/test.py',
       f'--json={out}', *args],
      cwd=ROOT, env=subprocess_env(8), capture_output=True, text=True,
      timeout=300, check=False)
  result = json.loads(out.read_text()) if out.exists() else None
  shutil.rmtree(out.parent)
  return proc.returncode, proc.stdout, proc.stderr, result


def test_tiny_config_plans_on_a_data_fsdp_tensor_mesh():
  status, stdout, stderr, r = _plan('--mesh=data=2,fsdp=2,tensor=2',
                                    '--hbm_gib=1000')
  assert status == 0, stderr
  assert r['mesh'] == dict(dcn=1, data=2, fsdp=2, tensor=2)
  assert r['devices'] == dict(count=8, platform='cpu', kind='cpu')
  model = nnx.eval_shape(lambda: mae.build(load_config('test'), nnx.Rngs(0)))
  assert r['parameters'] == vit.count_params(nnx.state(model, nnx.Param))
  # AdamW: mu and nu like the parameters, plus a step count.
  assert r['optimizer_state_bytes'] == pytest.approx(
      2 * r['parameter_bytes'], abs=64)
  m = r['memory']
  assert m['total'] == (m['arguments'] + m['outputs'] - m['aliased']
                        + m['temporaries'])
  # The donated state is reused in place, and is most of the arguments.
  assert m['aliased'] >= m['state_from_shardings'] > 0
  assert m['arguments'] >= m['state_from_shardings'] + m['batch_from_shardings']
  assert r['fits'] and 'fits in 1000 GiB per device' in stdout
  for word in ('mu/4', '32d1b', '(16, 16, 3)', 'grad_accum_steps 1',
               'remat none', 'float32', 'data=2 fsdp=2 tensor=2'):
    assert word in stdout, word


def test_fsdp_shards_the_state():
  *_, fsdp1 = _plan('--mesh=data=8,fsdp=1', '--hbm_gib=1000')
  *_, fsdp4 = _plan('--mesh=data=2,fsdp=4', '--hbm_gib=1000')
  # Norm scales and biases stay replicated, so a bit more than a quarter.
  ratio = fsdp4['memory']['arguments'] / fsdp1['memory']['arguments']
  assert 0.2 < ratio < 0.35, ratio
  assert fsdp4['parameters'] == fsdp1['parameters']


def test_verdict_flips_with_the_memory_per_device():
  *_, fits = _plan('--mesh=data=8,fsdp=1', '--hbm_gib=1000')
  status, stdout, _, tight = _plan('--mesh=data=8,fsdp=1', '--hbm_gib=1e-6')
  assert status == 0  # a plan that does not fit is a result, not an error
  assert fits['memory'] == tight['memory']
  assert fits['fits'] and not tight['fits']
  assert 'does NOT fit in 1e-06 GiB per device (needs' in stdout


def test_flops_analytic_and_xla_agree():
  # A wider model than the test config: at width 32 elementwise work (which
  # XLA counts and the analytic count ignores) is 40-70% of the FLOPs; at
  # width 512 with batch 32 it is ~10% (measured 1.11).
  status, stdout, stderr, r = _plan(
      '--mesh=data=2,fsdp=2,tensor=2', '--hbm_gib=80',
      '--config.model.variant=M/4', '--config.model.decoder=256d1b',
      '--config.model.image_size=32', '--config.batch_size=32')
  assert status == 0, stderr
  f = r['flops']
  assert f['analytic_per_device'] == f['analytic_per_step'] / 8
  # cost_analysis is per device (the partitioned program), loop bodies once.
  assert 1.0 <= f['xla_per_device'] / f['xla_expected_per_device'] < 1.25
  assert 'XLA FLOPs' in stdout and 'per device' in stdout


@pytest.mark.parametrize('args, message', [
    (('--mesh=data=2,fsdp=2,tensor=3', '--devices=8', '--hbm_gib=80'),
     "config.mesh {'dcn': 1, 'data': 2, 'fsdp': 2, 'tensor': 3} needs 12 "
     'devices but 8 are available'),
    (('--mesh=dat=2', '--hbm_gib=80'), "--mesh='dat=2'"),
    (('--mesh=data=8',), '--hbm_gib'),
    (('--mesh=data=8', '--hbm_gib=80', '--config.batch_size=4'),
     'config.batch_size=4'),
])
def test_bad_flags_fail_with_a_clear_error(args, message):
  status, stdout, stderr, r = _plan(*args)
  assert status == 1 and r is None and not stdout
  assert message in stderr and 'Traceback' not in stderr, stderr
