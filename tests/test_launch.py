"""The launch scripts (launch/*.py): the commands they print, and that those
commands really run `python -m mae_jax.main` with the arguments unchanged.

Each script runs as a subprocess with `python -S` (no site-packages, so a
stray `import jax` would fail). Commands that would reach a cloud or a
cluster are executed locally against stubs: the remote shell command of
`tpu_pod.py run` under bash, the generated sbatch script with a stub `srun`,
gpu_host.py with a stub interpreter that records its argv and environment.
"""

import ast
import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / 'launch'
SCRIPTS = ('tpu_pod.py', 'gpu_host.py', 'slurm.py')
COMMON = 'common.py'  # what the scripts share; they import it as `common`

# Passed through to mae_jax.main: spaces, quotes, $ and a space-separated
# value must all arrive unchanged and in this order.
TPU_PASS_PREFIX = ['--distributed=on']  # tpu_pod.py adds it (plain TPU VMs)
PASS = [
    '--config=configs/mae_imagenet.py:variant=L/16',
    '--workdir=gs://b/run',
    '--config.mesh.fsdp=8',
    '--config.data.path=/data/my images',
    '--config.note=it\'s "quoted" $HOME `x`',
    '--verbosity', '1',
]
LHS = '--xla_gpu_enable_latency_hiding_scheduler=true'
TPU = ['--name', 'mae', '--zone', 'us-east5-a']


GUARD_DIR = None  # stubs that fail loudly, first on PATH: see guard_path


@pytest.fixture(scope='session', autouse=True)
def guard_path(tmp_path_factory):
  """Puts failing `gcloud`, `sbatch` and `srun` first on the scripts' PATH, so
  that a test can never reach a real cloud or cluster."""
  global GUARD_DIR
  GUARD_DIR = tmp_path_factory.mktemp('guard')
  for name in ('gcloud', 'sbatch', 'srun'):
    write_executable(GUARD_DIR / name,
                     f'#!/bin/sh\necho "guard: {name} called" >&2\nexit 97\n')
  yield


def clean_env(**extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ('XLA_FLAGS', 'CUDA_VISIBLE_DEVICES', 'PYTHONPATH')}
  env['PATH'] = f'{GUARD_DIR}{os.pathsep}{os.environ["PATH"]}'
  env.update(extra)
  return env


def with_bin(bin_dir, **extra):
  """clean_env with bin_dir first on PATH (before the guard stubs)."""
  env = clean_env(**extra)
  env['PATH'] = f'{bin_dir}{os.pathsep}{env["PATH"]}'
  return env


def write_executable(path, text):
  path.write_text(text)
  path.chmod(0o755)


def stub_bin(tmp_path, name, text):
  """A new directory holding one stub command `name`, for with_bin."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  write_executable(bin_dir / name, text)
  return bin_dir


def launch(script, *args, env=None, check=True):
  proc = subprocess.run(
      [sys.executable, '-S', str(LAUNCH / script), *args],
      capture_output=True, text=True, env=env or clean_env(), timeout=60)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def dry(script, *args, env=None):
  """The printed commands, one per line."""
  return launch(script, *args, '--dry-run', env=env).stdout.splitlines()


def main_args(argv):
  """The arguments after `-m mae_jax.main` in an argv list."""
  for i in range(len(argv) - 1):
    if argv[i] == '-m' and argv[i + 1] == 'mae_jax.main':
      return argv[i + 2:]
  raise AssertionError(f'no `-m mae_jax.main` in {argv}')


def remote_command(line):
  """The --command=... of a printed gcloud ssh line."""
  words = shlex.split(line)
  (cmd,) = [w for w in words if w.startswith('--command=')]
  return cmd[len('--command='):]


@pytest.fixture
def stub_python(tmp_path):
  """An 'interpreter' that records argv, cwd and some env, then exits
  $STUB_RC; with STUB_WAIT_TERM=1 it waits for SIGTERM first."""
  path = tmp_path / 'stub_python'
  path.write_text(f'''#!{sys.executable}
import json, os, signal, sys, time
out = os.environ['STUB_OUT']
keys = ('XLA_FLAGS', 'XLA_PYTHON_CLIENT_MEM_FRACTION', 'CUDA_VISIBLE_DEVICES',
        'PYTHONUNBUFFERED', 'JAX_LOCAL_DEVICE_IDS', 'MY_VAR')
record = dict(argv=sys.argv[1:], cwd=os.getcwd(),
              env={{k: os.environ.get(k) for k in keys}})
def save(**more):
  record.update(more)
  with open(out + '.tmp', 'w') as f:
    json.dump(record, f)
  os.replace(out + '.tmp', out)
if os.environ.get('STUB_WAIT_TERM'):
  signal.signal(signal.SIGTERM, lambda *a: (save(terminated=True), sys.exit(0)))
  open(out + '.started', 'w').close()
  time.sleep(30)
  sys.exit(9)
save()
print('stub ran')
sys.exit(int(os.environ.get('STUB_RC', '0')))
''')
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return path


def read_record(path, timeout=10.0):
  deadline = time.time() + timeout
  while not path.exists():
    assert time.time() < deadline, f'{path} never written'
    time.sleep(0.05)
  return json.loads(path.read_text())


# ---------------------------------------------------------------------------
# The module and flags the scripts name must exist.


def test_scripts_name_the_real_module_and_flags():
  spec = importlib.util.find_spec('mae_jax.main')
  assert spec is not None and spec.origin
  assert pathlib.Path(spec.origin).resolve() == ROOT / 'mae_jax' / 'main.py'
  main_py = (ROOT / 'mae_jax' / 'main.py').read_text()
  # Flags the launchers pass or require: --config (and --config.KEY
  # overrides), --workdir. They pass no coordinator flags: main.py must
  # detect SLURM by itself.
  assert re.search(r"DEFINE_config_file\(\s*'config'", main_py)
  assert re.search(r"DEFINE_string\(\s*'workdir'", main_py)
  assert 'SLURM_NTASKS' in main_py
  assert 'jax.distributed.initialize()' in main_py
  # --config.mesh.dcn=K (multi-slice) names a real config key.
  config_py = (ROOT / 'mae_jax' / 'config.py').read_text()
  assert re.search(r'c\.mesh = .*\bdcn=', config_py)
  assert "DCN_FLAG = '--config.mesh.dcn'" in (LAUNCH / 'tpu_pod.py').read_text()
  assert "MAIN_MODULE = 'mae_jax.main'" in (LAUNCH / COMMON).read_text()


@pytest.mark.parametrize('script,args', [
    ('gpu_host.py', ['--gpus', '0,1']),
    ('slurm.py', ['--nodes', '2', '--gpus-per-node', '8']),
    ('tpu_pod.py', ['run', *TPU]),
    ('tpu_pod.py', ['run', *TPU, '--detach']),
])
def test_scripts_add_no_flags_to_mae_jax_main(script, args):
  """Single-slice / single-host: exactly the passed-through arguments (on a
  TPU slice, after --distributed=on, unless the user gave --distributed)."""
  lines = dry(script, *args, '--', *PASS)
  (line,) = [l for l in lines if '-m mae_jax.main' in l]
  if script == 'tpu_pod.py':
    line = re.split(r' 2>&1 | >> ', remote_command(line))[0]
    assert main_args(shlex.split(line)) == TPU_PASS_PREFIX + PASS
    (line,) = [l for l in dry(script, *args, '--', *PASS, '--distributed=off')
               if '-m mae_jax.main' in l]
    line = re.split(r' 2>&1 | >> ', remote_command(line))[0]
    assert main_args(shlex.split(line)) == PASS + ['--distributed=off']
  else:
    assert main_args(shlex.split(line)) == PASS


def test_dry_run_after_separator_is_the_launchers():
  (line,) = launch('gpu_host.py', '--', *PASS, '--dry-run').stdout.splitlines()
  assert main_args(shlex.split(line)) == PASS


@pytest.mark.parametrize('script', SCRIPTS + (COMMON,))
def test_scripts_use_the_standard_library_only(script):
  # Besides the standard library, only their sibling common.py (which
  # `python launch/NAME.py` finds on sys.path, also under -S).
  tree = ast.parse((LAUNCH / script).read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      names = [node.module or '']
    else:
      continue
    for name in names:
      top = name.split('.')[0]
      assert (top in sys.stdlib_module_names or top == '__future__'
              or top == pathlib.Path(COMMON).stem), (script, name)


def test_jax_reads_the_local_device_ids_that_slurm_sets():
  spec = importlib.util.find_spec('jax')
  if spec is None:
    pytest.skip('jax not installed')
  src = (pathlib.Path(spec.origin).parent / '_src' / 'distributed.py').read_text()
  assert "os.environ.get('JAX_LOCAL_DEVICE_IDS')" in src


def test_gpu_xla_flags_are_known_to_the_installed_jaxlib():
  if importlib.util.find_spec('jax') is None:
    pytest.skip('jax not installed')
  line = dry('gpu_host.py', '--xla-flags=--xla_gpu_enable_triton_gemm=false',
             '--', *PASS)[0]
  env = dict(a.split('=', 1) for a in shlex.split(line) if a.startswith('XLA_'))
  assert LHS in env['XLA_FLAGS']
  # XLA aborts on an unknown flag ("Unknown flag in XLA_FLAGS"), on any backend.
  proc = subprocess.run(
      [sys.executable, '-c', 'import jax; jax.devices()'],
      env=clean_env(XLA_FLAGS=env['XLA_FLAGS'], JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------
# gpu_host.py


def test_gpu_host_dry_run_line():
  lines = dry('gpu_host.py', '--gpus', '0,1,2,3', '--', *PASS)
  assert lines == [
      'CUDA_VISIBLE_DEVICES=0,1,2,3 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 '
      f'XLA_FLAGS={LHS} python -m mae_jax.main ' + shlex.join(PASS)]
  words = shlex.split(lines[0])
  assert words[:3] == ['CUDA_VISIBLE_DEVICES=0,1,2,3',
                       'XLA_PYTHON_CLIENT_MEM_FRACTION=0.9', f'XLA_FLAGS={LHS}']
  assert words[3:6] == ['python', '-m', 'mae_jax.main']
  assert words[6:] == PASS


def test_gpu_host_passthrough_without_separator_keeps_order():
  (line,) = dry('gpu_host.py', '--config=configs/demo.py', '--gpus', '1',
                '--workdir', '/w d', '--config.mesh.fsdp=1')
  assert main_args(shlex.split(line)) == [
      '--config=configs/demo.py', '--workdir', '/w d', '--config.mesh.fsdp=1']
  assert 'CUDA_VISIBLE_DEVICES=1 ' in line


def test_gpu_host_merges_xla_flags_and_env():
  (line,) = dry('gpu_host.py', '--mem-fraction', '0', '--xla-flags=--b=2',
                '--env', 'MY_VAR=a b', '--env', 'XLA_PYTHON_CLIENT_PREALLOCATE=false',
                '--', *PASS, env=clean_env(XLA_FLAGS='--a=1'))
  words = shlex.split(line)
  assert words[:3] == [f'XLA_FLAGS={LHS} --a=1 --b=2', 'MY_VAR=a b',
                       'XLA_PYTHON_CLIENT_PREALLOCATE=false']
  assert 'XLA_PYTHON_CLIENT_MEM_FRACTION' not in line


def test_gpu_host_printed_line_runs_in_a_shell(tmp_path, stub_python):
  (line,) = dry('gpu_host.py', '--gpus', '2,3', '--python', str(stub_python),
                '--', *PASS)
  out = tmp_path / 'rec.json'
  subprocess.run(['sh', '-c', line], check=True, timeout=30,
                 env=clean_env(STUB_OUT=str(out)))
  rec = read_record(out)
  assert rec['argv'] == ['-m', 'mae_jax.main', *PASS]
  assert rec['env']['CUDA_VISIBLE_DEVICES'] == '2,3'
  assert rec['env']['XLA_FLAGS'] == LHS
  assert rec['env']['XLA_PYTHON_CLIENT_MEM_FRACTION'] == '0.9'


def test_gpu_host_runs_and_propagates_the_exit_status(tmp_path, stub_python):
  out = tmp_path / 'rec.json'
  proc = launch('gpu_host.py', '--gpus', '0', '--python', str(stub_python),
                '--', *PASS, env=clean_env(STUB_OUT=str(out)))
  assert 'stub ran' in proc.stdout
  rec = read_record(out)
  assert rec['argv'] == ['-m', 'mae_jax.main', *PASS]
  assert rec['env']['CUDA_VISIBLE_DEVICES'] == '0'
  assert rec['cwd'] == os.getcwd()
  proc = launch('gpu_host.py', '--python', str(stub_python), '--', *PASS,
                env=clean_env(STUB_OUT=str(out), STUB_RC='3'), check=False)
  assert proc.returncode == 3
  assert 'status 3' in proc.stderr


def test_gpu_host_forwards_sigterm(tmp_path, stub_python):
  out = tmp_path / 'rec.json'
  proc = subprocess.Popen(
      [sys.executable, '-S', str(LAUNCH / 'gpu_host.py'),
       '--python', str(stub_python), '--', *PASS],
      env=clean_env(STUB_OUT=str(out), STUB_WAIT_TERM='1'),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    read_record_started = pathlib.Path(str(out) + '.started')
    deadline = time.time() + 10
    while not read_record_started.exists():
      assert time.time() < deadline and proc.poll() is None
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
  finally:
    if proc.poll() is None:
      proc.kill()
  assert read_record(out)['terminated'] is True


# ---------------------------------------------------------------------------
# slurm.py

SLURM = ['--nodes', '4', '--gpus-per-node', '8', '--cpus-per-task', '32',
         '--time', '48:00:00', '--partition', 'gpu', '--account', 'proj']


def test_slurm_script_header_env_and_srun():
  script = dry('slurm.py', *SLURM, '--setup', 'source .venv/bin/activate',
               '--', *PASS)
  assert script[0] == '#!/bin/bash'
  header = [l for l in script if l.startswith('#SBATCH ')]
  assert header == [
      '#SBATCH --job-name=mae_jax',
      '#SBATCH --nodes=4',
      '#SBATCH --ntasks-per-node=1',
      '#SBATCH --gpus-per-node=8',
      '#SBATCH --cpus-per-task=32',
      '#SBATCH --time=48:00:00',
      '#SBATCH --partition=gpu',
      '#SBATCH --account=proj',
      '#SBATCH --output=%x-%j.out',
      '#SBATCH --signal=TERM@300',
  ]
  body = [l for l in script if not l.startswith('#')]
  assert body == [
      'set -eo pipefail',
      'source .venv/bin/activate',
      'export PYTHONUNBUFFERED=1',
      'export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7',
      'export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9',
      f'export XLA_FLAGS={LHS}',
      'srun --kill-on-bad-exit=1 python -m mae_jax.main ' + shlex.join(PASS),
  ]
  # No coordinator flags: jax.distributed.initialize() reads SLURM's variables.
  assert '--coordinator_address' not in '\n'.join(script)


def test_slurm_and_gpu_host_set_the_same_xla_environment():
  (line,) = dry('gpu_host.py', '--xla-flags=--x=1', '--', *PASS)
  gpu = dict(w.split('=', 1) for w in shlex.split(line)[:2])
  script = dry('slurm.py', '--nodes', '2', '--gpus-per-node', '4',
               '--xla-flags=--x=1', '--', *PASS)
  exports = dict(shlex.split(l)[1].split('=', 1)
                 for l in script if l.startswith('export '))
  for key, value in gpu.items():
    assert exports[key] == value


def test_slurm_optional_header_lines():
  script = dry('slurm.py', '--nodes', '1', '--gpus-per-node', '2',
               '--job-name', 'h14', '--term-before-end', '0',
               '--sbatch=--constraint=h100', '--chdir', '/shared/mae', '--',
               *PASS)
  header = [l for l in script if l.startswith('#SBATCH ')]
  assert header == [
      '#SBATCH --job-name=h14', '#SBATCH --nodes=1',
      '#SBATCH --ntasks-per-node=1', '#SBATCH --gpus-per-node=2',
      '#SBATCH --output=%x-%j.out', '#SBATCH --chdir=/shared/mae',
      '#SBATCH --constraint=h100']


def test_slurm_script_runs_with_stub_srun(tmp_path, stub_python):
  bin_dir = stub_bin(tmp_path, 'srun',
                     '#!/bin/sh\n[ "$1" = --kill-on-bad-exit=1 ] || exit 99\n'
                     'shift\nexec "$@"\n')
  script = '\n'.join(dry('slurm.py', '--nodes', '2', '--gpus-per-node', '4',
                         '--python', str(stub_python), '--env', 'MY_VAR=x y',
                         '--', *PASS)) + '\n'
  path = tmp_path / 'job.sbatch'
  path.write_text(script)
  out = tmp_path / 'rec.json'
  subprocess.run(['bash', str(path)], check=True, timeout=30, env=with_bin(
      bin_dir, STUB_OUT=str(out)))
  rec = read_record(out)
  assert rec['argv'] == ['-m', 'mae_jax.main', *PASS]
  assert rec['env']['JAX_LOCAL_DEVICE_IDS'] == '0,1,2,3'
  assert rec['env']['XLA_FLAGS'] == LHS
  assert rec['env']['MY_VAR'] == 'x y'


def test_slurm_writes_the_script_and_calls_sbatch(tmp_path):
  calls = tmp_path / 'sbatch_calls'
  bin_dir = stub_bin(tmp_path, 'sbatch', f'#!/bin/sh\necho "$@" >> {calls}\n'
                     'echo "Submitted batch job 42"\n')
  job = tmp_path / 'job.sbatch'
  args = ['--nodes', '2', '--gpus-per-node', '8', '--', *PASS]
  proc = launch('slurm.py', '--script', str(job), *args, env=with_bin(bin_dir))
  assert 'Submitted batch job 42' in proc.stdout
  assert calls.read_text().split() == [str(job)]
  assert job.read_text().splitlines() == dry('slurm.py', *args)


# ---------------------------------------------------------------------------
# tpu_pod.py


def test_tpu_create_commands():
  common = ['--accelerator-type', 'v5p-64', '--version', 'v2-alpha-tpuv5']
  assert dry('tpu_pod.py', 'create', *TPU, *common) == [
      'gcloud compute tpus tpu-vm create mae --zone=us-east5-a '
      '--accelerator-type=v5p-64 --version=v2-alpha-tpuv5']
  assert dry('tpu_pod.py', 'create', *TPU, *common, '--queued', '--spot',
             '--project', 'proj') == [
      'gcloud compute tpus queued-resources create mae --zone=us-east5-a '
      '--project=proj --accelerator-type=v5p-64 '
      '--runtime-version=v2-alpha-tpuv5 --node-id=mae --spot']
  assert dry('tpu_pod.py', 'create', *TPU, *common, '--num-slices', '2',
             '--best-effort', '--gcloud-arg=--reserved') == [
      'gcloud compute tpus queued-resources create mae --zone=us-east5-a '
      '--accelerator-type=v5p-64 --runtime-version=v2-alpha-tpuv5 '
      '--node-count=2 --node-prefix=mae --best-effort --reserved']
  proc = launch('tpu_pod.py', 'create', *TPU, *common, '--best-effort',
                '--dry-run', check=False)
  assert proc.returncode == 2 and '--queued' in proc.stderr


def test_tpu_run_command():
  (line,) = dry('tpu_pod.py', 'run', *TPU, '--', *PASS)
  words = shlex.split(line)
  assert words[:8] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'mae',
                       '--zone=us-east5-a', '--worker=all']
  assert len(words) == 9 and words[8].startswith('--command=')
  remote = remote_command(line)
  assert remote == (
      'set -o pipefail; mkdir -p ~/mae_jax_logs && cd ~/mae_jax && '
      'PYTHONUNBUFFERED=1 .venv/bin/python -m mae_jax.main '
      + shlex.join(TPU_PASS_PREFIX + PASS)
      + ' 2>&1 | tee -a ~/mae_jax_logs/run-$(hostname).log')
  assert main_args(shlex.split(remote.split(' 2>&1 ')[0])) == TPU_PASS_PREFIX + PASS


def test_tpu_run_executes_remotely_as_printed(tmp_path, stub_python):
  repo, logs = tmp_path / 'repo dir', tmp_path / 'logs'
  repo.mkdir()
  (line,) = dry('tpu_pod.py', 'run', *TPU, '--remote-dir', str(repo),
                '--log-dir', str(logs), '--python', str(stub_python),
                '--env', 'MY_VAR=a "b"', '--', *PASS)
  out = tmp_path / 'rec.json'
  subprocess.run(['bash', '-c', remote_command(line)], check=True, timeout=30,
                 capture_output=True, env=clean_env(STUB_OUT=str(out)))
  rec = read_record(out)
  assert rec['argv'] == ['-m', 'mae_jax.main', *TPU_PASS_PREFIX, *PASS]
  assert rec['cwd'] == str(repo)
  assert rec['env']['PYTHONUNBUFFERED'] == '1'
  assert rec['env']['MY_VAR'] == 'a "b"'
  log = logs / f'run-{socket.gethostname()}.log'
  assert 'stub ran' in log.read_text()
  # A failing run fails the ssh command (pipefail through tee).
  proc = subprocess.run(['bash', '-c', remote_command(line)], timeout=30,
                        capture_output=True,
                        env=clean_env(STUB_OUT=str(out), STUB_RC='4'))
  assert proc.returncode == 4


def test_tpu_run_detached_then_stop(tmp_path, stub_python):
  repo, logs = tmp_path / 'repo', tmp_path / 'logs'
  repo.mkdir()
  (line,) = dry('tpu_pod.py', 'run', *TPU, '--detach', '--remote-dir',
                str(repo), '--log-dir', str(logs), '--log-name', 'l16',
                '--python', str(stub_python), '--', *PASS)
  remote = remote_command(line)
  assert ' nohup ' in remote and '< /dev/null & echo $! > ' in remote
  (stop,) = dry('tpu_pod.py', 'stop', *TPU, '--log-dir', str(logs),
                '--log-name', 'l16')
  assert shlex.split(stop)[:8] == shlex.split(line)[:8]
  out = tmp_path / 'rec.json'
  env = clean_env(STUB_OUT=str(out), STUB_WAIT_TERM='1')
  # Nothing recorded yet: stop says so and succeeds.
  proc = subprocess.run(['bash', '-c', remote_command(stop)], check=True,
                        timeout=30, capture_output=True, text=True, env=env)
  assert 'no running mae_jax.main' in proc.stdout
  proc = subprocess.run(['bash', '-c', remote], check=True, timeout=30,
                        capture_output=True, text=True, env=env)
  assert 'started' in proc.stdout
  started = pathlib.Path(str(out) + '.started')
  deadline = time.time() + 10
  while not started.exists():
    assert time.time() < deadline
    time.sleep(0.05)
  host = socket.gethostname()
  pid = int((logs / f'l16-{host}.pid').read_text())
  proc = subprocess.run(['bash', '-c', remote_command(stop)], check=True,
                        timeout=30, capture_output=True, text=True, env=env)
  assert f'sent SIGTERM to {pid}' in proc.stdout
  rec = read_record(out)
  assert rec['terminated'] is True
  assert rec['argv'] == ['-m', 'mae_jax.main', *TPU_PASS_PREFIX, *PASS]
  assert (logs / f'l16-{host}.log').exists()


def test_tpu_multislice_run_sets_dcn_unless_given():
  proc = launch('tpu_pod.py', 'run', *TPU, '--num-slices', '4', '--dry-run',
                '--', *PASS)
  assert '--batch-size' in proc.stderr  # the 64-workers-at-a-time note
  (line,) = dry('tpu_pod.py', 'run', *TPU, '--num-slices', '4',
                '--batch-size', '256', '--', *PASS)
  words = shlex.split(line)
  assert words[:10] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'ssh',
                        'mae', '--zone=us-east5-a', '--node=all', '--worker=all',
                        '--batch-size=256']
  args = main_args(shlex.split(remote_command(line).split(' 2>&1 ')[0]))
  assert args == TPU_PASS_PREFIX + PASS + ['--config.mesh.dcn=4']
  for given in (['--config.mesh.dcn=2'], ['--config.mesh.dcn', '2']):
    (line,) = dry('tpu_pod.py', 'run', *TPU, '--num-slices', '4', '--',
                  *PASS, *given)
    args = main_args(shlex.split(remote_command(line).split(' 2>&1 ')[0]))
    assert args == TPU_PASS_PREFIX + PASS + given
  # One slice: the config's dcn=1 stands.
  (line,) = dry('tpu_pod.py', 'run', *TPU, '--', *PASS)
  assert 'mesh.dcn' not in line


def test_tpu_setup_command_and_script(tmp_path):
  (line,) = dry('tpu_pod.py', 'setup', *TPU, '--repo',
                'https://github.com/org/mae_jax.git', '--ref', 'v1')
  words = shlex.split(line)
  assert words[:8] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'mae',
                       '--zone=us-east5-a', '--worker=all']
  remote = remote_command(line)
  for part in ('git clone https://github.com/org/mae_jax.git ~/mae_jax',
               'git fetch origin v1', 'uv venv --allow-existing --python 3.12 .venv',
               'uv pip install --python .venv/bin/python -e ".[dev]" "jax[tpu]"'):
    assert part in remote
  if shutil.which('git') is None:
    pytest.skip('git not installed')
  # Run the remote script here: a throwaway repo, a stub uv whose venv
  # python is this interpreter (which has jax and mae_jax).
  src = tmp_path / 'src'
  git = ['git', '-c', 'user.name=t', '-c', 'user.email=t@t']
  subprocess.run(git + ['init', '-q', str(src)], check=True)
  (src / 'README').write_text('v1\n')
  subprocess.run(git + ['-C', str(src), 'add', '.'], check=True)
  subprocess.run(git + ['-C', str(src), 'commit', '-qm', 'v1'], check=True)
  subprocess.run(git + ['-C', str(src), 'tag', 'v1'], check=True)
  (src / 'README').write_text('v2\n')
  subprocess.run(git + ['-C', str(src), 'commit', '-qam', 'v2'], check=True)
  home = tmp_path / 'home'
  (home / '.local' / 'bin').mkdir(parents=True)
  write_executable(home / '.local' / 'bin' / 'uv', f'''#!/bin/sh
echo "$@" >> "$HOME/uv_calls"
if [ "$1" = venv ]; then
  mkdir -p .venv/bin
  printf '#!/bin/sh\\nexec {sys.executable} "$@"\\n' > .venv/bin/python
  chmod +x .venv/bin/python
fi
''')
  (line,) = dry('tpu_pod.py', 'setup', *TPU, '--repo', str(src), '--ref', 'v1')
  env = clean_env(HOME=str(home))
  proc = subprocess.run(['bash', '-c', remote_command(line)], env=env,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert (home / 'mae_jax' / 'README').read_text() == 'v1\n'
  calls = (home / 'uv_calls').read_text().splitlines()
  assert calls == ['venv --allow-existing --python 3.12 .venv',
                   'pip install --python .venv/bin/python -e .[dev] jax[tpu]']
  # Again, now at the remote's HEAD: the existing clone is updated.
  (line,) = dry('tpu_pod.py', 'setup', *TPU, '--repo', str(src))
  subprocess.run(['bash', '-c', remote_command(line)], env=env, check=True,
                 capture_output=True, timeout=60)
  assert (home / 'mae_jax' / 'README').read_text() == 'v2\n'


def test_tpu_logs_and_delete_commands():
  assert dry('tpu_pod.py', 'logs', *TPU) == [
      'mkdir -p tpu_logs/mae',
      'gcloud compute tpus tpu-vm scp --recurse mae:mae_jax_logs tpu_logs/mae '
      '--zone=us-east5-a --worker=all']
  assert dry('tpu_pod.py', 'logs', *TPU, '--num-slices', '2', '--local-dir',
             'here', '--project', 'p') == [
      'mkdir -p here',
      'gcloud compute tpus queued-resources scp --recurse mae:mae_jax_logs here '
      '--zone=us-east5-a --project=p --node=all --worker=all']
  assert dry('tpu_pod.py', 'delete', *TPU) == [
      'gcloud compute tpus tpu-vm delete mae --zone=us-east5-a --quiet']
  assert dry('tpu_pod.py', 'delete', *TPU, '--queued') == [
      'gcloud compute tpus queued-resources delete mae --zone=us-east5-a '
      '--force --quiet']


def test_tpu_runs_the_commands(tmp_path):
  calls = tmp_path / 'gcloud_calls'
  env = with_bin(stub_bin(
      tmp_path, 'gcloud', f'#!{sys.executable}\nimport json, sys\n'
      f'open({str(calls)!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")\n'
      'sys.exit(5 if "delete" in sys.argv else 0)\n'))
  (printed,) = dry('tpu_pod.py', 'run', *TPU, '--', *PASS)
  launch('tpu_pod.py', 'run', *TPU, '--', *PASS, env=env)
  (call,) = [json.loads(l) for l in calls.read_text().splitlines()]
  assert ['gcloud'] + call == shlex.split(printed)
  proc = launch('tpu_pod.py', 'delete', *TPU, env=env, check=False)
  assert proc.returncode == 5 and 'status 5' in proc.stderr


# ---------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize('script,args,missing', [
    ('tpu_pod.py', ['run', '--name', 'mae', '--', *PASS], '--zone'),
    ('tpu_pod.py', ['run', '--zone', 'z', '--', *PASS], '--name'),
    ('tpu_pod.py', ['create', *TPU, '--version', 'v2-alpha-tpuv5'],
     '--accelerator-type'),
    ('tpu_pod.py', ['create', *TPU, '--accelerator-type', 'v5p-8'], '--version'),
    ('tpu_pod.py', ['setup', *TPU], '--repo'),
    ('tpu_pod.py', ['run', *TPU, '--', '--config=configs/demo.py'], '--workdir'),
    ('tpu_pod.py', [], 'COMMAND'),
    ('slurm.py', ['--gpus-per-node', '8', '--', *PASS], '--nodes'),
    ('slurm.py', ['--nodes', '2', '--', *PASS], '--gpus-per-node'),
    ('slurm.py', ['--nodes', '2', '--gpus-per-node', '8'], '--workdir'),
    ('gpu_host.py', ['--', '--config=configs/demo.py'], '--workdir'),
])
def test_missing_required_option_is_named(script, args, missing):
  proc = launch(script, *args, '--dry-run', check=False)
  assert proc.returncode == 2
  assert missing in proc.stderr
  assert proc.stdout == ''


@pytest.mark.parametrize('args,message', [
    (['logs', *TPU, '--', '--workdir=x'], 'unrecognized arguments'),
    (['delete', *TPU, '--bogus'], 'unrecognized arguments'),
    (['run', *TPU, '--batch-size', '8', '--', *PASS], '--num-slices'),
    (['run', *TPU, '--env', 'no-equals', '--', *PASS], 'KEY=VALUE'),
])
def test_tpu_bad_arguments(args, message):
  proc = launch('tpu_pod.py', *args, '--dry-run', check=False)
  assert proc.returncode == 2 and message in proc.stderr


def test_gpu_host_bad_gpus():
  proc = launch('gpu_host.py', '--gpus', '0,x', '--dry-run', '--', *PASS,
                check=False)
  assert proc.returncode == 2 and '--gpus' in proc.stderr
