#!/usr/bin/env python3
"""Runs mae_jax pretraining on one host with N GPUs: one process sees them all.

  python launch/gpu_host.py --gpus 0,1,2,3,4,5,6,7 -- \\
      --config=configs/mae_imagenet.py:variant=L/16 --workdir=/ckpt/mae_l16 \\
      --config.mesh.fsdp=8

sets the environment (CUDA_VISIBLE_DEVICES from --gpus, XLA_FLAGS,
XLA_PYTHON_CLIENT_MEM_FRACTION) and runs `python -m mae_jax.main` with every
argument it does not know itself (those after `--`, and any unrecognized one)
passed through unchanged and in order. `--dry-run` prints that command as one
shell line (`KEY=VALUE ... python -m mae_jax.main ...`) and runs nothing.

Run it from the repository root (or with mae_jax installed, e.g. `make env`);
`--python .venv/bin/python` picks the interpreter. Standard library only: it
does not import jax or mae_jax.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys

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

MAIN_MODULE = 'mae_jax.main'
_ENV_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


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


def has_flag(args, name):
  """Whether `--name` or `--name=...` is among args (absl also takes -name)."""
  for a in args:
    for dashes in ('--', '-'):
      if a == dashes + name or a.startswith(dashes + name + '='):
        return True
  return False


def require_workdir(parser, passthrough):
  if not (has_flag(passthrough, 'workdir') or has_flag(passthrough, 'flagfile')):
    parser.error('the following arguments are required for mae_jax.main: '
                 '--workdir=DIR (pass it after --)')


def env_pair(parser, text):
  key, sep, value = text.partition('=')
  if not sep or not _ENV_NAME.match(key):
    parser.error(f'--env expects KEY=VALUE, got {text!r}')
  return key, value


def xla_flags(extra):
  """The launcher's flags, then the caller's $XLA_FLAGS, then --xla-flags.

  XLA takes the last value of a flag given twice, so later ones override."""
  parts = list(GPU_XLA_FLAGS)
  for more in (os.environ.get('XLA_FLAGS', ''), extra or ''):
    if more.strip():
      parts.append(more.strip())
  return ' '.join(parts)


def gpu_env(parser, args):
  """The environment the launcher sets, in the order it prints it."""
  env = {}
  if args.gpus is not None:
    ids = [g.strip() for g in args.gpus.split(',')]
    if not all(g.isdigit() for g in ids):
      parser.error(f'--gpus expects comma-separated GPU indices, got {args.gpus!r}')
    env['CUDA_VISIBLE_DEVICES'] = ','.join(ids)
  if args.mem_fraction:
    if not 0 < args.mem_fraction <= 1:
      parser.error(f'--mem-fraction must be in (0, 1], got {args.mem_fraction}')
    env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = f'{args.mem_fraction:g}'
  env['XLA_FLAGS'] = xla_flags(args.xla_flags)
  for item in args.env or ():
    key, value = env_pair(parser, item)
    env[key] = value
  return env


def env_line(env, cmd):
  """`KEY=VALUE ... cmd` as one line a POSIX shell runs as is."""
  assigns = [f'{k}={shlex.quote(v)}' for k, v in env.items()]
  return ' '.join(assigns + [shlex.join(cmd)])


def run_forwarding_signals(cmd, env):
  """Runs cmd (check=True semantics), forwarding SIGTERM to it.

  SIGTERM is how schedulers preempt: mae_jax.main then saves a checkpoint and
  exits 0. Ctrl-C already reaches the child through the terminal, so the
  launcher ignores SIGINT while it waits for the child to finish."""
  print('+ ' + shlex.join(cmd), file=sys.stderr, flush=True)
  proc = subprocess.Popen(cmd, env=env)
  previous = {
      signal.SIGTERM: signal.signal(
          signal.SIGTERM, lambda sig, frame: proc.send_signal(sig)),
      signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
  }
  try:
    rc = proc.wait()
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if rc:
    raise subprocess.CalledProcessError(rc, cmd)


def build_parser():
  p = argparse.ArgumentParser(
      prog='gpu_host.py', allow_abbrev=False,
      description='Run `python -m mae_jax.main` on one host, one process '
      'seeing all its GPUs. Arguments it does not know (put them after --) '
      'go to mae_jax.main unchanged.',
      epilog='example: python launch/gpu_host.py --gpus 0,1,2,3 --dry-run -- '
      '--config=configs/mae_imagenet.py:variant=B/16 --workdir=/ckpt/b16 '
      '--config.mesh.fsdp=4')
  p.add_argument('--gpus', metavar='0,1,...',
                 help='GPUs to use -> CUDA_VISIBLE_DEVICES (default: leave '
                 'unset, i.e. all)')
  p.add_argument('--mem-fraction', type=float, default=DEFAULT_MEM_FRACTION,
                 help='XLA_PYTHON_CLIENT_MEM_FRACTION (default %(default)s; '
                 '0 leaves JAX\'s default of 0.75)')
  p.add_argument('--xla-flags', metavar="'--flag=value ...'",
                 help='more XLA flags, appended after the defaults (write '
                 "--xla-flags='--a=1 --b=2')")
  p.add_argument('--env', action='append', metavar='KEY=VALUE',
                 help='extra environment variable (repeatable)')
  p.add_argument('--python', default='python',
                 help='Python interpreter that has mae_jax (default: %(default)s)')
  p.add_argument('--dry-run', action='store_true',
                 help='print the command line and run nothing')
  return p


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  parser = build_parser()
  own, after = split_passthrough(argv)
  args, unknown = parser.parse_known_args(own)
  passthrough = unknown + after
  require_workdir(parser, passthrough)
  env = gpu_env(parser, args)
  cmd = [args.python, '-m', MAIN_MODULE] + passthrough
  if args.dry_run:
    print(env_line(env, cmd))
    return 0
  try:
    run_forwarding_signals(cmd, {**os.environ, **env})
  except subprocess.CalledProcessError as e:
    print(f'gpu_host.py: mae_jax.main exited with status {e.returncode}',
          file=sys.stderr)
    # A child killed by signal N has returncode -N; report it as a shell does.
    return e.returncode if e.returncode > 0 else 128 - e.returncode
  except FileNotFoundError as e:
    print(f'gpu_host.py: {e}', file=sys.stderr)
    return 127
  return 0


if __name__ == '__main__':
  sys.exit(main())
