"""Command line: pretrain an MAE.

  python -m mae_jax.main --config=configs/demo.py --workdir=workdirs/demo
  mae-jax --config=demo --workdir=workdirs/demo      # the installed script
  python -m mae_jax.main --config=configs/mae_imagenet.py:variant=B/16 \
      --workdir=gs://bucket/mae_b16 --config.data.tfds_data_dir=/data/tfds

Rerunning the same command on the same workdir resumes. Multi-host: every
process runs the same command; the processes find each other through the
cluster's environment (--distributed=on on Cloud TPU VM slices; SLURM and
TPU_WORKER_HOSTNAMES are detected) or --coordinator_address, --num_processes
and --process_id.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from mae_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', cli.resolve_config('demo'),
    'Config file, optionally with an argument: configs/NAME.py[:ARG], or the '
    'name of a config shipped with mae_jax (demo, mae_imagenet, test).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run directory: config.json, metrics.jsonl, checkpoints/, '
    'images/, TensorBoard events.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-process '
    'runs outside TPU pods / SLURM (which are detected automatically).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'With --coordinator_address.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'on', 'off'],
    'auto: initialize jax.distributed when SLURM (several tasks), a TPU pod '
    'environment (TPU_WORKER_HOSTNAMES) or JAX_COORDINATOR_ADDRESS is seen; '
    'on: always (jax finds the peers itself on Cloud TPU VMs, SLURM, Open MPI, '
    'Kubernetes); off: never.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'With --coordinator_address.')
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout_s', 100, 'Multi-process: a process whose heartbeats '
    'stop for this long is declared dead and jax ends the others (see also '
    'config.peer_timeout_s).')


def _cluster_detected() -> bool:
  """Environments where jax.distributed.initialize() finds its peers itself."""
  env = os.environ
  return (int(env.get('SLURM_NTASKS', '1')) > 1
          or len(env.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1
          or 'JAX_COORDINATOR_ADDRESS' in env)


def initialize_distributed() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  # CPU collectives across processes (the local multi-process setup and tests).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if _COORDINATOR.value:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      raise app.UsageError('--coordinator_address needs --num_processes and '
                           '--process_id')
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value,
                               heartbeat_timeout_seconds=_HEARTBEAT.value)
  elif _DISTRIBUTED.value == 'on' or (_DISTRIBUTED.value == 'auto'
                                      and _cluster_detected()):
    jax.distributed.initialize(heartbeat_timeout_seconds=_HEARTBEAT.value)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  initialize_distributed()
  # Imported after flag parsing: jax reads XLA flags and devices on import.
  from mae_jax import train  # pylint: disable=g-import-not-at-top
  result = train.train(_CONFIG.value, _WORKDIR.value)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(json.dumps(result, indent=1))


def run() -> None:
  """The `mae-jax` console script; failures are one line (see cli.py)."""
  cli.run(main)


if __name__ == '__main__':
  run()
