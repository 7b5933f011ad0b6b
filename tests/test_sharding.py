"""Sharded training on 8 simulated CPU devices matches one device; parameters
shrink per device with fsdp x tensor; checkpoints move between meshes."""

import json
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from mae_jax import sharding, train
from conftest import ROOT, load_config, subprocess_env


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp('mesh')
  env = subprocess_env(devices=8)
  env['PYTHONPATH'] = f'{ROOT}:{ROOT / "tests"}'
  proc = subprocess.run([sys.executable, str(ROOT / 'tests' / 'mesh_scenarios.py'),
                         str(out)], env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(out / 'results.json') as f:
    res = json.load(f)
  # The same run on this process's single device.
  c = load_config('test', 'steps=4')
  train.train(c, str(out / 'single'))
  with open(out / 'single' / 'metrics.jsonl') as f:
    res['single'] = [r['loss'] for r in map(json.loads, f) if 'loss' in r]
  return res


def test_simulated_devices(results):
  assert results['devices'] == 8


@pytest.mark.parametrize('mesh', ['dp8', 'd2f2t2', 'f8'])
def test_meshes_give_the_single_device_losses(results, mesh):
  np.testing.assert_allclose(results[mesh]['losses'], results['single'],
                             rtol=1e-5)
  assert results[mesh]['loaded_step'] == 4


def test_parameters_shrink_by_fsdp_times_tensor(results):
  total, per_device, _, _ = results['dp8']['param_bytes']
  assert per_device == total  # data parallel: replicated
  total, per_device, kernels, kernels_per_device = results['d2f2t2']['param_bytes']
  # fsdp=2 x tensor=2: the block weight matrices are split exactly 4 ways;
  # norms, biases and the decoder's single head stay whole in this tiny model.
  assert kernels_per_device * 4 == kernels
  assert total / 4 < per_device < 0.4 * total
  assert results['d2f2t2']['fc1_spec'] == ['None', 'fsdp', 'tensor']


def test_checkpoint_restores_onto_another_mesh_and_continues(results):
  np.testing.assert_allclose(results['switch']['losses'],
                             results['dp8']['losses'], rtol=1e-5)


def test_large_replicated_parameter_is_named(results):
  err = results['unsharded_error']
  assert err is not None
  assert re.match(r'parameter (en|de)coder/layers/attn/(qkv|out)/kernel ', err)
  assert 'config.sharding.min_sharded_bytes' in err


def test_logical_rules_map_and_respect_divisibility():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1, 1),
                           sharding.MESH_AXES)
  # Size-1 axes are dropped: everything is replicated on one device.
  assert sharding.logical_to_spec(('batch', 'embed'), sharding.DEFAULT_RULES,
                                  mesh) == jax.sharding.PartitionSpec()
  abstract = jax.sharding.AbstractMesh((2, 2, 2, 1), sharding.MESH_AXES)
  spec = sharding.logical_to_spec(('batch', None, 'embed'),
                                  sharding.DEFAULT_RULES, abstract, (8, 3, 6))
  assert spec == jax.sharding.PartitionSpec(('dcn', 'data', 'fsdp'))  # fsdp used once
  abstract = jax.sharding.AbstractMesh((1, 1, 2, 2), sharding.MESH_AXES)
  spec = sharding.logical_to_spec(('embed', 'mlp'), sharding.DEFAULT_RULES,
                                  abstract, (6, 5))
  assert spec == jax.sharding.PartitionSpec('fsdp')  # 5 does not split 2 ways


def test_mesh_shape_errors_name_the_axis():
  with pytest.raises(ValueError, match='only one axis may be -1'):
    sharding.mesh_shape({'data': -1, 'fsdp': -1}, 8)
  with pytest.raises(ValueError, match='needs 4 devices but 8'):
    sharding.mesh_shape({'data': 2, 'fsdp': 2}, 8)
  with pytest.raises(ValueError, match='unknown axes'):
    sharding.mesh_shape({'model': 2}, 8)
  assert sharding.mesh_shape({'data': -1, 'tensor': 2}, 8) == dict(
      dcn=1, data=4, fsdp=1, tensor=2)
