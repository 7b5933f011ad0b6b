"""Throughput and MFU of the train step, the input pipeline alone, and an
optional PyTorch reference of the same model, measured in one run.

  python -m mae_jax.bench --config=configs/mae_imagenet.py:variant=B/16,batch=256 \
      --steps=20 --repeats=5 --json=bench.json [--torch_python=python3]

Step time is the median over `repeats` windows of `steps` steps each, after
`warmup` steps, timed on the host around a device sync (block_until_ready on
the last step's outputs; the loop itself never syncs). MFU = model FLOPs per
second per device (flops.train_flops: matmuls only, 3 x forward, no remat
recompute) over (a) a bf16/fp32 matmul peak measured on the same device in the
same run and (b) the datasheet peak when the device is known.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file: configs/NAME.py[:ARG].', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 10, 'Steps per timed window.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed windows (median taken).')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after compiling.')
_DATA_BATCHES = flags.DEFINE_integer(
    'data_batches', 20, 'Batches to time the input pipeline on (0 = skip).')
_DONATE = flags.DEFINE_bool('donate', True, 'Donate the train state buffers.')
_JSON = flags.DEFINE_string('json', None, 'Write all numbers to this file.')
_TORCH_PYTHON = flags.DEFINE_string(
    'torch_python', None, 'A Python with PyTorch: also time the PyTorch '
    'reference (benchmarks/torch_mae.py) on the same device.')
_TORCH_COMPILE = flags.DEFINE_bool('torch_compile', True,
                                   'torch.compile the PyTorch reference.')

# Dense peak TFLOP/s per device from datasheets (bf16 on accelerators).
DATASHEET_TFLOPS = {
    'NVIDIA H100 80GB HBM3': 989.0,   # H100 SXM5
    'NVIDIA H100 PCIe': 756.0,
    'NVIDIA H200': 989.0,
    'NVIDIA A100-SXM4-80GB': 312.0,
    'NVIDIA A100-SXM4-40GB': 312.0,
    'TPU v4': 275.0,
    'TPU v5 lite': 197.0,
    'TPU v5e': 197.0,
    'TPU v5p': 459.0,
    'TPU v6 lite': 918.0,
}
_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def _timed(fn, repeats: int) -> list[float]:
  """Wall seconds of fn() (which must block until its work is done)."""
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t)
  return out


def matmul_peak(dtype, size: int | None = None, repeats: int = 5) -> dict:
  """Measured TFLOP/s of a [n, n] x [n, n] matmul on the default device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if size is None:
    size = 8192 if jax.default_backend() in ('gpu', 'tpu') else 2048
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  times = _timed(lambda: f(a, b).block_until_ready(), repeats)
  t = statistics.median(times)
  return {'size': size, 'dtype': str(jnp.dtype(dtype)), 'seconds': t,
          'tflops': 2 * size ** 3 / t / 1e12}


def time_train_step(config, *, steps: int, repeats: int, warmup: int,
                    donate: bool = True) -> dict:
  """Median step time of the real jitted train step on a synthetic batch."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mae_jax import optim, plan, sharding, step as step_lib  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(config.mesh)
  lr = lambda count: 1e-4  # a constant: the schedule's values cost nothing
  tx = optim.optimizer(config, lr)
  with sharding.rules_context(mesh, config.sharding.rules):
    setup = step_lib.StateSetup(config, tx, mesh)
    state = setup.init(jax.random.key(0))
    # Random values of the batch's shapes (labels: class 0).
    batch = {k: jax.device_put(
        jax.random.normal(jax.random.key(1), s.shape).astype(s.dtype)
        if k == 'image' else jnp.zeros(s.shape, s.dtype), s.sharding)
             for k, s in setup.batch_spec(config.batch_size).items()}
    key = jax.random.key(2)
    t = time.perf_counter()
    compiled = setup.train_step(lr, donate=donate).lower(state, batch,
                                                         key).compile()
    compile_s = time.perf_counter() - t
    for _ in range(max(warmup, 1)):
      state, m = compiled(state, batch, key)
    jax.block_until_ready(m)

    def window():
      nonlocal state
      for _ in range(steps):
        state, metrics = compiled(state, batch, key)
      jax.block_until_ready(metrics)

    times = [w / steps for w in _timed(window, repeats)]
  stats = jax.devices()[0].memory_stats() or {}
  return {
      'step_seconds': statistics.median(times),
      'step_seconds_all': times,
      'compile_seconds': compile_s,
      'xla_flops_per_device': plan.compiled_flops(compiled),
      'peak_bytes_in_use': stats.get('peak_bytes_in_use'),
      'compiled_bytes': plan.compiled_memory(compiled)['total'],
  }


def time_input_pipeline(config, batches: int) -> dict:
  """Host examples/s of this process's grain pipeline, without the model."""
  from mae_jax import config as config_lib, data  # pylint: disable=g-import-not-at-top
  it = data.build_train_iterator(
      config.data, image_size=config_lib.image_size(config),
      channels=config.model.channels, global_batch=config.batch_size,
      seed=config.seed, frames=config.model.frames)
  try:
    next(it)  # start-up (threads, workers, first decode) is not throughput
    t = time.perf_counter()
    for _ in range(batches):
      next(it)
    seconds = time.perf_counter() - t
  finally:
    it.close()  # stops the read threads and worker processes
  return {'batches': batches, 'examples_per_sec':
          batches * config.batch_size / seconds}


def torch_reference(config, python: str, *, steps: int, repeats: int,
                    warmup: int, compile_model: bool) -> dict:
  """Runs benchmarks/torch_mae.py (same model, batch and timing method) in
  `python` and returns its JSON."""
  from mae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  m = config.model
  cmd = [python, os.path.join(_ROOT, 'benchmarks', 'torch_mae.py'),
         f'--variant={m.variant}', f'--decoder={m.decoder}',
         '--input=' + 'x'.join(map(str, config_lib.input_shape(config))),
         f'--batch={config.batch_size}', f'--mask_ratio={config.masking.ratio}',
         f'--dtype={m.dtype}', f'--steps={steps}', f'--repeats={repeats}',
         f'--warmup={warmup}', f'--target={config.target}',
         '--compile' if compile_model else '--nocompile']
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    return {'error': out.stderr.strip().splitlines()[-1:] or ['failed'],
            'command': cmd}
  return json.loads(out.stdout.strip().splitlines()[-1])


def run(config, *, steps: int, repeats: int, warmup: int, data_batches: int,
        donate: bool = True, torch_python: str | None = None,
        torch_compile: bool = True) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mae_jax import flops  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  n = jax.device_count()
  analytic = flops.train_flops(config)
  result = {'device': device.device_kind, 'platform': device.platform,
            'devices': n, 'variant': config.model.variant,
            'decoder': config.model.decoder, 'batch_size': config.batch_size,
            'dtype': config.model.dtype, 'remat': config.model.remat,
            'flops_per_step': analytic['per_step'],
            'flops_forward_per_example': analytic['forward']}
  result['matmul'] = matmul_peak(jnp.dtype(config.model.dtype))
  step = time_train_step(config, steps=steps, repeats=repeats, warmup=warmup,
                         donate=donate)
  result.update(step)
  result['xla_counted_flops_expected'] = flops.xla_counted_flops(config)
  t = step['step_seconds']
  result['examples_per_sec'] = config.batch_size / t
  result['tflops_per_device'] = analytic['per_step'] / t / n / 1e12
  result['mfu_measured_peak'] = (result['tflops_per_device'] /
                                 result['matmul']['tflops'])
  peak = DATASHEET_TFLOPS.get(device.device_kind)
  result['datasheet_tflops'] = peak
  result['mfu_datasheet'] = (result['tflops_per_device'] / peak) if peak else None
  if data_batches > 0:
    try:
      result['input_pipeline'] = time_input_pipeline(config, data_batches)
    except (OSError, ValueError) as e:  # e.g. a dataset that is not here
      result['input_pipeline'] = {'error': str(e).splitlines()[0]}
  if torch_python:
    ref = torch_reference(config, torch_python, steps=steps, repeats=repeats,
                          warmup=warmup, compile_model=torch_compile)
    if 'step_seconds' in ref:
      ref['tflops_per_device'] = analytic['per_step'] / ref['step_seconds'] / 1e12
      ref['mfu_measured_peak'] = (ref['tflops_per_device'] /
                                  result['matmul']['tflops'])
    result['torch_reference'] = ref
  return result


def report(r: dict) -> str:
  lines = [f"{r['variant']} + {r['decoder']} decoder, batch {r['batch_size']}, "
           f"{r['dtype']}, remat={r['remat']} on {r['devices']} x {r['device']}",
           f"  step {1e3 * r['step_seconds']:.1f} ms (median; compile "
           f"{r['compile_seconds']:.1f} s) -> {r['examples_per_sec']:.1f} examples/s",
           f"  model FLOPs/step {r['flops_per_step'] / 1e9:.2f} GFLOP (XLA: "
           f"{r['xla_flops_per_device'] * r['devices'] / 1e9:.2f}, expected "
           f"{r['xla_counted_flops_expected'] / 1e9:.2f} as XLA counts loops)",
           f"  {r['tflops_per_device']:.3f} TFLOP/s per device; matmul peak "
           f"measured {r['matmul']['tflops']:.3f} ({r['matmul']['dtype']}) -> "
           f"MFU {100 * r['mfu_measured_peak']:.1f}%"]
  if r['mfu_datasheet'] is not None:
    lines.append(f"  datasheet peak {r['datasheet_tflops']:.0f} -> MFU "
                 f"{100 * r['mfu_datasheet']:.1f}%")
  if r.get('peak_bytes_in_use'):
    lines.append(f"  peak device memory {r['peak_bytes_in_use'] / 2**30:.2f} GiB")
  elif r.get('compiled_bytes'):
    lines.append(f"  compiled step memory {r['compiled_bytes'] / 2**30:.3f} GiB "
                 '(device reports no peak)')
  pipe = r.get('input_pipeline', {})
  if 'examples_per_sec' in pipe:
    lines.append(f"  input pipeline alone: {pipe['examples_per_sec']:.1f} "
                 'examples/s')
  elif pipe:
    lines.append(f"  input pipeline not timed: {pipe['error']}")
  ref = r.get('torch_reference')
  if ref and 'step_seconds' in ref:
    lines.append(f"  PyTorch reference ({ref.get('torch', '?')}, compile="
                 f"{ref.get('compiled')}): step {1e3 * ref['step_seconds']:.1f} ms "
                 f"-> {ref['examples_per_sec']:.1f} examples/s, MFU "
                 f"{100 * ref['mfu_measured_peak']:.1f}%; mae_jax is "
                 f"{ref['step_seconds'] / r['step_seconds']:.2f}x its speed")
  elif ref:
    lines.append(f"  PyTorch reference failed: {ref['error']}")
  return '\n'.join(lines)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None:
    raise app.UsageError('--config is required')
  from mae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  try:
    # The data may be absent: the step runs on a synthetic batch.
    config_lib.validate(config, num_devices=None, check_files=False)
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  r = run(config, steps=_STEPS.value, repeats=_REPEATS.value,
          warmup=_WARMUP.value, data_batches=_DATA_BATCHES.value,
          donate=_DONATE.value, torch_python=_TORCH_PYTHON.value,
          torch_compile=_TORCH_COMPILE.value)
  print(report(r))
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(r, f, indent=1)


if __name__ == '__main__':
  app.run(main)
