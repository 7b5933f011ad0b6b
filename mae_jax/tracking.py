"""Optional experiment tracking beside metrics.jsonl and TensorBoard: Weights &
Biases and MLflow. Both are off by default and installed as extras:

    pip install 'mae_jax[wandb]'    # --config.tracking.wandb.enabled=True
    pip install 'mae_jax[mlflow]'   # --config.tracking.mlflow.enabled=True

A tracker receives every record metrics.jsonl gets, with the same keys (MLflow
maps characters it refuses, see `mlflow_key`). Per step it skips values that
are None (non-finite, written as null in metrics.jsonl) or not numbers; bools
are logged as 0/1, as TensorBoard does. The resolved config is the run's
config (W&B) or its params (MLflow).

Resume: the first start stores each tracker's run id in <workdir>/tracking.json;
the same command on the same workdir continues that W&B / MLflow run. Steps that
are trained again after a crash (from the last checkpoint on) give the same
values: MLflow keeps both points, W&B drops steps below the last one it has.

metrics.jsonl stays the record of truth: a tracker that fails to log (its server
is down) prints one warning and training goes on.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import secrets
import sys
import time
from typing import Any, Mapping, Protocol

import ml_collections
import numpy as np

from mae_jax import workdir as workdir_lib
from mae_jax.errors import ConfigError, Error

STATE_FILE = 'tracking.json'
_WANDB_MODES = ('online', 'offline')


def default_config() -> ml_collections.ConfigDict:
  """config.tracking."""
  return ml_collections.ConfigDict(dict(
      wandb=dict(
          enabled=False,
          project='mae_jax',
          entity='',        # '' = your W&B default entity
          name='',          # run display name; '' = the workdir's folder name
          mode='online',    # online | offline (then: wandb sync <workdir>/wandb)
          tags=(),
      ),
      mlflow=dict(
          enabled=False,
          tracking_uri='',  # '' = sqlite:///<workdir>/mlflow.db (stays local)
          experiment='mae_jax',
          run_name='',      # '' = the workdir's folder name
      ),
  ))


class Tracker(Protocol):
  def write(self, step: int, record: Mapping[str, Any]) -> None: ...
  def close(self) -> None: ...


def _fail(key: str, value, allowed: str):
  raise ConfigError(f'config.tracking.{key}={value!r}: {allowed}')


def _installed(module: str) -> bool:
  # find_spec does not import: cheap, and no package side effects at check time.
  try:
    return importlib.util.find_spec(module) is not None
  except ValueError:  # sys.modules[module] is None or has no __spec__
    return module in sys.modules and sys.modules[module] is not None


def _uses_database(uri: str) -> bool:
  """'' (our SQLite default) and SQLAlchemy URIs need sqlalchemy + alembic,
  which mlflow-skinny leaves out."""
  return uri == '' or uri.split(':', 1)[0].split('+')[0] in (
      'sqlite', 'postgresql', 'mysql', 'mssql')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the key. No imports of the trackers, no network."""
  t = config.get('tracking')
  if t is None:
    return
  w, m = t.wandb, t.mlflow
  if w.enabled:
    if not _installed('wandb'):
      _fail('wandb.enabled', True,
            "needs the wandb package: pip install 'mae_jax[wandb]'")
    if w.mode not in _WANDB_MODES:
      _fail('wandb.mode', w.mode, f'allowed {_WANDB_MODES}')
    if not w.project:
      _fail('wandb.project', w.project, 'must name a W&B project')
    if isinstance(w.tags, str) or not all(isinstance(x, str) for x in w.tags):
      _fail('wandb.tags', w.tags, "must be a tuple of strings, e.g. ('mae', 'b16')")
  if m.enabled:
    if not _installed('mlflow'):
      _fail('mlflow.enabled', True,
            "needs the mlflow package: pip install 'mae_jax[mlflow]'")
    if _uses_database(m.tracking_uri) and not (
        _installed('sqlalchemy') and _installed('alembic')):
      _fail('mlflow.tracking_uri', m.tracking_uri,
            "a database store ('' = SQLite in the workdir) needs sqlalchemy "
            "and alembic: pip install 'mae_jax[mlflow]'")
    if not m.experiment:
      _fail('mlflow.experiment', m.experiment, 'must name an MLflow experiment')


def build(config: ml_collections.ConfigDict, workdir: str, *,
          enabled: bool) -> list[Tracker]:
  """The enabled trackers; [] when `enabled` is False (processes other than 0)."""
  t = config.get('tracking')
  if not enabled or t is None:
    return []
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  run_config = config.to_dict()
  trackers = []
  for name, cls in (('wandb', WandbTracker), ('mlflow', MlflowTracker)):
    if t[name].enabled:
      try:
        trackers.append(cls(t[name], workdir, run_config))
      except Exception as e:  # pylint: disable=broad-except
        if isinstance(e, Error):
          raise
        # A bad login or an unreachable server: say so before training.
        raise ConfigError(f'config.tracking.{name}: cannot start the run: '
                          f'{type(e).__name__}: {e}') from e
  return trackers


# -- what every tracker shares -------------------------------------------------

def _load_state(workdir: str) -> dict:
  path = os.path.join(workdir, STATE_FILE)
  if not os.path.exists(path):
    return {}
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    # Starting new runs silently would split the run's history in two.
    raise ConfigError(f'{path}: unreadable ({e}); it holds the tracker run ids '
                      'of this workdir: fix it, or delete it to start new '
                      'tracker runs') from None


def _save_state(workdir: str, tracker: str, entry: dict) -> None:
  state = _load_state(workdir)
  state[tracker] = entry
  workdir_lib.write_atomic(os.path.join(workdir, STATE_FILE),
                           json.dumps(state, indent=2, sort_keys=True))


def _scalars(record: Mapping[str, Any]) -> dict[str, int | float]:
  """The loggable values of one record, without 'step'."""
  out = {}
  for k, v in record.items():
    if k == 'step' or v is None:
      continue
    if isinstance(v, np.generic):
      v = v.item()
    if isinstance(v, bool):
      v = int(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
      out[k] = v
  return out


class _Tracker:
  """write/close that never stop training (see the module docstring)."""
  name = ''

  def __init__(self):
    self._failing = False

  def write(self, step: int, record: Mapping[str, Any]) -> None:
    metrics = _scalars(record)
    if metrics:
      self._guard(f'log step {step}', self._log, int(step), metrics)

  def close(self) -> None:
    self._guard('close the run', self._close)

  def _guard(self, what, fn, *args) -> None:
    try:
      fn(*args)
      self._failing = False
    except Exception as e:  # pylint: disable=broad-except
      if not self._failing:  # once per outage, not once per step
        print(f'tracking: {self.name} could not {what}: {e!r}; training goes '
              'on and metrics.jsonl has every record', file=sys.stderr,
              flush=True)
      self._failing = True

  def _log(self, step: int, metrics: dict) -> None:
    raise NotImplementedError

  def _close(self) -> None:
    raise NotImplementedError


# -- Weights & Biases ----------------------------------------------------------

class WandbTracker(_Tracker):
  """One W&B run per workdir. Keys are logged unchanged: W&B groups
  'linear_probe/accuracy' into a 'linear_probe' section, as TensorBoard does.

  Offline mode writes <workdir>/wandb/offline-run-*-<id>/ per start (same id);
  `wandb sync <workdir>/wandb` uploads them in order into one run.
  """
  name = 'wandb'

  def __init__(self, cfg, workdir: str, run_config: dict):
    super().__init__()
    if cfg.mode == 'offline':
      # wandb-core reports its own errors online unless told not to; offline
      # means nothing leaves the machine. An explicit user setting wins.
      os.environ.setdefault('WANDB_ERROR_REPORTING', 'false')
    import wandb  # pylint: disable=g-import-not-at-top
    run_id = _load_state(workdir).get('wandb', {}).get('run_id')
    if not run_id:
      # Chosen and saved before init, so a crash inside init still resumes it.
      run_id = secrets.token_hex(6)
      _save_state(workdir, 'wandb', {'run_id': run_id})
    self.run_id = run_id
    self._run = wandb.init(
        project=cfg.project, entity=cfg.entity or None,
        name=cfg.name or os.path.basename(workdir), tags=list(cfg.tags) or None,
        dir=workdir, id=run_id, resume='allow', mode=cfg.mode,
        # A resumed run may change keys such as stop_at_step: W&B keeps the
        # latest values, as config.json does.
        config=run_config, allow_val_change=True)

  def _log(self, step, metrics):
    self._run.log(metrics, step=step)

  def _close(self):
    self._run.finish()


# -- MLflow --------------------------------------------------------------------

_MLFLOW_BAD_CHARS = re.compile(r'[^\w./\- ]')
_MLFLOW_KEY_LEN = 250      # MLflow's limit for metric and param names
_MLFLOW_PARAM_LEN = 500    # older MLflow servers' value limit (newer: 6000)


def mlflow_key(name: str) -> str:
  """A metric/param name MLflow accepts. It allows letters, digits, '_', '-',
  '.', ' ' and '/' ('linear_probe/accuracy' stays as it is); anything else
  becomes '_', and empty, '.' or '..' path parts (which MLflow refuses) are
  dropped. Colons are mapped too: MLflow refuses them on Windows."""
  name = _MLFLOW_BAD_CHARS.sub('_', name)
  name = '/'.join(p for p in name.split('/') if p not in ('', '.', '..'))
  return name[:_MLFLOW_KEY_LEN]


def mlflow_params(run_config: Mapping[str, Any], prefix: str = '') -> dict:
  """Nested config -> {'model.variant': 'mu/4', 'data.mean': '(0.485, ...)'}.
  Non-strings are written as Python literals (what --config.KEY=VALUE takes);
  values over 500 characters are cut to 497 + '...' (config.json in the
  workdir has them whole)."""
  out = {}
  for k, v in run_config.items():
    key = f'{prefix}{k}'
    if isinstance(v, Mapping) and v:
      out.update(mlflow_params(v, key + '.'))
      continue
    v = v if isinstance(v, str) else repr(v)
    if len(v) > _MLFLOW_PARAM_LEN:
      v = v[:_MLFLOW_PARAM_LEN - 3] + '...'
    out[mlflow_key(key)] = v
  return out


class MlflowTracker(_Tracker):
  """One MLflow run per workdir, through an MlflowClient: no process-wide
  active run or tracking URI is set, so user code using mlflow is unaffected."""
  name = 'mlflow'

  def __init__(self, cfg, workdir: str, run_config: dict):
    super().__init__()
    # MLflow sends usage telemetry from import on; by default nothing of a run
    # leaves the machine. Set MLFLOW_DISABLE_TELEMETRY=false to allow it.
    os.environ.setdefault('MLFLOW_DISABLE_TELEMETRY', 'true')
    # pylint: disable=g-import-not-at-top
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    # pylint: enable=g-import-not-at-top
    self._metric = Metric
    local = not cfg.tracking_uri
    # SQLite, not ./mlruns files: MLflow 3 refuses its file store by default.
    uri = cfg.tracking_uri or 'sqlite:///' + os.path.join(workdir, 'mlflow.db')
    run_id = _load_state(workdir).get('mlflow', {}).get('run_id')
    self._client = client = MlflowClient(tracking_uri=uri)  # creates the db

    run = None
    if run_id:
      try:
        run = client.get_run(run_id)
      except MlflowException as e:
        # Another store, or the run was deleted for good: start a new run.
        # Anything else (the server is down) is an error at start.
        if e.error_code != 'RESOURCE_DOES_NOT_EXIST':
          raise
      if run is not None and run.info.lifecycle_stage != 'active':
        run = None
    if run is None:
      exp = client.get_experiment_by_name(cfg.experiment)
      exp_id = exp.experiment_id if exp else client.create_experiment(
          cfg.experiment,
          # Else artifacts would go to ./mlruns under the current directory.
          artifact_location=(os.path.join(workdir, 'mlartifacts') if local
                             else None))
      run = client.create_run(
          exp_id, run_name=cfg.run_name or os.path.basename(workdir))
      _save_state(workdir, 'mlflow', {'run_id': run.info.run_id,
                                      'experiment_id': exp_id,
                                      'tracking_uri': uri})
    else:
      client.update_run(run.info.run_id, status='RUNNING')
    self.run_id = run.info.run_id

    # A param cannot change once logged (MLflow refuses), so a resumed run logs
    # only new keys and keeps the first value of changed ones.
    logged = run.data.params
    params = mlflow_params(run_config)
    changed = sorted(k for k in params if k in logged and logged[k] != params[k])
    if changed:
      print(f'tracking: mlflow run {self.run_id} keeps its first values of '
            f'{", ".join(changed)} (config.json has the new ones)', flush=True)
    client.log_batch(self.run_id, params=[
        Param(k, v) for k, v in params.items() if k not in logged])

  def _log(self, step, metrics):
    now = int(time.time() * 1000)
    self._client.log_batch(self.run_id, metrics=[
        self._metric(mlflow_key(k), float(v), now, step)
        for k, v in metrics.items()])

  def _close(self):
    self._client.set_terminated(self.run_id)
