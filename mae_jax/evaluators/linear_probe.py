"""Linear probe: softmax regression on frozen, pooled encoder features.

A deliberately simple version of MAE's linear probing (He et al. 2022,
Sec. A.2, which puts a parameter-free BatchNorm before the linear head):
features are standardized with the training split's statistics, then one
linear layer is trained with Adam, cross-entropy and a small L2 penalty. The
same recipe scores the randomly initialized encoder, so the two numbers
differ only by pretraining.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mae_jax.evaluators.base import FeatureEvaluator, register
from mae_jax.evaluators.features import POOLS


def standardize(train: np.ndarray, test: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
  mean, std = train.mean(0), train.std(0) + 1e-6
  return (train - mean) / std, (test - mean) / std


@functools.partial(jax.jit, static_argnames=('num_classes', 'epochs',
                                             'batch_size'))
def fit_linear(x, y, key, *, num_classes: int, epochs: int, batch_size: int,
               lr: float, l2: float):
  """x: [N, D] float32, y: [N] int32 -> {'w': [D, C], 'b': [C]}.

  Minibatch Adam with a cosine-decayed learning rate, fresh shuffle per epoch.
  """
  n, d = x.shape
  batch_size = min(batch_size, n)
  steps = n // batch_size
  sched = optax.cosine_decay_schedule(lr, epochs * steps)
  tx = optax.adam(sched)
  params = {'w': jnp.zeros((d, num_classes)), 'b': jnp.zeros((num_classes,))}

  def loss_fn(p, xb, yb):
    logits = xb @ p['w'] + p['b']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return ce + l2 * jnp.sum(jnp.square(p['w']))

  def train_batch(carry, idx):
    p, opt = carry
    grads = jax.grad(loss_fn)(p, x[idx], y[idx])
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), None

  def train_epoch(carry, epoch_key):
    perm = jax.random.permutation(epoch_key, n)[:steps * batch_size]
    return jax.lax.scan(train_batch, carry, perm.reshape(steps, batch_size))

  (params, _), _ = jax.lax.scan(train_epoch, (params, tx.init(params)),
                                jax.random.split(key, epochs))
  return params


def probe_accuracy(train_x, train_y, test_x, test_y, *, num_classes: int,
                   epochs: int, batch_size: int, lr: float, l2: float,
                   seed: int = 0) -> float:
  """Top-1 accuracy on the test features of a probe fit on the train ones."""
  train_x, test_x = standardize(train_x, test_x)
  p = fit_linear(jnp.asarray(train_x), jnp.asarray(train_y),
                 jax.random.key(seed), num_classes=num_classes, epochs=epochs,
                 batch_size=batch_size, lr=lr, l2=l2)
  pred = np.asarray(jnp.argmax(jnp.asarray(test_x) @ p['w'] + p['b'], axis=1))
  return float(np.mean(pred == test_y))


@register('linear_probe')
class LinearProbe(FeatureEvaluator):

  @staticmethod
  def check_config(config, cfg) -> None:
    if cfg.pool not in POOLS:
      raise ValueError(f'config.evals.linear_probe.pool={cfg.pool!r}: '
                       f'allowed {POOLS}')
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0 or cfg.l2 < 0:
      raise ValueError('config.evals.linear_probe: epochs and batch_size must '
                       'be >= 1, lr > 0, l2 >= 0')

  def score(self, train_x, train_y, test_x, test_y, num_classes: int) -> float:
    return probe_accuracy(train_x, train_y, test_x, test_y,
                          num_classes=num_classes, epochs=self.cfg.epochs,
                          batch_size=self.cfg.batch_size, lr=self.cfg.lr,
                          l2=self.cfg.l2, seed=self.ctx.config.seed)
