"""What every command-line tool shares: configs found by name, and failures
shown as one line.

  mae-jax --config=demo --workdir=w           # a config shipped with the package
  mae-jax --config=configs/demo.py:epochs=5   # or any file, with its argument

Failure output is `error: <what is wrong and what is allowed>` on stderr,
no traceback: exit status 2 for flags and config files, 1 for everything the
run finds later (mae_jax.errors.Error, and OSErrors such as a full disk).
Set MAE_JAX_TRACEBACK=1 to see the full traceback of any failure (and the
log lines of orbax and grain that are otherwise hidden when they fail).
"""

from __future__ import annotations

import ast
import logging as std_logging
import os
import re
import sys
import threading
import traceback
from typing import Callable

from absl import app, flags, logging

from mae_jax import errors, preemption

TRACEBACK_ENV = 'MAE_JAX_TRACEBACK'
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# Configs ship inside the wheel as mae_jax/configs; a source checkout keeps
# them in configs/ beside the package.
CONFIG_DIRS = (os.path.join(_PACKAGE, 'configs'),
               os.path.join(os.path.dirname(_PACKAGE), 'configs'))


def show_tracebacks() -> bool:
  return os.environ.get(TRACEBACK_ENV, '') not in ('', '0')


def packaged_configs() -> list[str]:
  names = set()
  for d in CONFIG_DIRS:
    if os.path.isdir(d):
      names.update(f[:-3] for f in os.listdir(d)
                   if f.endswith('.py') and not f.startswith('_'))
  return sorted(names)


def resolve_config(value: str) -> str:
  """'demo', 'demo.py:ARG', 'configs/demo.py' or a path -> 'PATH[:ARG]'.

  An existing file wins; otherwise the name is looked up among the configs
  shipped with mae_jax. Checks that the file parses and defines get_config,
  so a broken config file is one message, not a traceback.
  """
  path, sep, arg = value.partition(':')
  if not os.path.isfile(path):
    name = os.path.basename(path)
    name = name[:-3] if name.endswith('.py') else name
    found = [os.path.join(d, f'{name}.py') for d in CONFIG_DIRS
             if os.path.isfile(os.path.join(d, f'{name}.py'))]
    if not found:
      raise app.UsageError(
          f'--config={value}: no file {path!r} and no config named {name!r} '
          f'shipped with mae_jax (shipped: {", ".join(packaged_configs())})')
    path = found[0]
  try:
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read(), filename=path)
  except SyntaxError as e:
    raise app.UsageError(f'--config={value}: {path} line {e.lineno}: '
                         f'{e.msg}') from None
  except (OSError, UnicodeDecodeError) as e:
    raise app.UsageError(f'--config={value}: cannot read {path}: {e}') from None
  if not any(isinstance(n, ast.FunctionDef) and n.name == 'get_config'
             for n in tree.body):
    raise app.UsageError(f'--config={value}: {path} defines no get_config() '
                         'function (a config file returns its ConfigDict '
                         'from get_config(arg=None))')
  return path + sep + arg


def _resolve_argv(argv: list[str]) -> list[str]:
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith('--config='):
      out[i] = '--config=' + resolve_config(a[len('--config='):])
    elif a == '--config' and i + 1 < len(out):
      out[i + 1] = resolve_config(out[i + 1])
  return out


def _override_key(argv: list[str], missing: str) -> str | None:
  """The --config.KEY of the argument that names `missing`."""
  for a in argv:
    key = a.split('=', 1)[0]
    if key.startswith('--config.') and missing in key.split('.'):
      return key[2:]
  return None


def _describe_flag_error(e: Exception, argv: list[str]) -> str:
  text = str(e)
  if isinstance(e, (AttributeError, KeyError)):
    # ml_collections: 'key' plus, when close to a real key,
    # 'Did you mean "real" instead of "key"?' (escaped, quoted, nested).
    text = text.replace('\\n', '\n').replace('\\', '')
    words = re.findall(r'[A-Za-z_][A-Za-z0-9_]*', text.splitlines()[0])
    missing = words[0] if words else text
    key = _override_key(argv, missing)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    hint_text = ''
    if key and hint:
      hint_text = f'; did you mean --{key.rsplit(".", 1)[0]}.{hint.group(1)}?'
    return (f'--{key or "config"}: no such config key{hint_text} (every key '
            'and its default: mae_jax/config.py)')
  if 'Error whilst parsing config file' in text:
    # get_config raised: its last traceback line is the message.
    last = [l for l in text.splitlines() if l.strip()][-1].strip()
    for prefix in ('mae_jax.errors.ConfigError: ', 'ConfigError: '):
      last = last.removeprefix(prefix)
    given = [a for a in argv if a.startswith('--config=')]
    return f'{given[-1] if given else "--config"}: {last}'
  return text.splitlines()[0] if text else type(e).__name__


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags_parser: resolves --config by name; one-line errors."""
  try:
    return flags.FLAGS(_resolve_argv(argv))
  except app.UsageError as e:
    _exit(str(e), 2)
  except Exception as e:  # pylint: disable=broad-except
    if show_tracebacks():
      raise
    _exit(_describe_flag_error(e, argv), 2)


# Libraries whose failures we report ourselves, as one message with the cause.
_QUIET_LIBS = tuple(f'{os.sep}{lib}{os.sep}' for lib in ('orbax', 'grain',
                                                        'asyncio'))


def _quiet_failures() -> None:
  """Keep orbax/grain's own error logs and their background threads'
  tracebacks off the console: our message says what failed, with the cause.
  Other threads' tracebacks (bugs) still print."""

  class _DropLibraryErrors(std_logging.Filter):

    def filter(self, record: std_logging.LogRecord) -> bool:
      # asyncio: orbax's failed writes also end as "exception was never
      # retrieved" reports of its event loops.
      return not (record.levelno >= std_logging.ERROR and (
          record.name == 'asyncio'
          or any(lib in record.pathname for lib in _QUIET_LIBS)))

  def quiet(default):
    """A threading.excepthook / sys.unraisablehook that drops what those
    libraries' threads and callbacks raise (e.g. tensorstore's callbacks into
    an orbax event loop that closed on the error)."""
    def hook(args):
      frames = traceback.extract_tb(args.exc_traceback)
      if not any(lib in f.filename for f in frames for lib in _QUIET_LIBS):
        default(args)
    return hook

  logging.get_absl_handler().addFilter(_DropLibraryErrors())
  threading.excepthook = quiet(threading.excepthook)
  sys.unraisablehook = quiet(sys.unraisablehook)


def _exit(message: str, code: int) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  # What fails after the message (a flush at exit on the same full disk) is
  # not news.
  sys.unraisablehook = lambda args: None
  if 'jax' in sys.modules and sys.modules['jax'].process_count() > 1:
    # Tell the other processes why, and leave at once: a normal exit would
    # wait in jax's shutdown barrier for peers that may be stuck in a
    # collective with this process.
    preemption.report_failure(message)
    os._exit(code)
  # Background threads (a storage client stuck in a save, data workers) must
  # not keep a failed run alive: exit hard if a normal exit does not finish.
  timer = threading.Timer(30.0, os._exit, (code,))
  timer.daemon = True
  timer.start()
  sys.exit(code)


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main) with configs found by name and one-line failures."""
  preemption.install_startup_handlers()
  if not show_tracebacks():
    _quiet_failures()

  def guarded(argv):
    if not flags.FLAGS['verbosity'].present:
      # orbax and grain log every save at INFO; keep the console readable.
      logging.set_verbosity(logging.WARNING)
    try:
      if show_tracebacks():
        return main(argv)
      try:
        return main(argv)
      except errors.Error as e:
        _exit(str(e), 1)
      except OSError as e:  # disk full, permissions, a vanished file ...
        _exit(errors.describe_os_error(e), 1)
    finally:
      preemption.restore_default_handlers()  # the run is over: not start-up

  try:
    app.run(guarded, flags_parser=parse_flags)
  except errors.Interrupted as e:  # a signal before training started
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(0)
