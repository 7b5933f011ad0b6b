"""The evaluator contract and registry.

An evaluator is a class registered under a name, configured by
`config.evals.<name>` (always with `enabled` and `every_steps`), constructed
with the shared EvalContext and run as `run(params, step) -> {key: value}`.
Adding one = a class + `@register('name')` + a config entry in config.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections

from mae_jax.config import ConfigError, open_split
from mae_jax.evaluators.features import FeatureExtractor

EVALUATORS: dict[str, type] = {}


def register(name: str):
  def wrap(cls):
    cls.name = name
    EVALUATORS[name] = cls
    return cls
  return wrap


@dataclasses.dataclass
class EvalContext:
  """What every evaluator may use; built once per run by train.py/evaluate.py.

  init_params: key -> random-init params (the baseline), sharded like training.
  """
  config: ml_collections.ConfigDict
  graphdef: Any
  mesh: jax.sharding.Mesh
  init_params: Callable[[jax.Array], Any]
  baseline_key: jax.Array
  writer: Any  # metrics.MetricWriter
  workdir: str
  _baseline: Any = None
  _features: FeatureExtractor | None = None

  @property
  def features(self) -> FeatureExtractor:
    if self._features is None:
      self._features = FeatureExtractor(self.config, self.graphdef, self.mesh)
    return self._features

  def baseline_params(self):
    """The same architecture at random init (the seed's step-0 parameters)."""
    if self._baseline is None:
      self._baseline = self.init_params(self.baseline_key)
    return self._baseline


class Evaluator:
  name = ''
  tasks = ('pretrain', 'classify')  # the config.task values it can evaluate

  def __init__(self, ctx: EvalContext, cfg: ml_collections.ConfigDict):
    self.ctx, self.cfg = ctx, cfg
    self.every_steps = cfg.every_steps

  @classmethod
  def check_data(cls, config: ml_collections.ConfigDict, opened: dict) -> None:
    """Opens what run() will read (through config.open_split with `opened`);
    ConfigError if it cannot. Called before a run writes anything, so a
    missing split is found before training."""

  def run(self, params, step: int, tag: str = 'trained'
          ) -> dict[str, float]:
    """tag names the parameters ('trained', or 'ema' for their moving
    average): what an evaluator caches or writes is kept apart per tag."""
    raise NotImplementedError


class FeatureEvaluator(Evaluator):
  """Scores frozen features of the trained encoder and, with the same recipe,
  of the random-init encoder: {name}/accuracy, {name}/random_init_accuracy."""

  @classmethod
  def check_data(cls, config: ml_collections.ConfigDict, opened: dict) -> None:
    who = f'evaluator {cls.name}'
    if not config.data.eval_split:
      raise ConfigError(f'{who} needs config.data.eval_split (a labelled test '
                        'split); it is empty')
    if config.data.multi_label:
      raise ConfigError(f'{who} scores single-label accuracy, but '
                        'config.data.multi_label=True; fine-tune instead '
                        "(task='classify': the classification evaluator "
                        'reports mAP)')
    open_split(config, config.data.split, who, opened)
    test = open_split(config, config.data.eval_split, who, opened)
    if test.num_classes == 0:
      raise ConfigError(f'{who} needs labels, but split '
                        f'{config.data.eval_split!r} of config.data.source='
                        f'{config.data.source!r} is unlabelled (a folder '
                        'source takes labels from class subdirectories)')

  def score(self, train_x, train_y, test_x, test_y, num_classes: int) -> float:
    raise NotImplementedError

  def metrics(self, train_x, train_y, test_x, test_y, num_classes: int
              ) -> dict[str, float]:
    """{'accuracy': score()}; an evaluator may add keys (e.g. top5)."""
    return {'accuracy': self.score(train_x, train_y, test_x, test_y,
                                   num_classes)}

  def run(self, params, step: int, tag: str = 'trained'
          ) -> dict[str, float]:
    out = {}
    for prefix, p, tag in (('', params, (tag, step)),
                           ('random_init_', self.ctx.baseline_params(),
                            'baseline')):
      for key, value in self.metrics(*self.labelled_features(p, tag)).items():
        out[f'{self.name}/{prefix}{key}'] = value
    return out

  def labelled_features(self, params, tag, pool: str | None = None,
                        cache: bool = True):
    """-> (train_x, train_y, test_x, test_y, num_classes): features of
    config.data.split and config.data.eval_split (see FeatureExtractor),
    pooled as `pool` (default the evaluator's cfg.pool)."""
    c, cfg = self.ctx.config, self.cfg
    pool = pool or cfg.pool
    if not c.data.eval_split:
      raise ConfigError(f'evaluator {self.name} needs config.data.eval_split '
                       '(a labelled test split); it is empty')
    train_x, train_y = self.ctx.features(
        params, c.data.split, pool=pool, max_examples=cfg.max_train_examples,
        tag=tag, cache=cache)
    test_x, test_y = self.ctx.features(
        params, c.data.eval_split, pool=pool,
        max_examples=cfg.max_test_examples, tag=tag, cache=cache)
    if train_y.min() < 0 or test_y.min() < 0:
      raise ConfigError(f'evaluator {self.name} needs labels, but '
                       f'config.data.source={c.data.source!r} has unlabelled '
                       'examples')
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return train_x, train_y, test_x, test_y, num_classes


def check_training(key: str, cfg, lr_key: str) -> None:
  """The checks every trained probe shares: epochs, batch, warmup, lr and
  weight decay (ValueError naming `key`, e.g. 'config.evals.linear_probe')."""
  if cfg.epochs < 1 or cfg.batch_size < 1:
    raise ValueError(f'{key}: epochs={cfg.epochs} and batch_size='
                     f'{cfg.batch_size} must be >= 1')
  if not 0 <= cfg.warmup_epochs <= cfg.epochs:
    raise ValueError(f'{key}.warmup_epochs={cfg.warmup_epochs}: must be in '
                     f'[0, epochs={cfg.epochs}]')
  if cfg[lr_key] <= 0 or cfg.weight_decay < 0:
    raise ValueError(f'{key}: {lr_key}={cfg[lr_key]} must be > 0 and '
                     f'weight_decay={cfg.weight_decay} >= 0')


def check_config(config: ml_collections.ConfigDict) -> None:
  for name, cfg in config.evals.items():
    if name not in EVALUATORS:
      raise ConfigError(f'config.evals.{name}: unknown evaluator; allowed '
                       f'{sorted(EVALUATORS)}')
    if cfg.every_steps < 0:
      raise ConfigError(f'config.evals.{name}.every_steps={cfg.every_steps}: '
                       'must be >= 0 (0 = only at the end)')
    if cfg.get('pool') == 'cls' and not config.model.cls_token:
      raise ConfigError(f"config.evals.{name}.pool='cls' needs "
                        'config.model.cls_token=True; use pool=mean')
    if cfg.enabled and config.task not in EVALUATORS[name].tasks:
      raise ConfigError(f'config.evals.{name} evaluates task '
                        f'{" or ".join(EVALUATORS[name].tasks)}, not '
                        f'task={config.task!r}: set config.evals.{name}'
                        '.enabled=False')
    check = getattr(EVALUATORS[name], 'check_config', None)
    if check:
      check(config, cfg)
  if config.eval_batch_size < 1:
    raise ConfigError(f'config.eval_batch_size={config.eval_batch_size}: '
                     'must be >= 1')


def selected(config: ml_collections.ConfigDict,
             names: list[str] | None = None) -> list[str]:
  """The enabled evaluators' names, or exactly `names` (checked)."""
  unknown = sorted(set(names or ()) - set(EVALUATORS))
  if unknown:
    raise ConfigError(f'unknown evaluators {unknown}; allowed '
                      f'{sorted(EVALUATORS)}')
  return [name for name, cfg in config.evals.items()
          if (cfg.enabled if names is None else name in names)]


def check_data(config: ml_collections.ConfigDict,
               names: list[str] | None = None,
               opened: dict | None = None) -> None:
  """Every selected evaluator's data opens (ConfigError otherwise); each
  split is opened once. opened: split -> source the caller already has."""
  opened = {} if opened is None else opened
  for name in selected(config, names):
    EVALUATORS[name].check_data(config, opened)


def build(ctx: EvalContext, names: list[str] | None = None) -> list[Evaluator]:
  """The enabled evaluators (or exactly `names`, enabled or not)."""
  return [EVALUATORS[name](ctx, ctx.config.evals[name])
          for name in selected(ctx.config, names)]
