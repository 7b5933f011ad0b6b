"""Stopping cleanly: SIGTERM (preemption), SIGINT (Ctrl-C), and peers that
fail, without losing a step and without hanging.

Two phases:
  start-up  (config checks, restore, compile): nothing has been trained yet,
            so a signal raises errors.Interrupted at once and the run exits
            with a message; nothing is half-written (the workdir is only
            written after the checks).
  training  the signal only sets a flag; the loop saves a checkpoint at the
            current step and returns. With several processes they agree on
            the flag at sync points (an all-gather), so all of them save the
            same step. A second Ctrl-C aborts at once (exit status 130)
            without saving; the last completed checkpoint stays intact.

Peers (multi-process runs): at every sync point all processes meet at a
barrier of jax's coordination service with a timeout (config.peer_timeout_s),
so a process that died (OOM-killed, crashed) or hangs stops the others with a
message instead of leaving them waiting in a collective. A process that fails
with an error leaves its message in the service's key-value store first, and
the others quote it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import numpy as np

from mae_jax import errors

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _name(signum: int) -> str:
  return signal.Signals(signum).name


def _raise_interrupted(signum, frame):
  del frame
  raise errors.Interrupted(
      f'{_name(signum)} during start-up: stopped before the first training '
      'step; no checkpoint was written. Rerun the same command to start.')


def install_startup_handlers() -> None:
  """Start-up phase: a signal raises errors.Interrupted (main thread only)."""
  if threading.current_thread() is threading.main_thread():
    for s in _SIGNALS:
      signal.signal(s, _raise_interrupted)


def restore_default_handlers() -> None:
  if threading.current_thread() is threading.main_thread():
    for s in _SIGNALS:
      signal.signal(s, signal.SIG_DFL)


class Preemption:
  """Training phase: SIGTERM/SIGINT -> save at the current step and stop.

  A context manager: entering switches the handlers to flag mode, leaving
  puts back the previous ones.
  """

  def __init__(self, peer_timeout_s: float = 600.0):
    self.signal: str | None = None  # name of the first signal received
    self.peer_timeout_s = peer_timeout_s
    self._previous = {}

  def __enter__(self) -> 'Preemption':
    if threading.current_thread() is threading.main_thread():
      for s in _SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  @property
  def requested(self) -> bool:
    return self.signal is not None

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signal == 'SIGINT':
      # os._exit: not an exception, which could be caught (or wait on a save)
      # on its way up; the checkpoints already committed are complete.
      print('\nSecond Ctrl-C: aborting now without saving.', file=sys.stderr,
            flush=True)
      os._exit(130)
    if self.signal is None:
      self.signal = _name(signum)
      if signum == signal.SIGINT:
        print('\nCtrl-C: saving a checkpoint at the current step (press Ctrl-C '
              'again to abort without saving) ...', file=sys.stderr, flush=True)

  def should_stop(self, step: int, at_sync_point: bool) -> bool:
    """Whether to save and stop after `step`. With several processes the
    answer changes only at sync points, where they also check on each other."""
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() == 1:
      return self.requested
    if not at_sync_point:
      return False
    sync_peers(step, self.peer_timeout_s)
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return bool(np.max(flags))


def _client():
  """jax's coordination-service client, or None outside multi-process runs."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


_FAILED_KEY = 'mae_jax/failed'


def report_failure(message: str) -> None:
  """Leaves this process's error where the other processes look for it."""
  import jax  # pylint: disable=g-import-not-at-top
  client = _client()
  if client is not None:
    try:
      client.key_value_set(_FAILED_KEY,
                           f'process {jax.process_index()}: {message}')
    except Exception:  # pylint: disable=broad-except
      pass  # the service may be gone too; our own log has the message


def sync_peers(step: int, timeout_s: float) -> None:
  """Every process reaches `step`'s sync point within timeout_s, or
  errors.PeerError on each process that did."""
  client = _client()
  if client is None:
    return
  try:
    client.wait_at_barrier(f'mae_jax/step_{step}', int(timeout_s * 1000))
    return
  except Exception as e:  # pylint: disable=broad-except
    cause = e
  try:
    why = client.key_value_try_get(_FAILED_KEY)
  except Exception:  # pylint: disable=broad-except
    why = ('no process reported an error: one was killed (out of memory?) or '
           f'hangs; see the logs ({str(cause).splitlines()[0][:200]})')
  raise errors.PeerError(
      f'not every process reached step {step} within {timeout_s:g} s '
      f'(config.peer_timeout_s): {why}. Stopping; the checkpoints already '
      'saved are intact.')
