"""Attentive probe: a small cross-attention pooling head on frozen patch tokens.

The attentive probing of V-JEPA (Bardes et al. 2024; its AttentivePooler with
one query and depth 1) as also used by 4DS-style video evaluations. The
encoder's patch tokens x [N, L, D] (the cls token left out) are extracted once
per evaluation; the head is

  t = LayerNorm(x)
  h = q + Proj(MultiHeadAttention(query=q Wq, keys=t Wk, values=t Wv))
  h = h + MLP(LayerNorm(h))          (hidden 4D, exact GELU)
  logits = Linear(LayerNorm(h))

with q a learned [1, D] query (all weights truncated-normal std 0.02, biases
0, as V-JEPA). The final LayerNorm before the classifier is our addition
(V-JEPA's classifier is linear on h). It is trained with AdamW (weight decay
on the parameters with more than one axis: not biases and norms, as V-JEPA),
linear warmup then half-cycle cosine to 0, set per step, cross-entropy, a
fresh shuffle every epoch. Like the linear probe it trains on features of
the centre crop only (no augmentation).

Memory: the tokens of both splits are held at once (N * L * D float32, the
train split also on the device), so cap them with max_train_examples and
max_test_examples; they are not cached between evaluations. The random-init
encoder's score does not change during a run and is computed once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mae_jax.evaluators.base import FeatureEvaluator, check_training, register
from mae_jax.evaluators.features import TOKENS
from mae_jax.evaluators.linear_probe import warmup_cosine


def _dense(key, d_in, d_out, std):
  return {'w': jax.random.truncated_normal(key, -2.0, 2.0, (d_in, d_out),
                                           jnp.float32) * std,
          'b': jnp.zeros((d_out,), jnp.float32)}


def _norm(dim):
  return {'scale': jnp.ones((dim,), jnp.float32),
          'bias': jnp.zeros((dim,), jnp.float32)}


def init_pooler(key: jax.Array, dim: int, num_classes: int, *,
                mlp_ratio: int = 4, std: float = 0.02) -> dict:
  """The head's parameters: a plain dict of float32 arrays."""
  k = jax.random.split(key, 7)
  return {
      'query': jax.random.truncated_normal(k[0], -2.0, 2.0, (1, dim),
                                           jnp.float32) * std,
      'norm_tokens': _norm(dim),
      'q': _dense(k[1], dim, dim, std),
      'kv': _dense(k[2], dim, 2 * dim, std),
      'proj': _dense(k[3], dim, dim, std),
      'norm_mlp': _norm(dim),
      'fc1': _dense(k[4], dim, mlp_ratio * dim, std),
      'fc2': _dense(k[5], mlp_ratio * dim, dim, std),
      'norm_out': _norm(dim),
      'head': _dense(k[6], dim, num_classes, std),
  }


def _layer_norm(x, p, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * p['scale'] + p['bias']


def _apply(p, x):
  return x @ p['w'] + p['b']


def pooled(params: dict, tokens: jax.Array, *, num_heads: int) -> jax.Array:
  """tokens [B, L, D] -> the attention-pooled vector h [B, D] (see above)."""
  b, length, d = tokens.shape
  hd = d // num_heads
  t = _layer_norm(tokens, params['norm_tokens'])
  q = _apply(params['q'], params['query']).reshape(num_heads, hd)  # [H, hd]
  k, v = jnp.split(_apply(params['kv'], t), 2, axis=-1)           # [B, L, D]
  k = k.reshape(b, length, num_heads, hd)
  v = v.reshape(b, length, num_heads, hd)
  attn = jax.nn.softmax(jnp.einsum('hd,blhd->bhl', q, k) / np.sqrt(hd),
                        axis=-1)
  out = jnp.einsum('bhl,blhd->bhd', attn, v).reshape(b, d)
  h = params['query'] + _apply(params['proj'], out)
  mlp = _apply(params['fc2'], jax.nn.gelu(
      _apply(params['fc1'], _layer_norm(h, params['norm_mlp'])),
      approximate=False))
  return h + mlp


def pooler_logits(params: dict, tokens: jax.Array, *,
                  num_heads: int) -> jax.Array:
  """tokens [B, L, D] -> logits [B, C]."""
  h = pooled(params, tokens, num_heads=num_heads)
  return _apply(params['head'], _layer_norm(h, params['norm_out']))


@functools.partial(jax.jit, static_argnames=('num_classes', 'num_heads',
                                             'epochs', 'batch_size'))
def fit_attentive(x, y, key, *, num_classes: int, num_heads: int, epochs: int,
                  batch_size: int, warmup_epochs: float, lr: float,
                  weight_decay: float) -> dict:
  """x: [N, L, D] float32 tokens, y: [N] int32 -> the head's params.
  batch_size <= N; the last partial batch of each epoch is dropped."""
  n, _, d = x.shape
  if batch_size > n:
    raise ValueError(f'batch_size={batch_size} > {n} training examples')
  steps = n // batch_size
  tx = optax.adamw(warmup_cosine(lr, warmup_epochs, epochs, steps),
                   weight_decay=weight_decay,
                   mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p))
  init_key, shuffle_key = jax.random.split(key)
  params = init_pooler(init_key, d, num_classes)

  def loss_fn(p, xb, yb):
    logits = pooler_logits(p, xb, num_heads=num_heads)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def train_batch(carry, idx):
    p, opt = carry
    grads = jax.grad(loss_fn)(p, x[idx], y[idx])
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), None

  def train_epoch(carry, epoch_key):
    perm = jax.random.permutation(epoch_key, n)[:steps * batch_size]
    return jax.lax.scan(train_batch, carry, perm.reshape(steps, batch_size))

  (params, _), _ = jax.lax.scan(train_epoch, (params, tx.init(params)),
                                jax.random.split(shuffle_key, epochs))
  return params


_predict = jax.jit(lambda p, x, num_heads: jnp.argmax(
    pooler_logits(p, x, num_heads=num_heads), axis=-1),
                   static_argnames='num_heads')


def attentive_probe_accuracy(train_x, train_y, test_x, test_y, *,
                             num_classes: int, num_heads: int = 4,
                             epochs: int = 20, warmup_epochs: float = 2.0,
                             lr: float = 1e-3, weight_decay: float = 0.05,
                             batch_size: int = 256, seed: int = 0,
                             chunk: int = 1024) -> float:
  """Top-1 accuracy on test tokens [M, L, D] of a head fit on train tokens
  [N, L, D] (batch_size capped at N)."""
  params = fit_attentive(
      jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32),
      jax.random.key(seed), num_classes=num_classes, num_heads=num_heads,
      epochs=epochs, batch_size=min(batch_size, len(train_x)),
      warmup_epochs=warmup_epochs, lr=lr, weight_decay=weight_decay)
  pred = np.concatenate([
      np.asarray(_predict(params, jnp.asarray(test_x[i:i + chunk], jnp.float32),
                          num_heads))
      for i in range(0, len(test_x), chunk)])
  return float(np.mean(pred == np.asarray(test_y)))


@register('attentive_probe')
class AttentiveProbe(FeatureEvaluator):

  def __init__(self, ctx, cfg):
    super().__init__(ctx, cfg)
    self._random_init_accuracy = None

  @staticmethod
  def check_config(config, cfg) -> None:
    from mae_jax.models import vit  # pylint: disable=g-import-not-at-top
    key = 'config.evals.attentive_probe'
    check_training(key, cfg, 'lr')
    width = vit.decode_variant(config.model.variant).width
    if cfg.num_heads < 1 or width % cfg.num_heads:
      allowed = [h for h in range(1, width + 1) if width % h == 0]
      raise ValueError(f'{key}.num_heads={cfg.num_heads}: must divide the '
                       f'encoder width {width} (model.variant='
                       f'{config.model.variant!r}); allowed {allowed}')

  def labelled_features(self, params, tag, pool=None, cache=True):
    """Every patch token [N, L, D] of both splits; not cached (see the
    module docstring)."""
    del pool, cache
    return super().labelled_features(params, tag, pool=TOKENS, cache=False)

  def score(self, train_x, train_y, test_x, test_y, num_classes: int) -> float:
    c = self.cfg
    return attentive_probe_accuracy(
        train_x, train_y, test_x, test_y, num_classes=num_classes,
        num_heads=c.num_heads, epochs=c.epochs, warmup_epochs=c.warmup_epochs,
        lr=c.lr, weight_decay=c.weight_decay, batch_size=c.batch_size,
        seed=self.ctx.config.seed)

  def run(self, params, step: int, tag: str = 'trained'
          ) -> dict[str, float]:
    if self._random_init_accuracy is None:
      self._random_init_accuracy = self.score(*self.labelled_features(
          self.ctx.baseline_params(), 'baseline'))
    return {f'{self.name}/accuracy': self.score(*self.labelled_features(
                params, (tag, step))),
            f'{self.name}/random_init_accuracy': self._random_init_accuracy}
