"""Classification quality of a fine-tuned model (task='classify') on the
evaluation split: top-1 and top-5 of the head's logits on the centre crop,
as MAE's fine-tuning reports them (He et al. 2022, Table 3); for multi-label
sets (config.data.multi_label) the mean average precision over classes, as
AudioMAE reports AudioSet (Huang et al. 2022, with sklearn's
average_precision_score per class)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
from flax import nnx

from mae_jax.config import ConfigError, open_split
from mae_jax.evaluators.base import Evaluator, register


def _logits(graphdef, params, images: jax.Array) -> jax.Array:
  """[B, *S, C] -> [B, K] without drop path or augmentation."""
  return nnx.merge(graphdef, params)(images)


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of rows whose label is among the k largest logits (ties
  broken towards the lower class index, as argsort)."""
  top = np.argsort(-logits, axis=1, kind='stable')[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=1)))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
  """scores [N], positive bool [N] -> the area under the precision-recall
  steps: sum over thresholds (the distinct scores, descending) of
  (recall gain) x precision, no interpolation (sklearn's definition).
  Examples with equal scores count as one threshold."""
  order = np.argsort(-scores, kind='stable')
  s, pos = scores[order], positive[order].astype(np.float64)
  # The last index of each run of equal scores: one threshold each.
  last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
  tp = np.cumsum(pos)[last]
  precision = tp / (last + 1)
  recall = tp / tp[-1]
  return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """scores [N, K], multi-hot labels [N, K] -> the mean of the classes'
  average precision, over the classes with a positive example (a class
  without one has no precision-recall curve)."""
  present = [k for k in range(labels.shape[1]) if labels[:, k].any()]
  if not present:
    raise ValueError('mAP: no class has a positive example in the '
                     'evaluation split')
  return float(np.mean([average_precision(scores[:, k], labels[:, k] > 0.5)
                        for k in present]))


@register('classification')
class Classification(Evaluator):
  tasks = ('classify',)

  @classmethod
  def check_data(cls, config, opened: dict) -> None:
    who = 'evaluator classification'
    if not config.data.eval_split:
      raise ConfigError(f'{who} needs config.data.eval_split (a labelled '
                        'split); it is empty')
    test = open_split(config, config.data.eval_split, who, opened)
    if test.num_classes == 0:
      raise ConfigError(f'{who} needs labels, but split '
                        f'{config.data.eval_split!r} is unlabelled')

  def __init__(self, ctx, cfg):
    super().__init__(ctx, cfg)
    self._logits = jax.jit(functools.partial(_logits, ctx.graphdef))

  def run(self, params, step: int, tag: str = 'trained'
          ) -> dict[str, float]:
    del step, tag
    c = self.ctx.config
    logits, labels = self.ctx.features.apply(
        self._logits, params, c.data.eval_split, self.cfg.max_examples)
    if labels.ndim == 2:  # multi-hot: multi-label
      bce = np.asarray(optax.sigmoid_binary_cross_entropy(logits, labels))
      return {'classification/mAP': mean_average_precision(logits, labels),
              'classification/loss': float(np.mean(bce))}
    k = min(5, logits.shape[1])
    picked = np.take_along_axis(logits, labels[:, None], 1)[:, 0]
    return {'classification/top1': top_k_accuracy(logits, labels, 1),
            f'classification/top{k}': top_k_accuracy(logits, labels, k),
            'classification/loss': float(np.mean(
                np.asarray(jax.nn.logsumexp(logits, axis=1)) - picked))}
