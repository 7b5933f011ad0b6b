"""Data worker processes that never hang a run: each grain worker reports its
pid and ignores Ctrl-C (the main process decides what it means), and a
waiting TrainIterator checks that its workers are alive.

What grain 0.2 does alone: an exception inside a worker reaches the caller
(same type and message); a worker killed by a signal is reported about a
second later as a RuntimeError that does not say what to do; a worker that
exits with status 0 (sys.exit inside a library) is waited for forever, and so
is grain's close(). Supervised turns the last two into a DataWorkerError
naming the worker, how it died and what to change.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import re
import signal
import threading
import time

from absl import logging

from mae_jax.errors import DataError

# A waiting TrainIterator checks its worker processes every _POLL_S. A worker
# gone without a failure status counts as died after _GONE_GRACE_S: grain
# itself stops a worker right before re-raising that worker's exception.
_POLL_S = 0.5
_GONE_GRACE_S = 5.0
# close() waits this long for the batch being built, then leaves it; with a
# dead worker only this long (grain polls its workers every second).
_CLOSE_WAIT_S = 30.0
_DEAD_CLOSE_WAIT_S = 3.0


class DataWorkerError(DataError, RuntimeError):
  """A data worker process died (killed, crashed or exited) during a run."""


class WorkerInit:
  """worker_init_fn of grain worker i: writes its pid to <folder>/<i>, and
  ignores SIGINT, which a terminal's Ctrl-C sends to every process of the
  job: the main process decides what it means (save and stop) and then
  stops the workers itself."""

  def __init__(self, folder: str):
    self.folder = folder

  def __call__(self, index: int, count: int) -> None:
    del count
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tmp = os.path.join(self.folder, f'.{index}')
    with open(tmp, 'w', encoding='ascii') as f:
      f.write(str(os.getpid()))
    os.replace(tmp, os.path.join(self.folder, str(index)))  # never half a pid


def _exit_status(code: int) -> str:
  if code == -signal.SIGKILL:
    return ('was killed by signal 9 (SIGKILL), as the OOM killer does when '
            'the machine runs out of memory')
  if code > 0:
    return (f'exited with status {code} (its error, if it printed one, is '
            'in the log above)')
  try:
    name = f' ({signal.Signals(-code).name})'
  except ValueError:
    name = ''
  return f'was killed by signal {-code}{name}'


class WorkerWatch:
  """Liveness of the worker processes of one grain mp_prefetch.

  Workers report their pids (WorkerInit); their multiprocessing.Process
  objects are picked from active_children() while alive and kept, so the
  exit status stays readable after a worker dies.
  """

  def __init__(self, folder: str, count: int):
    self.folder, self.count = folder, count
    self._procs: dict[int, multiprocessing.process.BaseProcess] = {}
    self._gone_since: dict[int, float] = {}

  def _pids(self) -> dict[int, int]:
    pids = {}
    for i in range(self.count):
      try:
        with open(os.path.join(self.folder, str(i)), encoding='ascii') as f:
          pids[i] = int(f.read())
      except (OSError, ValueError):
        pass  # not started yet
    return pids

  def capture(self) -> None:
    if len(self._procs) == self.count:
      return
    alive = {p.pid: p for p in multiprocessing.active_children()}
    for i, pid in self._pids().items():
      if i not in self._procs and pid in alive:
        self._procs[i] = alive[pid]

  def failure(self, patient: bool = True) -> str | None:
    """Which worker died and how, or None.

    A failure status counts at once. Status 0, or gone before we saw its
    status, counts only when `patient` and lasting _GONE_GRACE_S.
    """
    self.capture()
    alive = None
    for i, pid in sorted(self._pids().items()):
      proc = self._procs.get(i)
      if proc is not None:
        code = proc.exitcode
        if code is None:
          continue
        if code != 0:
          return (f'data worker process {i} of {self.count} (pid {pid}) '
                  f'{_exit_status(code)}')
      else:
        if alive is None:
          alive = {p.pid for p in multiprocessing.active_children()}
        if pid in alive:
          continue
      since = self._gone_since.setdefault(i, time.monotonic())
      if patient and time.monotonic() - since >= _GONE_GRACE_S:
        return (f'data worker process {i} of {self.count} (pid {pid}) exited '
                'while the run still needed it')
    return None

  def kill_all(self) -> None:
    for proc in self._procs.values():
      if proc.exitcode is None:
        proc.kill()


class Supervised:
  """A grain iterator with worker processes, pulled in a thread so that the
  caller, waiting in _POLL_S slices, can notice dead workers.

  grain 0.2 reports a worker killed by a signal about a second later, as a
  RuntimeError that does not say what to do, and waits forever on a worker
  that exited with status 0 (e.g. sys.exit in a library).
  """

  def __init__(self, it, watch: WorkerWatch, advice: str):
    self._it = it
    self._watch = watch
    self._advice = advice
    self._dead = False  # a DataWorkerError was raised
    self._queue = queue.Queue(maxsize=1)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._pull, daemon=True,
                                    name='mae_jax-data-pull')
    self._thread.start()

  def _pull(self) -> None:
    while not self._stop.is_set():
      try:
        item = (next(self._it), None)
      except Exception as e:  # pylint: disable=broad-except  # for next()
        item = (None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=_POLL_S)
          break
        except queue.Full:
          pass
      if item[1] is not None:
        return

  def _died(self, what: str) -> DataWorkerError:
    self._dead = True
    return DataWorkerError(f'{what}. {self._advice}')

  def next(self) -> dict:
    while True:
      try:
        batch, error = self._queue.get(timeout=_POLL_S)
      except queue.Empty:
        what = self._watch.failure()
        if what:
          raise self._died(what) from None
        continue
      self._watch.capture()
      if error is None:
        return batch
      what = self._watch.failure(patient=False)
      # grain's own report, for a worker that died before we saw its pid:
      # "Worker process was terminated unexpectedly with exit code -9. ..."
      code = re.search(r'terminated unexpectedly with exit code (-?\d+)',
                       str(error))
      if what is None and code:
        what = f'a data worker process {_exit_status(int(code.group(1)))}'
      if what:
        raise self._died(what) from error
      raise error

  def close(self) -> None:
    self._stop.set()
    try:  # frees a put() that waits for room, so the thread sees the stop
      self._queue.get_nowait()
    except queue.Empty:
      pass
    if self._dead or self._watch.failure(patient=False):
      # grain notices dead workers within ~1 s and raises, which ends the
      # thread, but waits forever on one that exited with status 0 (and so
      # would its close): stop the others, wait a little, leave what is stuck.
      self._watch.kill_all()
      self._thread.join(_DEAD_CLOSE_WAIT_S)
    else:
      self._thread.join(_CLOSE_WAIT_S)  # the batch being built
    if self._thread.is_alive():
      logging.warning('data pipeline still busy when closed; left running')
      self._watch.kill_all()
      return
    self._it.close()
