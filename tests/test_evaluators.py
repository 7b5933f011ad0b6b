import jax
import numpy as np
import pytest
from flax import nnx

from mae_jax import evaluators
from mae_jax.evaluators import knn, reconstruction
from mae_jax.evaluators.features import pooled_features
from mae_jax.models import mae
from conftest import load_config


def _brute_force_knn(train_x, train_y, test_x, k, t, num_classes):
  n = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  sims = n(test_x) @ n(train_x).T
  preds = []
  for row in sims:
    idx = np.argsort(-row)[:k]
    votes = np.zeros(num_classes)
    for i in idx:
      votes[train_y[i]] += np.exp(row[i] / t)
    preds.append(np.argmax(votes))
  return np.array(preds)


def test_knn_matches_brute_force():
  rng = np.random.default_rng(0)
  train_x, test_x = rng.normal(size=(300, 8)), rng.normal(size=(50, 8))
  train_y, test_y = rng.integers(0, 4, 300), rng.integers(0, 4, 50)
  want = np.mean(_brute_force_knn(train_x, train_y, test_x, 7, 0.1, 4) == test_y)
  got = knn.knn_accuracy(train_x.astype(np.float32), train_y,
                         test_x.astype(np.float32), test_y, num_classes=4, k=7,
                         temperature=0.1, chunk=16)
  assert got == pytest.approx(want)


def test_mean_pool_averages_patch_tokens_and_cls_pool_takes_token_0():
  c = load_config('test')
  model = mae.build(c, nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  tokens = model.encode(model.patchify(x))
  np.testing.assert_allclose(pooled_features(graphdef, params, x, 'mean'),
                             tokens[:, 1:].mean(1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pooled_features(graphdef, params, x, 'cls'),
                             tokens[:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pooled_features(graphdef, params, x, 'tokens'),
                             tokens[:, 1:], rtol=1e-5, atol=1e-6)


def test_picture_grid_panels():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
  recon = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
  mask = np.zeros((2, 8, 8, 1), np.float32)
  mask[:, :4] = 1
  big = reconstruction.picture_grid(images, recon, mask, (0.5,), (0.25,),
                                   min_size=16)  # enlarged 2x
  assert big.shape == (2 * 16 + 2, 3 * 16 + 4, 3)
  grid = reconstruction.picture_grid(images, recon, mask, (0.5,), (0.25,),
                                     min_size=0)
  np.testing.assert_array_equal(big[:16:2, :16:2], grid[:8, :8])
  assert grid.shape == (2 * 8 + 2, 3 * 8 + 4, 3) and grid.dtype == np.uint8
  orig = np.clip(np.round((images[0, ..., 0] * 0.25 + 0.5) * 255), 0, 255)
  np.testing.assert_allclose(grid[:8, :8, 0], orig, atol=1)
  assert (grid[:4, 10:18] == 128).all()          # masked half is gray
  np.testing.assert_allclose(grid[4:8, 10:18, 0], orig[4:], atol=1)


def test_evaluator_config_errors():
  c = load_config('test')
  c.evals.knn.pool = 'max'
  with pytest.raises(ValueError, match="evals.knn.pool='max'"):
    evaluators.check_config(c)
  c = load_config('test')
  c.evals.linear_probe.epochs = 0
  with pytest.raises(ValueError, match='linear_probe'):
    evaluators.check_config(c)
