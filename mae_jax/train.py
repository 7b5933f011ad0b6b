"""The training loop: mesh -> data -> sharded init or resume -> steps ->
checkpoints, logs and evaluators.

Host-side only: the math lives in step.py. The loop never waits on the device
between log/checkpoint points; per-step metrics stay on device until then.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import threading
from typing import Any, Callable, Iterator, TextIO

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from mae_jax import checkpoint, config as config_lib, data, evaluators
from mae_jax import metrics as metrics_lib, optim, sharding, step as step_lib


class NonFiniteLossError(FloatingPointError):
  pass


class Preemption:
  """SIGTERM -> save at the current step and stop cleanly.

  With several processes, they agree (an all-reduce of the flag) at sync
  points, so all of them save the same step.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def should_stop(self, at_sync_point: bool) -> bool:
    if jax.process_count() == 1:
      return self.requested
    if not at_sync_point:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return bool(np.max(flags))

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def device_batches(host_iter, batch_shardings: dict, prefetch: int
                   ) -> Iterator[tuple[dict, Any, dict]]:
  """Yields (global device batch, iterator state after it, host info: bad
  records skipped and this process's source record ids), keeping `prefetch`
  batches in flight to the devices.

  The iterator state is recorded with each batch because the live iterator
  runs ahead of the step that is being checkpointed.
  """
  queue = collections.deque()

  def enqueue():
    host = next(host_iter)
    state = host_iter.get_state()
    batch = {k: sharding.to_global(host[k], s) for k, s in batch_shardings.items()}
    info = {'skipped': int(np.sum(host.get('skipped', 0))),
            'index': host.get('index')}
    queue.append((batch, state, info))

  for _ in range(max(prefetch, 1)):
    enqueue()
  while True:
    yield queue.popleft()
    enqueue()


def _check_finite(history: list[dict], first_step: int) -> None:
  for i, m in enumerate(history):
    if not (np.isfinite(m['loss']) and np.isfinite(m['grad_norm'])):
      raise NonFiniteLossError(
          f'non-finite loss at step {first_step + i} (loss={m["loss"]}, '
          f'grad_norm={m["grad_norm"]}); stopping. The checkpoints already '
          'saved are intact. Try a lower optim.base_lr, optim.clip_norm > 0 '
          'or model.dtype=float32.')


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True)


@dataclasses.dataclass
class _Run:
  """What the loop uses besides the state and the batches."""
  config: ml_collections.ConfigDict
  train_step: Callable
  step_key: jax.Array
  ckpt: checkpoint.Checkpointer
  writer: metrics_lib.MetricWriter
  evals: list
  preemption: Preemption
  total: int
  trace: TextIO | None = None  # data_trace/process_<i>-of-<n>.jsonl


def _open_trace(config, workdir: str) -> TextIO | None:
  if not config.data.trace_indices:
    return None
  folder = os.path.join(workdir, 'data_trace')
  os.makedirs(folder, exist_ok=True)
  name = f'process_{jax.process_index()}-of-{jax.process_count()}.jsonl'
  return open(os.path.join(folder, name), 'a', encoding='utf-8')


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains per `config` in `workdir`, resuming from its latest checkpoint.

  Returns the last logged metrics plus the evaluators' results, and
  'preempted': True when SIGTERM stopped the run early.
  """
  config_lib.validate(config, jax.device_count(), jax.process_count())
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh)
  rules = config.sharding.rules
  hw, channels = config_lib.image_size(config), config.model.channels
  try:  # a missing folder, split or dataset is a config problem
    num_examples, _ = data.source_info(config.data, config.data.split,
                                       image_size=hw, channels=channels)
  except (ValueError, OSError) as e:
    raise config_lib.ConfigError(str(e)) from None
  total = optim.total_steps(config, num_examples)
  lr = optim.schedule(config, num_examples)
  tx = optim.optimizer(config, lr)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))

  with sharding.rules_context(mesh, rules):
    setup = step_lib.StateSetup(config, tx, mesh)
    ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir),
                                   keep=config.keep_checkpoints)
    latest = ckpt.latest_step()
    if latest is not None:  # before anything in the workdir is touched
      ckpt.check_compatible(latest, config, setup.abstract)
    if is_main:
      write_config(config, workdir)
    host_iter = data.build_train_iterator(
        config.data, image_size=hw, channels=channels,
        global_batch=config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count())
    if latest is None:
      state = setup.init(init_key)
    else:
      state = ckpt.restore(latest, setup.abstract, host_iter)
    train_step = setup.train_step(lr)

    writer = metrics_lib.MetricWriter(workdir, enabled=is_main,
                                      progress=config.progress,
                                      total_steps=total)
    ctx = evaluators.EvalContext(config=config, graphdef=setup.graphdef,
                                 mesh=mesh, init_params=setup.init_params,
                                 baseline_key=init_key, writer=writer,
                                 workdir=workdir)
    run = _Run(config, train_step, step_key, ckpt, writer,
               evaluators.build(ctx), Preemption(), total,
               _open_trace(config, workdir))
    start = int(jax.device_get(state.step))
    if start:
      writer.message(f'resumed from {ckpt.directory} at step {start}')
    try:
      batches = device_batches(host_iter, setup.batch_shardings, prefetch=2)
      return _loop(run, state, batches, start)
    finally:
      run.preemption.restore()
      ckpt.close()
      writer.close()
      if run.trace:
        run.trace.close()


def _loop(run: _Run, state, batches, start: int) -> dict[str, Any]:
  c, ckpt, writer = run.config, run.ckpt, run.writer
  end = min(run.total, c.stop_at_step or run.total)
  throughput = metrics_lib.Throughput(c.batch_size)
  throughput.start(start)
  pending: list[dict] = []  # per-step device metrics since the last sync
  skipped = 0
  last: dict[str, Any] = {}
  first_rate = None
  for s in range(start, end):
    batch, data_state, info = next(batches)
    state, m = run.train_step(state, batch, run.step_key)
    pending.append(m)
    skipped += info['skipped']
    done = s + 1
    if run.trace:
      run.trace.write(json.dumps({'step': done,
                                  'index': info['index'].tolist()}) + '\n')
    if first_rate is None:  # later intervals (and the ETA) exclude compiling
      jax.block_until_ready(m)
      first_rate = throughput.rate(done)
      throughput.start(done)
    is_log = done % c.log_every == 0 or done == end
    is_ckpt = done % c.checkpoint_every == 0 or done == end
    stop = run.preemption.should_stop(at_sync_point=is_log or is_ckpt)
    if is_log or is_ckpt or stop:
      history = jax.device_get(pending)
      pending = []
      try:
        _check_finite(history, done - len(history) + 1)
      except NonFiniteLossError:
        writer.write(done, {k: float(v) for k, v in history[-1].items()})
        ckpt.wait()
        raise
      if is_log:
        last = {k: float(v) for k, v in history[-1].items()}
        last['examples_per_sec'] = (first_rate if done == start + 1
                                    else throughput.rate(done))
        last['bad_records_skipped'] = skipped
        writer.write(done, last)
        writer.show_progress(done, last, throughput.elapsed, start + 1)
    if is_ckpt or stop:
      ckpt.save(done, state, data_state, c)
    if stop:
      ckpt.wait()
      writer.message(f'SIGTERM: saved step {done} to {ckpt.directory}; '
                     'rerun the same command to continue.')
      return {**last, 'step': done, 'preempted': True}
    for ev in run.evals:
      if ev.every_steps and done % ev.every_steps == 0 and done != run.total:
        writer.write(done, _run_eval(ev, state.params, done, writer))
  if end < run.total:
    ckpt.wait()
    writer.message(f'stopped at step {max(start, end)} of {run.total} '
                   '(config.stop_at_step); rerun with a later stop_at_step '
                   '(or 0) to continue.')
    return {**last, 'step': max(start, end), 'preempted': False}
  results = {}
  for ev in run.evals:
    results.update(_run_eval(ev, state.params, run.total, writer))
  if results:
    writer.write(run.total, results)
  return {**last, **results, 'step': run.total, 'preempted': False}


def _run_eval(ev, params, step: int, writer) -> dict[str, float]:
  out = ev.run(params, step)
  if out:
    writer.message(f'[{ev.name} @ step {step}] ' + ', '.join(
        f'{k}={v:.4f}' for k, v in out.items()))
  return out
