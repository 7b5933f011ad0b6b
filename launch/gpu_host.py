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
`--python .venv/bin/python` picks the interpreter. Standard library only
(and launch/common.py beside it): it does not import jax or mae_jax.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys

# common.py also says why each XLA flag is, or is not, set.
from common import (DEFAULT_MEM_FRACTION, MAIN_MODULE, assignments,
                    exit_status, parse, require_workdir, show, with_xla_env)


def gpu_env(parser, args):
  """The environment the launcher sets, in the order it prints it."""
  env = {}
  if args.gpus is not None:
    ids = [g.strip() for g in args.gpus.split(',')]
    if not all(g.isdigit() for g in ids):
      parser.error(f'--gpus expects comma-separated GPU indices, got {args.gpus!r}')
    env['CUDA_VISIBLE_DEVICES'] = ','.join(ids)
  return with_xla_env(parser, args, env)


def env_line(env, cmd):
  """`KEY=VALUE ... cmd` as one line a POSIX shell runs as is."""
  return ' '.join(assignments(env) + [shlex.join(cmd)])


def run_forwarding_signals(cmd, env):
  """Runs cmd (check=True semantics), forwarding SIGTERM to it.

  SIGTERM is how schedulers preempt: mae_jax.main then saves a checkpoint and
  exits 0. Ctrl-C already reaches the child through the terminal, so the
  launcher ignores SIGINT while it waits for the child to finish."""
  show(cmd)
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
  parser = build_parser()
  args, passthrough = parse(parser, argv)
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
    return exit_status(e.returncode)
  except FileNotFoundError as e:
    print(f'gpu_host.py: {e}', file=sys.stderr)
    return 127
  return 0


if __name__ == '__main__':
  sys.exit(main())
