"""Linear probe with MAE's recipe, on frozen, pooled encoder features.

The recipe of MAE's linear probing (He et al. 2022, Appendix A.2 and Table 10;
the official main_linprobe.py):

* the head is BatchNorm without affine parameters (eps 1e-6) followed by one
  linear layer (weights truncated-normal with std 0.01, bias 0). In training
  the BatchNorm normalizes with the batch's mean and biased variance and moves
  its running averages toward the batch's mean and *unbiased* variance with
  momentum 0.1 (PyTorch's BatchNorm1d); the test split is normalized with the
  running averages;
* LARS (MAE's util/lars.py; `lars` below): SGD with momentum 0.9 whose update
  of every parameter with more than one axis is rescaled by the trust ratio
  eta * ||p|| / ||g + wd * p|| (eta = 0.001); weight decay 0;
* lr = base_lr * batch / 256 with base_lr 0.1 and batch 16384 (capped here at
  the number of training examples), warmup of 10 epochs, then a half-cycle
  cosine to 0 over the remaining 80 of 90 epochs, set every step;
* cross-entropy; a fresh shuffle every epoch, the last partial batch dropped.

One deliberate difference: MAE's probe sees a new RandomResizedCrop + flip of
every training image each epoch. Here the probe trains on features of the
centre crop extracted once (as big_vision-style probes do), which is far
cheaper; its numbers are therefore not exactly the paper's protocol. The same
recipe scores the randomly initialized encoder, so the two numbers differ only
by pretraining.

Note that LARS moves a weight by about lr * eta * ||w|| per step, so how far
the head travels from its random init grows with base_lr * epochs * N / 256
(N training examples), whatever the batch: the paper's numbers assume
ImageNet's 1.28M images, and a probe on a few thousand examples needs a
larger base_lr or more epochs (see configs/demo.py).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mae_jax.evaluators.base import FeatureEvaluator, check_training, register
from mae_jax.evaluators.features import POOLS


# --- LARS -------------------------------------------------------------------

class LarsState(NamedTuple):
  count: jax.Array  # steps taken (the schedule's argument)
  mu: Any           # momentum buffers, like the params


def lars(learning_rate: float | optax.Schedule, momentum: float = 0.9,
         weight_decay: float = 0.0, eta: float = 0.001
         ) -> optax.GradientTransformation:
  """MAE's LARS as an optax transformation (updates are to be *added*).

  For every parameter p with gradient g:
    d = g + weight_decay * p, times q = eta * ||p|| / ||d|| (1 if either norm
        is 0)                        if p.ndim > 1 (weights);
    d = g                            otherwise (biases: no decay, no trust ratio);
    mu <- momentum * mu + d;   p <- p - lr(step) * mu.
  As in PyTorch's SGD, the learning rate multiplies the momentum buffer (so a
  schedule also scales the past updates), unlike optax.lars, which applies it
  before the momentum.
  """
  schedule = learning_rate if callable(learning_rate) else (
      lambda count: learning_rate)

  def init(params):
    return LarsState(count=jnp.zeros([], jnp.int32),
                     mu=jax.tree.map(jnp.zeros_like, params))

  def direction(g, p):
    if p.ndim <= 1:
      return g
    d = g + weight_decay * p
    p_norm = jnp.sqrt(jnp.sum(jnp.square(p)))
    d_norm = jnp.sqrt(jnp.sum(jnp.square(d)))
    ok = (p_norm > 0) & (d_norm > 0)
    q = jnp.where(ok, eta * p_norm / jnp.where(ok, d_norm, 1.0), 1.0)
    return d * q.astype(d.dtype)

  def update(grads, state, params):
    if params is None:
      raise ValueError('lars needs the params (the trust ratio uses them)')
    mu = jax.tree.map(lambda m, g, p: momentum * m + direction(g, p),
                      state.mu, grads, params)
    lr = schedule(state.count)
    updates = jax.tree.map(lambda m: (-lr * m).astype(m.dtype), mu)
    return updates, LarsState(count=state.count + 1, mu=mu)

  return optax.GradientTransformation(init, update)


def warmup_cosine(peak: float, warmup_epochs, epochs: int,
                  steps_per_epoch: int) -> optax.Schedule:
  """MAE's util/lr_sched.py, set per step: at fractional epoch
  e = step / steps_per_epoch, lr = peak * e / warmup_epochs while e <
  warmup_epochs, then peak * (1 + cos(pi * (e - warmup) / (epochs - warmup)))
  / 2 down to 0 (min_lr 0)."""
  def schedule(step):
    e = step / steps_per_epoch
    warm = peak * e / jnp.maximum(warmup_epochs, 1e-12)
    t = (e - warmup_epochs) / jnp.maximum(epochs - warmup_epochs, 1e-12)
    cos = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(t, 0.0, 1.0)))
    return jnp.where(e < warmup_epochs, warm, cos)
  return schedule


# --- BatchNorm without affine parameters ------------------------------------

class BatchNormState(NamedTuple):
  mean: jax.Array  # running mean [D], starts at 0
  var: jax.Array   # running (unbiased) variance [D], starts at 1


def batch_norm_init(dim: int) -> BatchNormState:
  return BatchNormState(jnp.zeros((dim,), jnp.float32),
                        jnp.ones((dim,), jnp.float32))


def batch_norm_train(x: jax.Array, state: BatchNormState, *,
                     momentum: float = 0.1, eps: float = 1e-6
                     ) -> tuple[jax.Array, BatchNormState]:
  """PyTorch's BatchNorm1d(affine=False) in train mode. x: [B, D] -> (x
  normalized with the batch mean and biased variance, running averages moved
  by `momentum` toward the batch mean and unbiased variance)."""
  n = x.shape[0]
  mean, var = x.mean(axis=0), x.var(axis=0)
  y = (x - mean) * jax.lax.rsqrt(var + eps)
  unbiased = var * (n / max(n - 1, 1))
  return y, BatchNormState((1 - momentum) * state.mean + momentum * mean,
                           (1 - momentum) * state.var + momentum * unbiased)


def batch_norm_eval(x: jax.Array, state: BatchNormState, *,
                    eps: float = 1e-6) -> jax.Array:
  return (x - state.mean) * jax.lax.rsqrt(state.var + eps)


# --- the probe ---------------------------------------------------------------

def init_head(key: jax.Array, dim: int, num_classes: int, std: float = 0.01):
  """timm's trunc_normal_(std=0.01), whose cut at +-2 is absolute (+-200
  std here, so in effect a plain normal), and bias 0."""
  w = jax.random.truncated_normal(key, -2.0 / std, 2.0 / std,
                                  (dim, num_classes), jnp.float32) * std
  return {'w': w, 'b': jnp.zeros((num_classes,), jnp.float32)}


@functools.partial(jax.jit, static_argnames=('num_classes', 'epochs',
                                             'batch_size'))
def fit_linear(x, y, key, *, num_classes: int, epochs: int, batch_size: int,
               warmup_epochs: float, base_lr: float, weight_decay: float,
               momentum: float = 0.9, eta: float = 0.001):
  """x: [N, D] float32, y: [N] int32 -> (head {'w': [D, C], 'b': [C]},
  BatchNormState). batch_size <= N; lr = base_lr * batch_size / 256."""
  n, d = x.shape
  if batch_size > n:
    raise ValueError(f'batch_size={batch_size} > {n} training examples')
  steps = n // batch_size
  tx = lars(warmup_cosine(base_lr * batch_size / 256, warmup_epochs, epochs,
                          steps),
            momentum=momentum, weight_decay=weight_decay, eta=eta)
  init_key, shuffle_key = jax.random.split(key)
  params = init_head(init_key, d, num_classes)

  def loss_fn(p, xb, yb):
    logits = xb @ p['w'] + p['b']
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def train_batch(carry, idx):
    p, opt, bn = carry
    xb, bn = batch_norm_train(x[idx], bn)
    grads = jax.grad(loss_fn)(p, xb, y[idx])
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt, bn), None

  def train_epoch(carry, epoch_key):
    perm = jax.random.permutation(epoch_key, n)[:steps * batch_size]
    return jax.lax.scan(train_batch, carry, perm.reshape(steps, batch_size))

  (params, _, bn), _ = jax.lax.scan(
      train_epoch, (params, tx.init(params), batch_norm_init(d)),
      jax.random.split(shuffle_key, epochs))
  return params, bn


@jax.jit
def _logits(params, bn, x):
  return batch_norm_eval(x, bn) @ params['w'] + params['b']


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of rows whose label is among the k largest logits."""
  k = min(k, logits.shape[1])
  top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
  return float(np.mean((top == labels[:, None]).any(axis=1)))


def probe_scores(train_x, train_y, test_x, test_y, *, num_classes: int,
                 epochs: int = 90, warmup_epochs: float = 10.0,
                 base_lr: float = 0.1, batch_size: int = 16384,
                 weight_decay: float = 0.0, seed: int = 0
                 ) -> dict[str, float]:
  """{'top1', 'top5'} on the test features of a probe fit on the train ones
  (batch_size capped at the number of training examples)."""
  params, bn = fit_linear(
      jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32),
      jax.random.key(seed), num_classes=num_classes, epochs=epochs,
      batch_size=min(batch_size, len(train_x)), warmup_epochs=warmup_epochs,
      base_lr=base_lr, weight_decay=weight_decay)
  logits = np.asarray(_logits(params, bn, jnp.asarray(test_x, jnp.float32)))
  test_y = np.asarray(test_y)
  return {'top1': topk_accuracy(logits, test_y, 1),
          'top5': topk_accuracy(logits, test_y, 5)}


def probe_accuracy(train_x, train_y, test_x, test_y, **kwargs) -> float:
  """Top-1 accuracy of probe_scores (same arguments)."""
  return probe_scores(train_x, train_y, test_x, test_y, **kwargs)['top1']


@register('linear_probe')
class LinearProbe(FeatureEvaluator):
  """{name}/accuracy (top-1), {name}/random_init_accuracy and, with more than
  5 classes, {name}/top5 and {name}/random_init_top5."""

  @staticmethod
  def check_config(config, cfg) -> None:
    key = 'config.evals.linear_probe'
    if cfg.pool not in POOLS:
      raise ValueError(f'{key}.pool={cfg.pool!r}: allowed {POOLS}')
    check_training(key, cfg, 'base_lr')

  def scores(self, train_x, train_y, test_x, test_y, num_classes: int):
    c = self.cfg
    return probe_scores(train_x, train_y, test_x, test_y,
                        num_classes=num_classes, epochs=c.epochs,
                        warmup_epochs=c.warmup_epochs, base_lr=c.base_lr,
                        batch_size=c.batch_size, weight_decay=c.weight_decay,
                        seed=self.ctx.config.seed)

  def score(self, train_x, train_y, test_x, test_y, num_classes: int) -> float:
    return self.scores(train_x, train_y, test_x, test_y, num_classes)['top1']

  def metrics(self, train_x, train_y, test_x, test_y, num_classes: int
              ) -> dict[str, float]:
    s = self.scores(train_x, train_y, test_x, test_y, num_classes)
    return {'accuracy': s['top1'], **({'top5': s['top5']}
                                      if num_classes > 5 else {})}
