"""The training loop: checks -> restore or init -> workdir -> steps ->
checkpoints, logs and evaluators.

Start-up order, so that a refused run changes nothing in its workdir:
  1. check everything that can be checked: config values, the workdir (a
     writable directory that no live run holds), the data of training and of
     every enabled evaluator, the checkpoint to resume from (its items, its
     model, total_steps), the free space for a checkpoint;
  2. restore the state and the data iterator (or initialize them);
  3. only then write: take the lock, set aside what lies beyond the resume
     step into history/ (workdir.py), write config.json;
  4. train.
With several processes a refusal on any of them stops all of them at once
(_agreed) instead of leaving the others waiting in a collective.

Host-side only: the math lives in step.py. The loop never waits on the device
between log/checkpoint points; per-step metrics stay on device until then.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
from typing import Any, Callable, Iterator, TextIO

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from mae_jax import checkpoint, config as config_lib, data, errors, evaluators
from mae_jax import metrics as metrics_lib, optim, sharding, step as step_lib
from mae_jax import init_from as init_from_lib
from mae_jax import tracking, workdir as workdir_lib
from mae_jax.preemption import Preemption

NonFiniteLossError = errors.NonFiniteLossError


def _closing(stack: contextlib.ExitStack, close: Callable[[], None]) -> None:
  """Registers `close` to run when `stack` unwinds. If the run is already
  failing, an error of `close` (a flush on the same full disk, say) must not
  replace the first error, which says what went wrong."""

  def on_exit(exc_type, exc, tb):
    del exc, tb
    try:
      close()
    except Exception:  # pylint: disable=broad-except
      if exc_type is None:
        raise
    return False

  stack.push(on_exit)


@contextlib.contextmanager
def _agreed():
  """Runs a block on every process; if it raised on any, it raises on all
  (the others name the process that refused)."""
  failure = None
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    failure = e
  if jax.process_count() > 1:
    failed = multihost_utils.process_allgather(np.int32(failure is not None))
    if failure is None and np.any(failed):
      raise errors.ConfigError(
          f'process {int(np.argmax(failed))} refused to start (its log says '
          'why); stopping every process')
  if failure is not None:
    raise failure


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


def _recovery_advice(ckpt: checkpoint.Checkpointer) -> str:
  saved = ckpt.steps()
  if not saved:
    return ('No checkpoint was saved yet: rerun with a lower '
            '--config.optim.base_lr, --config.optim.clip_norm=1.0 or a longer '
            'warmup (--config.optim.warmup_steps).')
  return (f'The checkpoints already saved are intact (steps {saved}). To go '
          'on in this workdir from before the divergence, rerun with '
          f'--config.resume_step={saved[-1]} (or an earlier one) and a lower '
          '--config.optim.base_lr, --config.optim.clip_norm=1.0 or a longer '
          '--config.optim.warmup_steps; the records after that step move to '
          'history/.')


def _check_finite(history: list[dict], first_step: int, ckpt) -> None:
  for i, m in enumerate(history):
    if not (np.isfinite(m['loss']) and np.isfinite(m['grad_norm'])):
      raise NonFiniteLossError(
          f'non-finite loss at step {first_step + i} (loss={m["loss"]}, '
          f'grad_norm={m["grad_norm"]}); stopping. ' + _recovery_advice(ckpt))


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


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


def _resume_hint(k: int) -> str:
  return (f'resume from one with --config.resume_step={k} (the later '
          'checkpoints then move to <workdir>/history/, nothing is deleted)')


def _resume_point(config, reader: checkpoint.Checkpointer | None,
                  total: int) -> int | None:
  """The step to resume from (None: start fresh), checked for damage."""
  steps = reader.steps() if reader else []
  if config.resume_step:
    if config.resume_step not in steps:
      raise errors.CheckpointError(
          f'config.resume_step={config.resume_step}: no checkpoint of that '
          f'step in the workdir; available: {steps or "none"}')
    step = config.resume_step
  elif steps:
    step = steps[-1]
  else:
    return None
  if step > total:
    raise errors.ConfigError(
        f'the checkpoint to resume from is at step {step}, past the end of '
        f'this run ({total} steps from config.total_steps / total_epochs): '
        'raise them to train further, pick an earlier '
        '--config.resume_step, or use a new --workdir')
  return step


def _check_labels(config, source) -> None:
  """Fine-tuning needs labels, all below the head's classes."""
  if config.task != 'classify':
    return
  if source.num_classes == 0:
    raise errors.ConfigError(
        f"task='classify' needs labels, but split {config.data.split!r} of "
        f'config.data.source={config.data.source!r} is unlabelled')
  if source.num_classes > config.classify.num_classes:
    raise errors.ConfigError(
        f'config.classify.num_classes={config.classify.num_classes}: split '
        f'{config.data.split!r} has {source.num_classes} classes; set it to '
        f'at least {source.num_classes}')


def _summary(config, mesh, source, total: int, params: int, start: int,
             workdir: str) -> str:
  spe = optim.steps_per_epoch(config, len(source))
  mesh_text = ' x '.join(f'{k}={v}' for k, v in mesh.shape.items())
  m = config.model
  objective = (f'{m.decoder} decoder, input {config_lib.input_shape(config)}'
               f', masking {config.masking.name} {config.masking.ratio}'
               if config.task == 'pretrain' else
               f'linear head ({config.classify.num_classes} classes, '
               f'{config.classify.pool} pool), input '
               f'{config_lib.input_shape(config)}')
  return '\n'.join((
      f'devices   {jax.device_count()} x {jax.devices()[0].device_kind} in '
      f'{jax.process_count()} process(es); mesh {mesh_text}',
      f'model     ViT-{m.variant} encoder + {objective}: {params:,} '
      'parameters',
      f'data      {source.name}: {len(source):,} examples; batch '
      f'{config.batch_size} ({config.batch_size // jax.process_count()} per '
      f'process), {spe:,} steps per epoch',
      f'schedule  {total:,} steps ({total / spe:.2f} epochs)',
      f'workdir   {workdir}: ' + (
          f'resuming at step {start}' if start else 'starting at step 0' + (
              f' from the parameters of {config.init_from}'
              if config.init_from else ''))))


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains per `config` in `workdir`, resuming from its latest checkpoint
  (or config.resume_step).

  Returns the last logged metrics plus the evaluators' results, and
  'preempted': True when SIGTERM / SIGINT stopped the run early.
  """
  lock = workdir_lib.Lock(os.path.abspath(workdir))
  try:
    return _train(config, os.path.abspath(workdir), lock)
  finally:
    lock.release()


def _train(config, workdir: str, lock: workdir_lib.Lock) -> dict[str, Any]:
  is_main = jax.process_index() == 0
  ckpt_dir = checkpoint.checkpoint_dir(workdir)
  with _agreed():  # 1. checks: nothing is written
    config_lib.validate(config, jax.device_count(), jax.process_count())
    workdir_lib.check_usable(workdir)
    if is_main and os.path.isdir(workdir):
      lock.acquire()  # before reading checkpoints a live run may be writing
    source = config_lib.open_split(config, config.data.split, 'training')
    _check_labels(config, source)
    evaluators.check_data(config, opened={config.data.split: source})
    total = optim.total_steps(config, len(source))
    lr = optim.schedule(config, len(source))
  tx = optim.optimizer(config, lr)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  mesh = sharding.make_mesh(config.mesh)

  with contextlib.ExitStack() as cleanup, sharding.rules_context(
      mesh, config.sharding.rules):
    with _agreed():
      setup = step_lib.StateSetup(config, tx, mesh)
      workdir_lib.check_space(workdir, sum(
          x.size * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract)),
                              'one checkpoint')
      reader = (checkpoint.Checkpointer(ckpt_dir, read_only=True)
                if os.path.isdir(ckpt_dir) else None)
      start = _resume_point(config, reader, total)
      if start is not None:
        meta = reader.verify(start, _resume_hint)
        reader.check_compatible(start, config, setup.abstract, meta['config'])
      init_from = (init_from_lib.InitFrom(config, setup) if start is None
                   and config.init_from else None)

    # 2. restore or initialize
    host_iter = data.build_train_iterator(
        config.data, image_size=config_lib.image_size(config),
        channels=config.model.channels, global_batch=config.batch_size,
        seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), source=source,
        frames=config.model.frames)
    _closing(cleanup, getattr(host_iter, 'close', lambda: None))
    with _agreed():
      if init_from is not None:
        state = init_from.restore(tx, init_key)
      elif start is None:
        state = setup.init(init_key)
      else:
        state = reader.restore(start, setup.abstract, host_iter, _resume_hint)
    start = start or 0
    if reader:
      later = [s for s in reader.steps() if s > start]
      reader.close()

    # 3. write: the workdir now belongs to this run. From here on a signal
    # only asks the loop to save and stop (also while it closes, below).
    preemption = cleanup.enter_context(Preemption(config.peer_timeout_s))
    history = workdir_lib.History(workdir, start)
    removed = []  # unfinished saves of an interrupted run
    with _agreed():  # also the others' signal that the workdir is ready
      if is_main:
        lock.acquire()
        if reader:
          history.move_checkpoints(ckpt_dir, later)
          removed = checkpoint.remove_unfinished(ckpt_dir)
        history.rewind_metrics()
        history.write_config(config.to_dict())
    writer = metrics_lib.MetricWriter(
        workdir, enabled=is_main, progress=config.progress, total_steps=total,
        resume_step=start or None,
        trackers=tracking.build(config, workdir, enabled=is_main))
    _closing(cleanup, writer.close)
    ckpt = checkpoint.Checkpointer(ckpt_dir, keep=config.keep_checkpoints,
                                   save_timeout_s=config.checkpoint_timeout_s)
    _closing(cleanup, ckpt.close)  # first: the stack unwinds last-in, first-out
    params = sum(x.size for x in jax.tree.leaves(setup.abstract.params))
    writer.message(_summary(config, mesh, source, total, params, start,
                            workdir))
    if history.notes:
      writer.message(history.summary())
    for note in init_from.notes if init_from else ():
      writer.message(note)
    if removed:
      writer.message('removed the unfinished saves of an interrupted run: '
                     + ', '.join(map(os.path.basename, removed)))

    # 4. train
    ctx = evaluators.EvalContext(config=config, graphdef=setup.graphdef,
                                 mesh=mesh, init_params=setup.init_params,
                                 baseline_key=init_key, writer=writer,
                                 workdir=workdir)
    run = _Run(config, setup.train_step(lr), step_key, ckpt, writer,
               evaluators.build(ctx), preemption, total,
               _open_trace(config, workdir))
    if run.trace:
      _closing(cleanup, run.trace.close)
    batches = device_batches(host_iter, setup.batch_shardings, prefetch=2)
    return _loop(run, state, batches, start)


def _save(run: _Run, step: int, state, data_state) -> None:
  """Saves, unless the parameters are no longer finite (a huge update can
  overflow them while the loss of that step was still finite)."""
  if not bool(_all_finite(state.params)):
    run.ckpt.wait()
    raise NonFiniteLossError(
        f'the parameters became non-finite at step {step} (the update '
        'overflowed); stopping without saving them. '
        + _recovery_advice(run.ckpt))
  run.ckpt.save(step, state, data_state, run.config)


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
    stop = run.preemption.should_stop(done, at_sync_point=is_log or is_ckpt)
    if is_log or is_ckpt or stop:
      history = jax.device_get(pending)
      pending = []
      try:
        _check_finite(history, done - len(history) + 1, ckpt)
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
      _save(run, done, state, data_state)
    if stop:
      ckpt.wait()
      why = run.preemption.signal or 'a stop request from another process'
      writer.message(f'{why}: saved step {done} to {ckpt.directory}; '
                     'rerun the same command to continue.')
      return {**last, 'step': done, 'preempted': True}
    for ev in run.evals:
      if ev.every_steps and done % ev.every_steps == 0 and done != run.total:
        writer.write(done, _run_eval(ev, state, done, run))
  if end < run.total:
    ckpt.wait()
    writer.message(f'stopped at step {max(start, end)} of {run.total} '
                   '(config.stop_at_step); rerun with a later stop_at_step '
                   '(or 0) to continue.')
    return {**last, 'step': max(start, end), 'preempted': False}
  results = {}
  for ev in run.evals:
    results.update(_run_eval(ev, state, run.total, run))
  if results:
    writer.write(run.total, results)
  return {**last, **results, 'step': run.total, 'preempted': False}


def _run_eval(ev, state, step: int, run: _Run) -> dict[str, float]:
  """The evaluator on the parameters, and on their EMA if the run keeps one
  (its keys prefixed ema/)."""
  out = ev.run(state.params, step)
  ema = optim.ema_params(run.config, state.opt_state)
  if ema is not None:
    out.update({f'ema/{k}': v for k, v in ev.run(ema, step, 'ema').items()})
  writer = run.writer
  if out:
    writer.message(f'[{ev.name} @ step {step}] ' + ', '.join(
        f'{k}={v:.4f}' for k, v in out.items()))
  return out
