#!/usr/bin/env python3
"""Creates, sets up, runs on and deletes a Cloud TPU VM slice with gcloud.

  T='--name mae --zone us-east5-a'
  python launch/tpu_pod.py create $T --accelerator-type v5p-64 --version v2-alpha-tpuv5
  python launch/tpu_pod.py setup  $T --repo https://github.com/ORG/mae_jax.git
  python launch/tpu_pod.py run    $T --detach -- \\
      --config=configs/mae_imagenet.py:variant=L/16 --workdir=gs://BUCKET/mae_l16 \\
      --config.mesh.fsdp=8
  python launch/tpu_pod.py logs   $T
  python launch/tpu_pod.py stop   $T      # SIGTERM: checkpoint and exit
  python launch/tpu_pod.py delete $T

Every subcommand only builds gcloud commands and runs them (streaming their
output); `--dry-run` prints them, one shell-quoted line each, and runs
nothing. `run` starts `python -m mae_jax.main` on every worker of the slice at
once (gcloud ... ssh --worker=all); arguments the launcher does not know (those
after `--`, and any unrecognized one) reach mae_jax.main unchanged and in
order. No coordinator flags are passed: on TPU VMs the TPU runtime (and
jax.distributed.initialize(), which needs no arguments there) finds the
workers itself.

Multi-slice (`--num-slices K`, K > 1): the slices are one queued resource
(`queued-resources create --node-count K --node-prefix NAME`), reached with
`gcloud compute tpus queued-resources ssh/scp --node=all --worker=all`, and
`run` appends `--config.mesh.dcn=K` (the mesh axis across slices) unless the
arguments already set config.mesh.dcn. Pass the same --num-slices to every
subcommand.

Standard library only (and launch/common.py beside it): it does not import jax
or mae_jax.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from common import (MAIN_MODULE, assignments, exit_status, flag_value, parse,
                    positive_int, require_workdir, show, user_env)

DCN_FLAG = '--config.mesh.dcn'
# https://docs.astral.sh/uv/getting-started/installation/ (installs ~/.local/bin/uv)
UV_INSTALLER = 'https://astral.sh/uv/install.sh'


def remote_path(path):
  """A path for the remote shell; relative ones are under the remote $HOME.

  `~/` stays unquoted so that the remote shell expands it."""
  if path.startswith('/'):
    return shlex.quote(path)
  if path.startswith('~/'):
    path = path[2:]
  return '~/' + shlex.quote(path)


def scp_path(path):
  """A path for scp's remote side: scp takes relative paths from $HOME."""
  return path[2:] if path.startswith('~/') else path


# --------------------------------------------------------------------------
# Command builders: each returns the list of commands (argv lists) to run.


def _gcloud(*words):
  return ['gcloud', 'compute', 'tpus'] + list(words)


def _common_flags(args):
  flags = [f'--zone={args.zone}']
  if args.project:
    flags.append(f'--project={args.project}')
  return flags


def _multislice(args):
  return args.num_slices > 1


def _on_all_workers(args, remote_command):
  """gcloud ssh running remote_command on every worker (of every slice)."""
  if _multislice(args):
    cmd = _gcloud('queued-resources', 'ssh', args.name)
    cmd += _common_flags(args) + ['--node=all', '--worker=all']
    if getattr(args, 'batch_size', None):
      cmd.append(f'--batch-size={args.batch_size}')
  else:
    cmd = _gcloud('tpu-vm', 'ssh', args.name)
    cmd += _common_flags(args) + ['--worker=all']
  return cmd + [f'--command={remote_command}']


def create_commands(parser, args, passthrough):
  queued = args.queued or _multislice(args)
  if args.best_effort and not queued:
    parser.error('--best-effort needs --queued (a queued resource)')
  if queued:
    cmd = _gcloud('queued-resources', 'create', args.name)
    cmd += _common_flags(args)
    cmd += [f'--accelerator-type={args.accelerator_type}',
            f'--runtime-version={args.version}']
    if _multislice(args):
      # K TPU nodes whose ids start with NAME; ssh/scp reach them all by the
      # queued resource name (--node=all).
      cmd += [f'--node-count={args.num_slices}', f'--node-prefix={args.name}']
    else:
      cmd.append(f'--node-id={args.name}')
  else:
    cmd = _gcloud('tpu-vm', 'create', args.name)
    cmd += _common_flags(args)
    cmd += [f'--accelerator-type={args.accelerator_type}',
            f'--version={args.version}']
  if args.spot:
    cmd.append('--spot')
  if args.best_effort:
    cmd.append('--best-effort')
  cmd += args.gcloud_arg or []
  return [cmd]


def setup_commands(parser, args, passthrough):
  """Clone (or update) the repo at --ref and install it with jax[tpu].

  On every worker: git clone REPO into --remote-dir (or point the existing
  clone's origin at REPO), fetch REF and check it out detached (so every
  worker runs the same commit; local edits there are discarded), install uv
  if missing (the TPU VM images' system Python is older than the 3.12 the
  project needs; uv fetches a 3.12), create .venv and install the project
  with `-e '.[dev]'` and 'jax[tpu]' (libtpu from PyPI), then import both as a
  check (without touching the TPUs, so no worker waits for the others)."""
  rdir = remote_path(args.remote_dir)
  repo = shlex.quote(args.repo)
  steps = [
      f'if [ ! -d {rdir}/.git ]; then git clone {repo} {rdir}; fi',
      f'cd {rdir}',
      f'git remote set-url origin {repo}',
      f'git fetch origin {shlex.quote(args.ref)}',
      'git checkout --force --detach FETCH_HEAD',
      'if ! command -v uv >/dev/null 2>&1 && [ ! -x ~/.local/bin/uv ]; then '
      f'curl -LsSf {UV_INSTALLER} | sh; fi',
      'export PATH="$HOME/.local/bin:$PATH"',
      f'uv venv --allow-existing --python {shlex.quote(args.python_version)} .venv',
      'uv pip install --python .venv/bin/python -e ".[dev]" "jax[tpu]"',
      '.venv/bin/python -c "import jax, mae_jax; print(jax.__version__)"',
  ]
  return [_on_all_workers(args, 'set -e; ' + '; '.join(steps))]


def run_commands(parser, args, passthrough):
  require_workdir(parser, passthrough)
  workdir = flag_value(passthrough, '--workdir') or ''
  if workdir and not workdir.startswith('gs://'):
    print(f'tpu_pod.py: warning: --workdir={workdir} is not a gs:// path; '
          'all workers must write checkpoints to one shared directory',
          file=sys.stderr)
  main_args = list(passthrough)
  if flag_value(main_args, '--distributed') is None:
    # A plain Cloud TPU VM slice sets no variable main.py could detect; jax
    # finds the other workers through the TPU metadata server.
    main_args.insert(0, '--distributed=on')
  if _multislice(args):
    dcn = flag_value(main_args, DCN_FLAG)
    if dcn is None:
      main_args.append(f'{DCN_FLAG}={args.num_slices}')
    elif dcn != str(args.num_slices):
      print(f'tpu_pod.py: warning: {DCN_FLAG}={dcn} given with --num-slices '
            f'{args.num_slices}; keeping {dcn}', file=sys.stderr)

  if _multislice(args) and not args.detach and not args.batch_size:
    print('tpu_pod.py: note: gcloud reaches 64 workers at a time; with more '
          'workers than that in all slices, pass --batch-size >= their number '
          '(or --detach), since every process waits for all the others',
          file=sys.stderr)

  env = {'PYTHONUNBUFFERED': '1', **user_env(parser, args.env)}
  assigns = ' '.join(assignments(env))
  python = shlex.join([args.python, '-m', MAIN_MODULE] + main_args)
  log = _log_file(args, 'log')
  prefix = (f'mkdir -p {remote_path(args.log_dir)} && '
            f'cd {remote_path(args.remote_dir)} && ')
  if args.detach:
    # nohup + every stream redirected: the run outlives the ssh session. Its
    # pid is kept for `stop`.
    remote = (prefix + f'{{ {assigns} nohup {python} >> {log} 2>&1 < /dev/null & '
              f'echo $! > {_log_file(args, "pid")}; }}'
              ' && echo "mae_jax.main started on $(hostname)"')
  else:
    remote = 'set -o pipefail; ' + prefix + f'{assigns} {python} 2>&1 | tee -a {log}'
  return [_on_all_workers(args, remote)]


def _log_file(args, suffix):
  """LOG_DIR/LOG_NAME-<worker hostname>.SUFFIX, for the remote shell."""
  return (f'{remote_path(args.log_dir)}/{shlex.quote(args.log_name)}'
          f'-$(hostname).{suffix}')


def stop_commands(parser, args, passthrough):
  """SIGTERM to the run `run --detach` started on every worker.

  mae_jax.main then saves a checkpoint and exits 0; `run` again resumes. Only
  the recorded pid is signalled, and only if that process is mae_jax.main."""
  pid = _log_file(args, 'pid')
  remote = (f'p=$(cat {pid} 2>/dev/null); '
            'if [ -n "$p" ] && grep -qa mae_jax.main /proc/$p/cmdline 2>/dev/null '
            '&& kill -TERM "$p"; then echo "$(hostname): sent SIGTERM to $p"; '
            'else echo "$(hostname): no running mae_jax.main recorded"; fi')
  return [_on_all_workers(args, remote)]


def logs_commands(parser, args, passthrough):
  local = args.local_dir or f'tpu_logs/{args.name}'
  source = f'{args.name}:{scp_path(args.log_dir)}'
  if _multislice(args):
    scp = _gcloud('queued-resources', 'scp', '--recurse', source, local)
    scp += _common_flags(args) + ['--node=all', '--worker=all']
  else:
    scp = _gcloud('tpu-vm', 'scp', '--recurse', source, local)
    scp += _common_flags(args) + ['--worker=all']
  return [['mkdir', '-p', local], scp]


def delete_commands(parser, args, passthrough):
  if args.queued or _multislice(args):
    # --force also deletes the queued resource's TPU nodes.
    cmd = _gcloud('queued-resources', 'delete', args.name)
    return [cmd + _common_flags(args) + ['--force', '--quiet']]
  cmd = _gcloud('tpu-vm', 'delete', args.name)
  return [cmd + _common_flags(args) + ['--quiet']]


# --------------------------------------------------------------------------


def build_parser():
  target = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  target.add_argument('--name', required=True,
                      help='TPU (or queued resource) name')
  target.add_argument('--zone', required=True, help='e.g. us-east5-a')
  target.add_argument('--project', help='GCP project (default: gcloud config)')
  target.add_argument('--num-slices', type=positive_int, default=1,
                      help='slices of a multi-slice queued resource (default 1)')
  target.add_argument('--dry-run', action='store_true',
                      help='print the commands and run nothing')

  p = argparse.ArgumentParser(
      prog='tpu_pod.py', allow_abbrev=False,
      description='Cloud TPU VM slices for mae_jax, via gcloud.')
  sub = p.add_subparsers(dest='command', metavar='COMMAND', required=True)

  def add(name, help_text, builder):
    sp = sub.add_parser(name, parents=[target], allow_abbrev=False,
                        help=help_text, description=help_text)
    sp.set_defaults(builder=builder)
    return sp

  # run works in the checkout setup made, and logs and stop find what run
  # wrote: these options are defined once each, so the subcommands cannot
  # disagree on their defaults. Each subcommand's help says once (`home`)
  # where a relative path starts.
  home = ', relative to $HOME'

  def remote_dir(sp, note=''):
    sp.add_argument('--remote-dir', default='mae_jax',
                    help=f'checkout directory on the workers{note} '
                    '(default %(default)s)')

  def log_dir(sp, note=''):
    sp.add_argument('--log-dir', default='mae_jax_logs',
                    help=f'log directory on the workers{note} '
                    '(default %(default)s)')

  def log_name(sp, help_text):
    sp.add_argument('--log-name', default='run', help=help_text)

  c = add('create', 'create the slice (tpu-vm create, or a queued resource)',
          create_commands)
  c.add_argument('--accelerator-type', required=True, help='e.g. v5p-64')
  c.add_argument('--version', required=True,
                 help='TPU runtime version, e.g. v2-alpha-tpuv5')
  c.add_argument('--queued', action='store_true',
                 help='create a queued resource (implied by --num-slices > 1)')
  kind = c.add_mutually_exclusive_group()
  kind.add_argument('--spot', action='store_true', help='Spot TPU VMs')
  kind.add_argument('--best-effort', action='store_true',
                    help='best-effort queued resource')
  c.add_argument('--gcloud-arg', action='append', metavar='FLAG',
                 help='extra gcloud flag, e.g. --gcloud-arg=--reserved '
                 '(repeatable)')

  s = add('setup', 'clone the repo and install mae_jax + jax[tpu] on every '
          'worker', setup_commands)
  s.add_argument('--repo', required=True, help='git URL to clone')
  s.add_argument('--ref', default='HEAD',
                 help='branch, tag or commit (default: the remote\'s HEAD)')
  remote_dir(s, home)
  s.add_argument('--python-version', default='3.12',
                 help='Python for the workers\' .venv (default %(default)s)')

  r = add('run', 'run python -m mae_jax.main on every worker at once '
          '(arguments after -- go to it)', run_commands)
  remote_dir(r)
  r.add_argument('--python', default='.venv/bin/python',
                 help='interpreter, relative to --remote-dir (default '
                 '%(default)s, made by setup)')
  r.add_argument('--env', action='append', metavar='KEY=VALUE',
                 help='extra environment variable (repeatable)')
  log_dir(r, home)
  log_name(r, 'log file LOG_NAME-<worker hostname>.log (appended to)')
  r.add_argument('--detach', action='store_true',
                 help='start in the background (nohup) and return at once')
  r.add_argument('--batch-size', type=positive_int,
                 help='multi-slice: workers reached at once by gcloud '
                 '(gcloud\'s default 64); must cover all workers unless '
                 '--detach, since every process waits for all the others')

  g = add('logs', 'copy the run logs of every worker here', logs_commands)
  log_dir(g)
  g.add_argument('--local-dir', help='local directory (default tpu_logs/NAME)')

  t = add('stop', 'SIGTERM the detached run on every worker (it saves a '
          'checkpoint and exits)', stop_commands)
  log_dir(t)
  log_name(t, 'the --log-name of the run (default %(default)s)')

  d = add('delete', 'delete the slice (or the queued resource)',
          delete_commands)
  d.add_argument('--queued', action='store_true',
                 help='it is a queued resource (implied by --num-slices > 1)')
  return p


def main(argv=None):
  parser = build_parser()
  args, passthrough = parse(parser, argv)
  if args.command != 'run' and passthrough:
    parser.error(f'unrecognized arguments for {args.command}: '
                 f'{shlex.join(passthrough)}')
  if getattr(args, 'batch_size', None) and not _multislice(args):
    parser.error('--batch-size applies to multi-slice runs (--num-slices > 1)')
  commands = args.builder(parser, args, passthrough)
  if args.dry_run:
    for cmd in commands:
      print(shlex.join(cmd))
    return 0
  for cmd in commands:
    show(cmd)
    try:
      subprocess.run(cmd, check=True)
    except subprocess.CalledProcessError as e:
      print(f'tpu_pod.py: {cmd[0]} exited with status {e.returncode}',
            file=sys.stderr)
      return exit_status(e.returncode)
    except FileNotFoundError:
      print(f'tpu_pod.py: {cmd[0]} not found (install the Google Cloud CLI, '
            'or use --dry-run)', file=sys.stderr)
      return 127
  return 0


if __name__ == '__main__':
  sys.exit(main())
