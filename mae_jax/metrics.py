"""Where numbers and pictures go: metrics.jsonl, TensorBoard, the console.

Only process 0 writes; the others get a writer that does nothing, so callers
never branch on the process index.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping, Sequence

import numpy as np

from mae_jax.errors import WriteError, describe_os_error


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def _json_value(v):
  """Strict JSON: NaN and infinities become null (json.dumps would write the
  bare tokens NaN / Infinity, which most JSON readers reject)."""
  if isinstance(v, np.generic):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v


class MetricWriter:
  """metrics.jsonl (one JSON object per logged step), TensorBoard event files
  in the workdir, and a progress line on stdout.

  resume_step: the step a resumed run starts from; TensorBoard drops what an
  earlier attempt logged after it, as metrics.jsonl does (workdir.History).
  trackers: W&B / MLflow writers (tracking.py) that get every record too.
  """

  def __init__(self, workdir: str, *, enabled: bool = True,
               progress: bool = True, total_steps: int = 0,
               resume_step: int | None = None, trackers: Sequence = ()):
    self.enabled = enabled
    self.progress = progress and enabled
    self.total_steps = total_steps
    self._tty = sys.stdout.isatty()
    self._jsonl = self._tb = None
    self._trackers = list(trackers) if enabled else []
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a',
                         encoding='utf-8')
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(
          logdir=workdir, flush_secs=30,
          purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    """Appends one record; values must be Python/NumPy scalars."""
    if not self.enabled:
      return
    record = {'step': int(step)}
    record.update((k, _json_value(v)) for k, v in metrics.items())
    try:
      self._jsonl.write(json.dumps(record, allow_nan=False) + '\n')
      self._jsonl.flush()
    except OSError as e:  # a full disk, a vanished mount
      raise WriteError(f'cannot write {self._jsonl.name}: '
                       f'{describe_os_error(e)}; the checkpoints already '
                       'saved are intact') from e
    for k, v in record.items():
      if k != 'step' and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, step)
    for t in self._trackers:
      t.write(step, record)

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    """image: uint8 [H, W, C]."""
    if self.enabled:
      self._tb.add_image(tag, image, step, dataformats='HWC')

  def show_progress(self, step: int, metrics: Mapping[str, float],
                    elapsed: float, start_step: int) -> None:
    """step 120/3000 [4%] loss 0.8123 | 812 ex/s | eta 3m21s"""
    if not self.progress:
      return
    done = step - start_step
    total = self.total_steps
    eta = elapsed / done * (total - step) if done > 0 else float('nan')
    line = (f'step {step}/{total} [{100 * step / max(total, 1):3.0f}%] '
            f'loss {metrics["loss"]:.4f} | '
            f'{metrics.get("examples_per_sec", float("nan")):.0f} ex/s | '
            f'eta {_format_duration(eta) if math.isfinite(eta) else "?"}')
    if self._tty:
      end = '\n' if step >= total else ''
      print(f'\r{line:<78}', end=end, flush=True)
    else:
      print(line, flush=True)

  def message(self, text: str) -> None:
    if self.enabled:
      if self._tty:
        print()
      print(text, flush=True)

  def close(self) -> None:
    """Closes every output, each even when another fails (a full disk);
    then raises the first failure."""
    if not self.enabled:
      return
    failed = []
    for close in (self._jsonl.close, lambda: _close_tensorboard(self._tb),
                  *(t.close for t in self._trackers)):
      try:
        close()
      except Exception as e:  # pylint: disable=broad-except
        failed.append(e)
    if failed:
      raise failed[0]


def _close_tensorboard(tb) -> None:
  """tb.close(), finished by hand when its final flush fails (a full disk).
  tensorboardX would otherwise print tracebacks at exit, after the run's
  one-line error: its writer thread, left waiting on its queue, dies when
  the interpreter closes the queue, and its atexit hook retries the flush.
  So the thread is stopped and the event writer marked closed (tensorboardX
  2.6 internals, looked up defensively)."""
  try:
    tb.close()
  finally:
    for file_writer in list((getattr(tb, 'all_writers', None) or {}).values()):
      events = getattr(file_writer, 'event_writer', None)
      if events is None or getattr(events, '_closed', True):
        continue
      worker = getattr(events, '_worker', None)
      if worker is not None and worker.is_alive():
        worker.stop()
      try:
        events._ev_writer.close()  # pylint: disable=protected-access
      except OSError:
        pass  # the same full disk: the first error is already raised
      events._closed = True  # pylint: disable=protected-access


class Throughput:
  """examples/s over each interval between calls (host wall clock)."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size
    self.start(0)

  def start(self, step: int) -> None:
    self._t0 = self._t = time.perf_counter()
    self._step = step

  @property
  def elapsed(self) -> float:
    return time.perf_counter() - self._t0

  def rate(self, step: int) -> float:
    now = time.perf_counter()
    rate = (step - self._step) * self.batch_size / max(now - self._t, 1e-9)
    self._t, self._step = now, step
    return rate
