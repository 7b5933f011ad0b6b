"""What the launch scripts share: splitting their arguments from mae_jax.main's,
the checks on those, the GPU XLA environment, and exit statuses.

The scripts import it as `common`: `python launch/NAME.py` puts launch/ first
on sys.path (also under `python -S`), so it must stay beside them. Standard
library only, and Python 3.8+, like the scripts: they run on a laptop or a
login node without jax or mae_jax installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys

MAIN_MODULE = 'mae_jax.main'

# XLA_FLAGS for GPU training. Only what the JAX and NVIDIA docs recommend
# without per-model tuning (the flags must exist in the installed jaxlib, or
# XLA aborts at start-up with "Unknown flag in XLA_FLAGS"; the tests check it):
#  --xla_gpu_enable_latency_hiding_scheduler=true  lets XLA schedule the
#    FSDP all-gathers / reduce-scatters (and the data-parallel all-reduce)
#    asynchronously, overlapped with compute. Recommended in JAX's "GPU
#    performance tips" (https://docs.jax.dev/en/latest/gpu_performance_tips.html)
#    and baked into NVIDIA's JAX containers
#    (https://docs.nvidia.com/jax-toolbox/environment-variables).
# Deliberately not set by default (add them with --xla-flags='...'):
#  * the FSDP pipelining flags of NVIDIA JAX-Toolbox's GPU_performance.md
#    (--xla_gpu_enable_pipelined_all_gather / _reduce_scatter / _all_reduce,
#    --xla_gpu_enable_while_loop_double_buffering): they crashed the compiler
#    with gradient-accumulation loops (openxla/xla#14332) and were reverted as
#    XLA defaults after a convergence problem (openxla/xla#16953);
#  * --xla_gpu_*_combine_threshold_bytes: the right values depend on the
#    model's per-layer parameter bytes and the GPU count (JAX's GPU tips).
GPU_XLA_FLAGS = ('--xla_gpu_enable_latency_hiding_scheduler=true',)

# JAX preallocates 75% of each GPU's memory by default
# (https://docs.jax.dev/en/latest/gpu_memory_allocation.html); NVIDIA's
# JAX-Toolbox GPU_performance.md: "We typically set it to 0.9 or 0.8".
DEFAULT_MEM_FRACTION = 0.9

_ENV_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


# --------------------------------------------------------------------------
# The command line: the launcher's own options, and mae_jax.main's.


def split_passthrough(argv):
  """argv -> (launcher args, args after the first '--').

  --dry-run counts wherever it is, also after '--' (mae_jax.main has no such
  flag): a misplaced --dry-run must not launch anything."""
  own, after = list(argv), []
  if '--' in argv:
    i = argv.index('--')
    own, after = argv[:i], argv[i + 1:]
  if '--dry-run' in after:
    after = [a for a in after if a != '--dry-run']
    own.append('--dry-run')
  return own, after


def parse(parser, argv=None):
  """argv (default sys.argv[1:]) -> (launcher args, args for mae_jax.main).

  mae_jax.main gets every argument the parser does not know, in order, then
  those after '--'."""
  own, after = split_passthrough(sys.argv[1:] if argv is None else argv)
  args, unknown = parser.parse_known_args(own)
  return args, unknown + after


def has_flag(args, name):
  """Whether `--name` or `--name=...` is among args (absl also takes -name)."""
  for a in args:
    for dashes in ('--', '-'):
      if a == dashes + name or a.startswith(dashes + name + '='):
        return True
  return False


def flag_value(args, name):
  """The last value given to --name (as --name=V or --name V), else None."""
  value = None
  for i, a in enumerate(args):
    if a.startswith(name + '='):
      value = a[len(name) + 1:]
    elif a == name and i + 1 < len(args):
      value = args[i + 1]
  return value


def require_workdir(parser, passthrough):
  # Checked here, not left to mae_jax.main: on a cluster or a slice the
  # mistake would otherwise surface only once the job starts.
  if not (has_flag(passthrough, 'workdir') or has_flag(passthrough, 'flagfile')):
    parser.error('the following arguments are required for mae_jax.main: '
                 '--workdir=DIR (pass it after --)')


def positive_int(text):
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
  return value


# --------------------------------------------------------------------------
# The environment of mae_jax.main.


def env_pair(parser, text):
  key, sep, value = text.partition('=')
  if not sep or not _ENV_NAME.match(key):
    parser.error(f'--env expects KEY=VALUE, got {text!r}')
  return key, value


def user_env(parser, items):
  """The --env KEY=VALUE items as a dict; a key given twice keeps the last."""
  env = {}
  for item in items or ():
    key, value = env_pair(parser, item)
    env[key] = value
  return env


def xla_flags(extra):
  """The launcher's flags, then the caller's $XLA_FLAGS, then --xla-flags.

  XLA takes the last value of a flag given twice, so later ones override."""
  parts = list(GPU_XLA_FLAGS)
  for more in (os.environ.get('XLA_FLAGS', ''), extra or ''):
    if more.strip():
      parts.append(more.strip())
  return ' '.join(parts)


def with_xla_env(parser, args, env):
  """env, then XLA_PYTHON_CLIENT_MEM_FRACTION and XLA_FLAGS, then --env.

  Both GPU launchers set this same XLA environment after their own variables
  (the tests check they agree); --env comes last so it can override any of
  them."""
  env = dict(env)
  if args.mem_fraction:
    if not 0 < args.mem_fraction <= 1:
      parser.error(f'--mem-fraction must be in (0, 1], got {args.mem_fraction}')
    env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = f'{args.mem_fraction:g}'
  env['XLA_FLAGS'] = xla_flags(args.xla_flags)
  env.update(user_env(parser, args.env))
  return env


def assignments(env):
  """['KEY=VALUE', ...] with each value quoted for a POSIX shell."""
  return [f'{k}={shlex.quote(v)}' for k, v in env.items()]


# --------------------------------------------------------------------------
# Running commands.


def show(cmd):
  """Prints cmd to stderr as `set -x` would, before it runs: the launcher's
  log then says what ran, interleaved in order with the command's output."""
  print('+ ' + shlex.join(cmd), file=sys.stderr, flush=True)


def exit_status(returncode):
  """A child's return code as the launcher's exit status.

  A child killed by signal N has returncode -N; report it as a shell does."""
  return returncode if returncode > 0 else 128 - returncode
