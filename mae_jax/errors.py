"""Every failure a user can cause or fix, as one exception family.

The command-line tools print an `Error` as one line (`error: <message>`)
without a traceback and exit with status 1; anything else is a bug and keeps
its traceback. `MAE_JAX_TRACEBACK=1` shows the full traceback of every error.
Messages name the key, file, step or argument at fault and what is allowed.
"""

from __future__ import annotations

import os
import re


def describe_os_error(e: BaseException) -> str:
  """A storage error in a few words: 'No space left on device (errno 28)',
  with the file when known. Also tensorstore's errors (orbax's arrays), which
  carry the OS error code in their text."""
  if isinstance(e, OSError) and e.errno:
    where = f'{e.filename}: ' if e.filename else ''
    return f'{where}{os.strerror(e.errno)} (errno {e.errno})'
  text = str(e)
  if isinstance(e, OSError) and text:
    return text  # raised with a message of its own (FileNotFoundError(msg))
  m = re.search(r"os_error_code='(\d+)'", text)
  if m:
    return f'{os.strerror(int(m.group(1)))} (errno {m.group(1)})'
  first = (text.strip().splitlines() or [type(e).__name__])[0]
  return f'{type(e).__name__}: {first[:300]}'


class Error(Exception):
  """Base of all user-facing errors."""


class ConfigError(Error, ValueError):
  """A config (or a workdir/checkpoint) the run cannot use."""


class WorkdirError(ConfigError):
  """The workdir cannot be used: a file, read-only, or held by another run."""


class CheckpointError(ConfigError):
  """A checkpoint that is missing, damaged or does not match the config."""


class CheckpointSaveError(Error, OSError):
  """A checkpoint could not be written (disk full, read-only, storage error,
  or a save that did not finish in time)."""


class WriteError(Error, OSError):
  """A workdir file (metrics, pictures, config) could not be written."""


class DataError(Error, ValueError):
  """Input data that cannot be read (a bad record, file or worker)."""


class PeerError(Error):
  """Another process of a multi-process run died, failed or stopped
  responding."""


class NonFiniteLossError(Error, FloatingPointError):
  """Training diverged: a loss or gradient norm that is NaN or infinite."""


class Interrupted(BaseException):
  """SIGTERM or SIGINT before training started: nothing to save. Raised from
  a signal handler, so a BaseException like KeyboardInterrupt: code that
  catches Exception on its way up (a logging handler, a retry loop) must not
  swallow it."""
