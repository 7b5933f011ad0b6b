"""Ahead-of-time plan of a training run: parameters, FLOPs and per-device memory.

  python -m mae_jax.plan --config=configs/mae_imagenet.py:variant=g/14 \
      --config.batch_size=4096 --config.model.remat=full \
      --mesh=data=1,fsdp=8 --hbm_gib=80
  python -m mae_jax.plan --config=configs/mae_imagenet.py:variant=e/14 \
      --mesh=data=-1,fsdp=16 --topology=v5p:4x4x4      # needs mae_jax[tpu-plan]

Nothing is allocated: the train state, the batch and the PRNG key are abstract
(ShapeDtypeStructs with their shardings), and the real train step
(StateSetup.train_step: step.make_train_step jitted, the state donated)
is lowered and compiled for the mesh. The numbers come from that executable:
memory_analysis() is XLA's buffer assignment for ONE device, cost_analysis()
the FLOPs of the partitioned per-device program.

Devices: --devices=N simulates N CPU devices (XLA:CPU's buffer assignment, an
approximation of what XLA:GPU would do); --topology=NAME compiles for a real
TPU slice (e.g. v5p:4x4x4 = 64 chips) through libtpu, without TPUs.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import re
import sys
import time
from typing import Any

import jax
import numpy as np
import optax
from absl import app, flags
from jax.experimental import topologies
from ml_collections import config_flags

from mae_jax import config as config_lib, data, flops, optim, sharding
from mae_jax import step as step_lib
from mae_jax.models import vit

GIB = 2**30
# HBM per chip by jax device_kind.
_TPU_HBM_GIB = {'TPU v3': 32, 'TPU v4': 32, 'TPU v5 lite': 16, 'TPU v5': 95,
                'TPU v6 lite': 32}
# TPU_ACCELERATOR_TYPE for a topology's generation: without it libtpu warns
# that it cannot find the host bounds (the compiled program is the same).
_ACCELERATOR_TYPE = {'v3': 'v3-8', 'v4': 'v4-8', 'v5e': 'v5litepod-8',
                     'v5p': 'v5p-8', 'v6e': 'v6e-8'}
# Sources whose size is known without touching files (the rest may be
# terabytes on a bucket, or absent on the machine that plans).
_IN_MEMORY_SOURCES = ('synthetic', 'mnist', 'digits', 'moving_digits')


class PlanError(ValueError):
  """A flag or config the planner cannot use; printed without a traceback."""


def parse_mesh(text: str) -> dict[str, int]:
  """--mesh 'data=2,fsdp=4' -> {'data': 2, 'fsdp': 4}."""
  out = {}
  for item in filter(None, text.split(',')):
    key, sep, value = item.partition('=')
    if not sep or key not in sharding.MESH_AXES:
      raise PlanError(f'--mesh={text!r}: {item!r} is not AXIS=SIZE with AXIS '
                      f'one of {", ".join(sharding.MESH_AXES)}')
    try:
      out[key] = int(value)
    except ValueError:
      raise PlanError(f'--mesh={text!r}: size {value!r} of {key} is not an '
                      'integer (-1 = the remaining devices)') from None
  return out


def default_device_count(mesh_config) -> int:
  sizes = [int(mesh_config[a]) for a in mesh_config.keys()]
  return 8 if -1 in sizes else math.prod(sizes)


def cpu_devices(count: int) -> list:
  """`count` simulated CPU devices; must run before any jax backend exists."""
  jax.config.update('jax_platforms', 'cpu')
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:  # backends already up (e.g. called from Python)
    pass
  devices = jax.devices('cpu')
  if len(devices) != count:
    raise PlanError(f'--devices={count}: jax already initialized '
                    f'{len(devices)} CPU devices in this process')
  return devices


def tpu_topology(name: str):
  """-> (devices, GiB per device or None) of the TPU topology `name`, e.g.
  v5p:4x4x4 (64 chips). v3/v4 topologies list one device per TensorCore (2
  per chip), so their memory per device is half a chip's."""
  if importlib.util.find_spec('libtpu') is None:
    raise PlanError(f'--topology={name}: compiling for TPUs needs libtpu, which '
                    "is not installed: pip install 'mae_jax[tpu-plan]'")
  # libtpu expects a TPU VM's environment; these keep it quiet and local.
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  generation = name.partition(':')[0]
  if generation in _ACCELERATOR_TYPE:
    os.environ.setdefault('TPU_ACCELERATOR_TYPE', _ACCELERATOR_TYPE[generation])
  jax.config.update('jax_platforms', 'cpu')  # never grab a local TPU
  try:
    topo = topologies.get_topology_desc(platform='tpu', topology_name=name)
  except Exception as e:  # pylint: disable=broad-except
    raise PlanError(f'--topology={name}: libtpu cannot build it ({e}); use '
                    'GENERATION:CHIPS, e.g. v5p:4x4x4, v4:2x2x2, v5e:4x4, '
                    'v6e:8x8') from None
  devices = list(topo.devices)
  chip_gib = _TPU_HBM_GIB.get(devices[0].device_kind)
  try:
    chips = math.prod(int(d) for d in name.partition(':')[2].split('x'))
  except ValueError:
    chips = len(devices)
  return devices, chip_gib and chip_gib * chips / len(devices)


def _schedule(config):
  """(schedule, description). Only the optimizer's structure matters to memory
  and FLOPs; the schedule's values change neither."""
  if config.data.source in _IN_MEMORY_SOURCES:
    n, _ = data.source_info(config.data, config.data.split,
                            image_size=config_lib.image_size(config),
                            channels=config.model.channels,
                            frames=config.model.frames)
    try:
      return optim.schedule(config, n), f'warmup + cosine ({n} examples)'
    except ValueError as e:  # warmup longer than the run
      raise PlanError(str(e)) from None
  return (optax.constant_schedule(optim.peak_lr(config)),
          f'constant (data.source={config.data.source!r} is not opened)')


def check_config(config, num_devices: int) -> None:
  """config.validate, without looking for the data on disk."""
  try:
    config_lib.validate(config, num_devices, check_files=False)
  except config_lib.ConfigError as e:
    if str(e).startswith('config.mesh'):
      raise PlanError(f'{e}: set --mesh (or config.mesh) to use all '
                      f'{num_devices} devices of --devices / --topology; one '
                      'axis may be -1') from None
    raise


def _bytes(tree, per_device: bool = False) -> int:
  """Bytes of the (abstract) leaves, or of one device's shard of each."""
  return sum(math.prod(x.sharding.shard_shape(x.shape) if per_device
                       else x.shape) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def _compile(lowered):
  """-> (compiled, None) or, when XLA:TPU refuses a program larger than its
  HBM (CompileTimeHbmOom), (the program compiled anyway, the refusal): with
  xla_tpu_no_crash_on_oom it finishes, so memory_analysis() says by how much.
  """
  try:
    return lowered.compile(), None
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e) or 'hbm' not in str(e).lower():
      raise
    # 'RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM,
    # the total memory required ... (108.46G) exceeds available HBM (95.73G).
    # HLO module: jit_train_step.' -> from 'Ran out' to the first '.'.
    refused = re.sub(r'^.*?(Ran out)', r'\1', str(e).splitlines()[0])
    refused = refused.split('. HLO module')[0]
  return (lowered.compile(compiler_options={'xla_tpu_no_crash_on_oom': True}),
          refused)


def compiled_memory(compiled) -> dict[str, int]:
  """One device's memory of a compiled program, from XLA's buffer assignment.

  total = arguments + outputs - aliased + temporaries: a donated argument and
  the output reusing its buffer are counted in both, and once in aliased.
  """
  mem = compiled.memory_analysis()
  out = dict(arguments=mem.argument_size_in_bytes,
             outputs=mem.output_size_in_bytes,
             temporaries=mem.temp_size_in_bytes,
             aliased=mem.alias_size_in_bytes,
             generated_code=mem.generated_code_size_in_bytes)
  out['total'] = (out['arguments'] + out['outputs'] - out['aliased']
                  + out['temporaries'])
  return out


def compiled_flops(compiled) -> float:
  """XLA's FLOP count of the partitioned program: ONE device, each while-loop
  body counted once (see flops.xla_counted_flops)."""
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def plan(config, devices) -> dict[str, Any]:
  """Compiles config's train step for `devices` -> every number as a dict.

  Memory is per device; 'total' = arguments + outputs - aliased + temporaries
  (a donated argument and the output that reuses its buffer are both counted
  in arguments and outputs, and once in aliased).
  """
  check_config(config, len(devices))
  lr, lr_text = _schedule(config)
  tx = optim.optimizer(config, lr)
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  rules = config.sharding.rules
  shape = config_lib.input_shape(config)
  start = time.perf_counter()
  with sharding.rules_context(mesh, rules):
    setup = step_lib.StateSetup(config, tx, mesh)  # ConfigError if under-sharded
    batch = setup.batch_spec(config.batch_size)
    key = jax.eval_shape(lambda: jax.random.key(0))
    lowered = setup.train_step(lr).lower(setup.abstract, batch, key)
  lowered_at = time.perf_counter()
  compiled, refused = _compile(lowered)
  compiled_at = time.perf_counter()

  memory = compiled_memory(compiled)
  memory['state_from_shardings'] = _bytes(setup.abstract, per_device=True)
  memory['batch_from_shardings'] = _bytes(batch, per_device=True)
  analytic = flops.train_flops(config)
  n = len(devices)
  return dict(
      config=dict(
          variant=config.model.variant, decoder=config.model.decoder,
          input_shape=list(shape), mask_ratio=config.masking.ratio,
          batch_size=config.batch_size,
          grad_accum_steps=config.grad_accum_steps, remat=config.model.remat,
          scan_unroll=config.model.scan_unroll, dtype=config.model.dtype,
          mu_dtype=config.optim.mu_dtype or 'float32',
          lr_schedule=lr_text),
      mesh=dict(mesh.shape),
      devices=dict(count=n, platform=devices[0].platform,
                   kind=devices[0].device_kind),
      parameters=vit.count_params(setup.abstract.params),
      parameter_bytes=_bytes(setup.abstract.params),
      optimizer_state_bytes=_bytes(setup.abstract.opt_state),
      flops=dict(
          analytic_per_example=analytic, analytic_per_step=analytic['per_step'],
          analytic_per_device=analytic['per_step'] / n,
          xla_per_device=compiled_flops(compiled),
          xla_expected_per_device=flops.xla_counted_flops(config) / n),
      memory=memory, compiler_refused=refused,
      seconds=dict(lower=lowered_at - start, compile=compiled_at - lowered_at))


def verdict(total_bytes: int, hbm_gib: float, refused: str | None = None
            ) -> tuple[bool, str]:
  """-> (fits, 'fits in 80 GiB per device (uses 23.4 GiB, 29%)'). `refused`:
  XLA:TPU's own out-of-memory refusal, which also means it does not fit."""
  used = (f'{total_bytes / GIB:.1f} GiB' if total_bytes >= GIB / 10
          else _size(total_bytes))
  if total_bytes <= hbm_gib * GIB and not refused:
    return True, (f'fits in {hbm_gib:g} GiB per device (uses {used}, '
                  f'{100 * total_bytes / (hbm_gib * GIB):.0f}%)')
  why = f'; XLA:TPU refuses it: {refused}' if refused else ''
  return False, (f'does NOT fit in {hbm_gib:g} GiB per device (needs '
                 f'{used}{why})')


def _si(x: float, unit: str) -> str:
  for scale, prefix in ((1e15, 'P'), (1e12, 'T'), (1e9, 'G'), (1e6, 'M'),
                        (1e3, 'k')):
    if abs(x) >= scale:
      return f'{x / scale:.4g} {prefix}{unit}'
  return f'{x:.4g} {unit}'


def _size(nbytes: float) -> str:
  for scale, unit in ((GIB, 'GiB'), (2**20, 'MiB'), (2**10, 'KiB')):
    if nbytes >= scale / 10:
      return f'{nbytes / scale:.2f} {unit}'
  return f'{nbytes:.0f} B'


def report(r: dict[str, Any]) -> str:
  """The human-readable plan (r from plan() with 'verdict' added)."""
  c, f, m, d = r['config'], r['flops'], r['memory'], r['devices']
  mesh = ' '.join(f'{k}={v}' for k, v in r['mesh'].items())
  dp = r['mesh']['dcn'] * r['mesh']['data'] * r['mesh']['fsdp']
  micro = c['batch_size'] // c['grad_accum_steps']
  target = (f"{d['count']} simulated CPU devices (XLA:CPU buffer assignment)"
            if d['platform'] == 'cpu' else
            f"{d['count']} x {d['kind']} ({r['topology']}, compiled by libtpu)")
  ratio = f['xla_per_device'] / max(f['xla_expected_per_device'], 1)
  ex = f['analytic_per_example']
  g = lambda key: f'{_size(m[key]):>11}'  # pylint: disable=unnecessary-lambda-assignment
  lines = [
      f"model        ViT-{c['variant']} encoder, {c['decoder']} decoder, "
      f"input {tuple(c['input_shape'])}, mask {c['mask_ratio']}",
      f"batch        {c['batch_size']} global, grad_accum_steps "
      f"{c['grad_accum_steps']} (micro-batch {micro}, {micro // dp} per "
      'data-parallel shard)',
      f"compute      {c['dtype']} (params float32, Adam mu {c['mu_dtype']}), "
      f"remat {c['remat']}, scan_unroll {c['scan_unroll']}; "
      f"lr schedule {c['lr_schedule']}",
      f'mesh         {mesh} on {target}',
      f"parameters   {r['parameters']:,} ({_size(r['parameter_bytes'])})",
      f"optimizer    state {_size(r['optimizer_state_bytes'])}",
      f"FLOPs/step   {_si(f['analytic_per_step'], 'FLOP')} analytic (3 x "
      f"forward {_si(ex['forward'], 'FLOP')}/example x {c['batch_size']}), "
      f"{_si(f['analytic_per_device'], 'FLOP')} per device",
      f"XLA FLOPs    {_si(f['xla_per_device'], 'FLOP')} per device "
      '(cost_analysis of the partitioned program; expected '
      f"{_si(f['xla_expected_per_device'], 'FLOP')} counting each while-loop "
      f'body once, as XLA does: ratio {ratio:.2f})',
      'memory per device (XLA buffer assignment'
      + (', compiled with xla_tpu_no_crash_on_oom after XLA:TPU refused it)'
         if r['compiler_refused'] else ')'),
      f"  arguments  {g('arguments')}   state {_size(m['state_from_shardings'])}"
      f" + batch {_size(m['batch_from_shardings'])} by their shardings",
      f"  outputs    {g('outputs')}",
      f"  aliased    {g('aliased')}   donated state reused by the new state",
      f"  temporaries{g('temporaries')}",
      f"  total      {g('total')}   = arguments + outputs - aliased + "
      'temporaries',
      f"  code       {g('generated_code')}   generated code, not in total",
      f"verdict      {r['verdict']}",
      f"time         lower {r['seconds']['lower']:.1f} s, compile "
      f"{r['seconds']['compile']:.1f} s",
  ]
  return '\n'.join(lines)


def define_flags() -> dict[str, Any]:
  """The CLI's flags (defined on demand, so importing this module for plan()
  does not clash with mae_jax.main's --config)."""
  return dict(
      config=config_flags.DEFINE_config_file(
          'config', None, 'Config file, optionally with an argument: '
          'configs/NAME.py[:ARG].', lock_config=True),
      mesh=flags.DEFINE_string(
          'mesh', '', 'Overrides of config.mesh, e.g. data=2,fsdp=4,tensor=1 '
          '(axes dcn, data, fsdp, tensor; one may be -1 = the rest).'),
      devices=flags.DEFINE_integer(
          'devices', None, 'Number of simulated CPU devices (default: the '
          'product of the mesh sizes, or 8 when one is -1).'),
      topology=flags.DEFINE_string(
          'topology', '', 'Compile for a TPU topology instead, e.g. v5p:4x4x4 '
          '(needs libtpu: pip install "mae_jax[tpu-plan]").'),
      hbm_gib=flags.DEFINE_float(
          'hbm_gib', None, 'Memory per device in GiB for the verdict (default: '
          "the TPU's HBM with --topology; required otherwise)."),
      json=flags.DEFINE_string('json', '', 'Also write every number to this '
                               'file.'),
  )


def main(argv, flag: dict[str, Any]) -> None:
  """flag: define_flags()'s holders."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = flag['config'].value
  if config is None:
    raise app.UsageError('--config is required, e.g. '
                         '--config=configs/mae_imagenet.py:variant=B/16')
  try:
    for axis, size in parse_mesh(flag['mesh'].value).items():
      config.mesh[axis] = size
    if flag['topology'].value:
      if flag['devices'].value is not None:
        raise PlanError('--devices and --topology exclude each other: a TPU '
                        "topology's chip count is fixed")
      devices, hbm_gib = tpu_topology(flag['topology'].value)
    else:
      count = flag['devices'].value
      if count is None:
        count = default_device_count(config.mesh)
      if count < 1:
        raise PlanError(f'--devices={count}: must be >= 1')
      devices, hbm_gib = None, None
    if flag['hbm_gib'].value is not None:
      hbm_gib = flag['hbm_gib'].value
    if hbm_gib is None or hbm_gib <= 0:
      raise PlanError(f'--hbm_gib={flag["hbm_gib"].value}: give the memory per '
                      'device in GiB (> 0, e.g. 80 for 80 GiB GPUs); only a '
                      'known --topology implies it')
    if devices is None:
      devices = cpu_devices(count)
    result = plan(config, devices)
  except (PlanError, config_lib.ConfigError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  result['topology'] = flag['topology'].value or None
  result['hbm_gib'] = hbm_gib
  result['fits'], result['verdict'] = verdict(
      result['memory']['total'], hbm_gib, result['compiler_refused'])
  print(report(result))
  if flag['json'].value:
    with open(flag['json'].value, 'w', encoding='utf-8') as out:
      json.dump(result, out, indent=1)


def run() -> None:
  holders = define_flags()
  app.run(functools.partial(main, flag=holders))


if __name__ == '__main__':
  run()
