"""Weighted k-nearest-neighbour classification on frozen features.

Cosine similarity, the k most similar training examples vote with weight
exp(similarity / temperature) (the protocol of Wu et al. 2018, as used by DINO).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.evaluators.base import FeatureEvaluator, register
from mae_jax.evaluators.features import POOLS


@functools.partial(jax.jit, static_argnames=('k', 'num_classes'))
def _knn_predict(train_x, train_y, query, *, k: int, num_classes: int,
                 temperature: float):
  """train_x: [N, D], query: [Q, D] (both L2-normalized) -> classes [Q]."""
  sims, idx = jax.lax.top_k(query @ train_x.T, k)  # [Q, k]
  votes = jax.nn.one_hot(train_y[idx], num_classes) * jnp.exp(
      sims / temperature)[..., None]
  return jnp.argmax(votes.sum(axis=1), axis=1)


def knn_accuracy(train_x, train_y, test_x, test_y, *, num_classes: int, k: int,
                 temperature: float, chunk: int = 1024) -> float:
  normalize = lambda a: a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)
  train_x, test_x = jnp.asarray(normalize(train_x)), normalize(test_x)
  k = min(k, train_x.shape[0])
  preds = [np.asarray(_knn_predict(train_x, jnp.asarray(train_y),
                                   jnp.asarray(test_x[i:i + chunk]), k=k,
                                   num_classes=num_classes,
                                   temperature=temperature))
           for i in range(0, len(test_x), chunk)]
  return float(np.mean(np.concatenate(preds) == test_y))


@register('knn')
class KNN(FeatureEvaluator):

  @staticmethod
  def check_config(config, cfg) -> None:
    if cfg.pool not in POOLS:
      raise ValueError(f'config.evals.knn.pool={cfg.pool!r}: allowed {POOLS}')
    if cfg.k < 1 or cfg.temperature <= 0:
      raise ValueError(f'config.evals.knn: k={cfg.k} must be >= 1 and '
                       f'temperature={cfg.temperature} > 0')

  def score(self, train_x, train_y, test_x, test_y, num_classes: int) -> float:
    return knn_accuracy(train_x, train_y, test_x, test_y,
                        num_classes=num_classes, k=self.cfg.k,
                        temperature=self.cfg.temperature)
