"""The workdir: one run's directory, and the rules that keep what it holds.

  config.json     the resolved config of the latest start
  metrics.jsonl   one strict-JSON record per logged step, steps never repeat
  checkpoints/    orbax: one directory per saved step
  history/<UTC time>_step_<N>/
                  what a start at step N set aside instead of deleting: the
                  config.json it replaced, the metric records after step N and
                  the checkpoints after step N (when resuming from an earlier
                  checkpoint, or after a crash that logged past the last save)
  .lock           held by the live run (see Lock)

Nothing here is written before every check of a run has passed (train.py).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
from typing import Iterable

from mae_jax.errors import WorkdirError


def _first_existing(path: str) -> str:
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def check_usable(workdir: str) -> None:
  """WorkdirError unless `workdir` is (or can be created as) a writable
  directory. Writes nothing."""
  flag = f'--workdir={workdir}'
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'{flag} is a file; give a directory (it is created if '
                       'missing)')
  base = _first_existing(workdir)
  if not os.path.isdir(base):
    raise WorkdirError(f'{flag}: {base} is a file, so the directory cannot be '
                       'created there')
  # access() also reports a read-only file system (EROFS), even to root.
  for d in (base, os.path.join(workdir, 'checkpoints')):
    if os.path.isdir(d) and not os.access(d, os.W_OK | os.X_OK):
      raise WorkdirError(f'{flag}: {d} is not writable (read-only file system '
                         'or permissions); give a writable directory')


def check_space(workdir: str, need_bytes: int, what: str) -> None:
  """WorkdirError when the file system has less free space than `need_bytes`
  (e.g. one checkpoint), before anything is trained."""
  free = shutil.disk_usage(_first_existing(workdir)).free
  if free < need_bytes:
    raise WorkdirError(
        f'--workdir={workdir}: {free / 2**30:.2f} GiB free, but {what} needs '
        f'about {need_bytes / 2**30:.2f} GiB; free space or use another '
        'directory')


class Lock:
  """One live run per workdir: a POSIX lock on <workdir>/.lock.

  The kernel drops the lock when the holding process ends, however it ends
  (kill -9, a crash), so a dead run never leaves it stuck. POSIX (fcntl)
  locks belong to the process, not to forked children such as data workers,
  and work on NFS. Only process 0 of a multi-process run takes it.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, '.lock')
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> None:
    if self.held:
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.read(fd, 4096).decode(errors='replace')
      os.close(fd)
      try:
        h = json.loads(holder)
        who = f' (pid {h["pid"]} on {h["host"]}, started {h["started"]})'
      except (ValueError, KeyError, TypeError):
        who = ''
      raise WorkdirError(
          f'--workdir={os.path.dirname(self.path)} is in use by another run'
          f'{who}. Wait for it to finish or stop it (SIGTERM saves a '
          'checkpoint), or use another --workdir.') from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({
        'pid': os.getpid(), 'host': socket.gethostname(),
        'started': datetime.datetime.now().isoformat(timespec='seconds'),
    }).encode())
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing drops the POSIX lock
      self._fd = None


def write_atomic(path: str, text: str) -> None:
  """A crash leaves either the old file or the new one, never half of one."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class History:
  """history/<UTC time>_step_<N>/: what the start at step N set aside.
  Created on first use only."""

  def __init__(self, workdir: str, step: int):
    self.workdir, self.step = workdir, step
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
        '%Y%m%dT%H%M%SZ')
    self.path = os.path.join(workdir, 'history', f'{stamp}_step_{step}')
    self.notes: list[str] = []

  def _folder(self) -> str:
    os.makedirs(self.path, exist_ok=True)
    return self.path

  def write_config(self, config_dict: dict) -> None:
    """config.json := config_dict; a different previous one is kept here."""
    path = os.path.join(self.workdir, 'config.json')
    text = json.dumps(config_dict, indent=2, sort_keys=True)
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        old = f.read()
      if old == text:
        return
      shutil.copy2(path, os.path.join(self._folder(), 'config.json'))
      self.notes.append('the previous config.json')
    write_atomic(path, text)

  def rewind_metrics(self) -> None:
    """Keeps metrics.jsonl's records up to the resume step; the later ones
    (and any unreadable line, e.g. cut by a crash) move here."""
    path = os.path.join(self.workdir, 'metrics.jsonl')
    if not os.path.exists(path):
      return
    keep, moved = [], []
    with open(path, encoding='utf-8') as f:
      for line in f:
        try:
          ok = json.loads(line)['step'] <= self.step
        except (ValueError, KeyError, TypeError):
          ok = False
        (keep if ok else moved).append(line if line.endswith('\n')
                                       else line + '\n')
    if moved:
      with open(os.path.join(self._folder(), 'metrics.jsonl'), 'a',
                encoding='utf-8') as f:
        f.writelines(moved)
      write_atomic(path, ''.join(keep))
      self.notes.append(f'{len(moved)} metric record(s) after step '
                        f'{self.step}')

  def move_checkpoints(self, directory: str, steps: Iterable[int]) -> None:
    """Moves checkpoint step directories (e.g. those after the resume step)."""
    steps = sorted(steps)
    if not steps:
      return
    dest = os.path.join(self._folder(), 'checkpoints')
    os.makedirs(dest, exist_ok=True)
    for s in steps:
      os.replace(os.path.join(directory, str(s)), os.path.join(dest, str(s)))
    self.notes.append(f'checkpoint(s) {", ".join(map(str, steps))}')

  def summary(self) -> str:
    """What this start set aside (or cleaned up), for the console."""
    return (f'{os.path.relpath(self.path, self.workdir)}/ holds what this '
            'start set aside: ' + '; '.join(self.notes))
