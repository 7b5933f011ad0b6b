"""The linear probe's MAE recipe (LARS, parameter-free BatchNorm, schedule) and
the attentive probe, against hand computations and on synthetic data."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mae_jax import evaluators, optim, sharding
from mae_jax import step as step_lib
from mae_jax.evaluators import attentive_probe, linear_probe
from conftest import load_config


def test_lars_matches_hand_computation():
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(2, 3)), 'b': rng.normal(size=(3,)),
            'z': np.zeros((3, 2))}  # zero norm: trust ratio 1
  grads = [{k: rng.normal(size=v.shape) for k, v in params.items()}
           for _ in range(2)]
  lr = lambda count: 0.5 / (1.0 + count)
  momentum, wd, eta = 0.9, 0.1, 0.01
  tx = linear_probe.lars(lr, momentum=momentum, weight_decay=wd, eta=eta)
  p = jax.tree.map(jnp.asarray, params)
  state = tx.init(p)
  for g in grads:
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
    p = optax.apply_updates(p, updates)

  want, mu = {k: v.copy() for k, v in params.items()}, {}
  for t, g in enumerate(grads):
    for k, v in want.items():
      d = g[k]
      if v.ndim > 1:
        d = d + wd * v
        pn, dn = np.linalg.norm(v), np.linalg.norm(d)
        d = d * (eta * pn / dn if pn > 0 and dn > 0 else 1.0)
      mu[k] = momentum * mu.get(k, 0.0) + d
      want[k] = v - lr(t) * mu[k]
  for k in params:
    np.testing.assert_allclose(p[k], want[k], rtol=1e-5, atol=1e-6)
  # The bias ignored weight decay and the trust ratio: plain SGD + momentum.
  b = params['b'] - 0.5 * grads[0]['b'] - 0.25 * (0.9 * grads[0]['b']
                                                  + grads[1]['b'])
  np.testing.assert_allclose(p['b'], b, rtol=1e-5)


def test_batch_norm_without_affine_matches_pytorch_convention():
  rng = np.random.default_rng(1)
  batches = [rng.normal(2.0, 3.0, size=(8, 4)).astype(np.float32)
             for _ in range(2)]
  state = linear_probe.batch_norm_init(4)
  mean, var = np.zeros(4), np.ones(4)
  for x in batches:
    y, state = linear_probe.batch_norm_train(jnp.asarray(x), state)
    np.testing.assert_allclose(
        y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-6), rtol=1e-4, atol=1e-5)
    mean = 0.9 * mean + 0.1 * x.mean(0)
    var = 0.9 * var + 0.1 * x.var(0, ddof=1)   # unbiased
  np.testing.assert_allclose(state.mean, mean, rtol=1e-5)
  np.testing.assert_allclose(state.var, var, rtol=1e-5)
  x = rng.normal(size=(3, 4)).astype(np.float32)
  np.testing.assert_allclose(linear_probe.batch_norm_eval(jnp.asarray(x), state),
                             (x - mean) / np.sqrt(var + 1e-6), rtol=1e-4,
                             atol=1e-5)


def test_warmup_then_half_cycle_cosine_per_step():
  lr = linear_probe.warmup_cosine(2.0, 10.0, 90, steps_per_epoch=4)
  np.testing.assert_allclose(
      [lr(s) for s in (0, 20, 40, 40 + 160, 360)], [0.0, 1.0, 2.0, 1.0, 0.0],
      atol=1e-6)
  assert float(lr(41)) < 2.0


def _blobs(rng, n=600, dim=16, classes=5):
  centers = rng.normal(size=(classes, dim)) * 3
  y = rng.integers(0, classes, n)
  return (centers[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def test_linear_probe_separates_blobs_and_not_shuffled_labels():
  rng = np.random.default_rng(0)
  x, y = _blobs(rng)
  # 500 examples: a base lr that moves the LARS head far enough (see the
  # module docstring); the rest is MAE's recipe.
  kw = dict(num_classes=5, epochs=30, warmup_epochs=3, batch_size=50,
            base_lr=10.0)
  s = linear_probe.probe_scores(x[:500], y[:500], x[500:], y[500:], **kw)
  assert s['top1'] > 0.95 and s['top5'] == 1.0  # 5 classes: top-5 is all
  shuffled = rng.permutation(y)
  assert linear_probe.probe_accuracy(x[:500], shuffled[:500], x[500:],
                                     shuffled[500:], **kw) < 0.4  # chance 0.2


def test_topk_accuracy():
  logits = np.array([[0.1, 0.5, 0.2], [0.9, 0.0, 0.3]])
  assert linear_probe.topk_accuracy(logits, np.array([2, 2]), 1) == 0.0
  assert linear_probe.topk_accuracy(logits, np.array([1, 2]), 2) == 1.0
  assert linear_probe.topk_accuracy(logits, np.array([0, 2]), 2) == 0.5


def _token_sets(rng, n, length=32, dim=16, classes=5):
  """One token per example, at a random position, carries a marker (axis 0)
  and its class's direction; the others are noise. Mean pooling dilutes it."""
  marker = np.zeros(dim)
  marker[0] = 4.0
  directions = rng.normal(size=(classes, dim))
  directions[:, 0] = 0
  y = rng.integers(0, classes, n)
  x = rng.normal(size=(n, length, dim))
  x[np.arange(n), rng.integers(0, length, n)] = marker + 1.5 * directions[y]
  return x.astype(np.float32), y


def test_attentive_probe_finds_the_one_token_and_not_shuffled_labels():
  rng = np.random.default_rng(0)
  x, y = _token_sets(rng, 800)
  kw = dict(num_classes=5, num_heads=4, epochs=30, warmup_epochs=2,
            batch_size=64, lr=3e-3, weight_decay=0.05)
  assert attentive_probe.attentive_probe_accuracy(
      x[:600], y[:600], x[600:], y[600:], **kw) > 0.9
  shuffled = rng.permutation(y)
  assert attentive_probe.attentive_probe_accuracy(
      x[:600], shuffled[:600], x[600:], shuffled[600:], **kw) < 0.4


def test_attentive_probe_runs_through_the_registry_on_the_test_config():
  """(The linear probe runs end to end in test_api.py, through evaluate.)"""
  c = load_config('test')
  c.evals.attentive_probe.epochs = 3
  c.evals.attentive_probe.warmup_epochs = 1.0
  c.evals.attentive_probe.max_train_examples = 32
  c.evals.attentive_probe.max_test_examples = 16
  evaluators.check_config(c)
  mesh = sharding.make_mesh(c.mesh)
  with sharding.rules_context(mesh, c.sharding.rules):
    setup = step_lib.StateSetup(c, optim.optimizer(c, lambda s: 0.0), mesh)
    init_key, trained_key = jax.random.split(jax.random.key(c.seed))
    ctx = evaluators.EvalContext(
        config=c, graphdef=setup.graphdef, mesh=mesh,
        init_params=setup.init_params, baseline_key=init_key, writer=None,
        workdir='')
    [ev] = evaluators.build(ctx, ['attentive_probe'])
    results = ev.run(setup.init_params(trained_key), 1)
  assert set(results) == {'attentive_probe/accuracy',
                          'attentive_probe/random_init_accuracy'}
  assert all(0.0 <= v <= 1.0 for v in results.values())


def test_attentive_probe_config_errors():
  c = load_config('test')  # mu: width 32
  c.evals.attentive_probe.num_heads = 5
  with pytest.raises(ValueError, match=r'evals.attentive_probe.num_heads=5: '
                     r'must divide the encoder width 32.*allowed \[1, 2, 4, 8, '
                     r'16, 32\]'):
    evaluators.check_config(c)
  c = load_config('test')
  c.evals.linear_probe.warmup_epochs = 6.0
  with pytest.raises(ValueError, match='linear_probe.warmup_epochs=6.0'):
    evaluators.check_config(c)
