"""Training scenarios on 8 simulated CPU devices, run in a subprocess by
test_sharding.py (the device count must be set before jax starts).

  python tests/mesh_scenarios.py OUT_DIR  ->  OUT_DIR/results.json
"""

import json
import os
import sys

import jax

import mae_jax
from mae_jax import config as config_lib
from mae_jax import train
from conftest import load_config


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r['loss'] for r in map(json.loads, f) if 'loss' in r]


def _config(mesh, **kw):
  c = load_config('test', 'steps=4')
  c.mesh.update(mesh)
  for k, v in kw.items():
    c[k] = v
  return c


def _param_bytes(params):
  """(total, on one device) bytes: all params, and the encoder's weight
  matrices (every one of their dims divides the test mesh)."""
  leaves = jax.tree.leaves(params)
  blocks = params['encoder']['layers']
  kernels = [blocks['attn']['qkv']['kernel'], blocks['attn']['out']['kernel'],
             blocks['mlp']['fc1']['kernel'], blocks['mlp']['fc2']['kernel']]
  size = lambda xs: sum(x.nbytes for x in xs)
  shard = lambda xs: sum(x.addressable_shards[0].data.nbytes for x in xs)
  return size(leaves), shard(leaves), size(kernels), shard(kernels)


def main(out):
  results = {'devices': jax.device_count()}
  for name, mesh in (('dp8', dict(data=8)),
                     ('d2f2t2', dict(data=2, fsdp=2, tensor=2)),
                     ('f8', dict(data=1, fsdp=8))):
    wd = os.path.join(out, name)
    train.train(_config(mesh), wd)
    results[name] = {'losses': _losses(wd)}
    m = mae_jax.load(wd)  # the API loads onto a data-parallel mesh
    results[name]['loaded_step'] = m.step
  # Per-device parameter bytes on the training mesh itself.
  from mae_jax import api  # pylint: disable=g-import-not-at-top
  for name, mesh in (('dp8', dict(data=8)), ('d2f2t2', dict(data=2, fsdp=2,
                                                             tensor=2))):
    _, _, params, _ = api.restore(os.path.join(out, name), mesh_config=dict(
        dcn=1, **{'data': 1, 'fsdp': 1, 'tensor': 1, **mesh}))
    results[name]['param_bytes'] = _param_bytes(params)
    spec = params['encoder']['layers']['mlp']['fc1']['kernel'].sharding.spec
    results[name]['fc1_spec'] = [str(s) for s in spec]
  # Train 2 steps on one mesh, continue on another.
  wd = os.path.join(out, 'switch')
  c = _config(dict(data=8))
  c.stop_at_step = 2
  train.train(c, wd)
  train.train(_config(dict(data=2, fsdp=2, tensor=2)), wd)
  results['switch'] = {'losses': _losses(wd)}
  # A large parameter that no rule can shard evenly must be named.
  c = _config(dict(data=1, tensor=8))  # 2 heads cannot split 8 ways
  c.sharding.min_sharded_bytes = 1024
  try:
    train.train(c, os.path.join(out, 'unsharded'))
    results['unsharded_error'] = None
  except config_lib.ConfigError as e:
    results['unsharded_error'] = str(e)
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(results, f)


if __name__ == '__main__':
  main(sys.argv[1])
