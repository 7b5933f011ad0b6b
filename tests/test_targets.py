import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import targets


def test_norm_pixels_is_per_patch_standardization():
  x = jax.random.normal(jax.random.key(0), (2, 5, 48)) * 3 + 1
  t = np.asarray(targets.get('norm_pixels')(x))
  np.testing.assert_allclose(t.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(t.std(-1, ddof=1), 1, atol=1e-3)  # unbiased


def test_norm_pixels_matches_reference_formula():
  x = np.random.default_rng(0).normal(size=(1, 3, 12)).astype(np.float32)
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True, ddof=1)  # unbiased: torch's var default
  want = (x - mean) / (var + 1e-6) ** 0.5
  np.testing.assert_allclose(targets.norm_pixels(jnp.asarray(x)), want, rtol=1e-5)


def test_to_pixels_inverts_the_target():
  x = jax.random.normal(jax.random.key(1), (2, 4, 12))
  for name in targets.TARGETS:
    t = targets.get(name)(x)
    np.testing.assert_allclose(targets.to_pixels(name, t, x), x, atol=1e-5)


def test_masked_mse_ignores_visible_tokens_and_averages_masked():
  pred = jnp.zeros((1, 4, 2))
  target = jnp.array([[[1., 1.], [2., 2.], [3., 3.], [100., 100.]]])
  mask = jnp.array([[1., 1., 1., 0.]])  # last token visible
  assert float(targets.masked_mse(pred, target, mask)) == pytest.approx(
      (1 + 4 + 9) / 3)
  pred2 = pred.at[0, 3].set(-50.)  # changing a visible prediction: no effect
  assert float(targets.masked_mse(pred2, target, mask)) == pytest.approx(
      (1 + 4 + 9) / 3)


def test_unknown_target():
  with pytest.raises(ValueError, match="target='depth'"):
    targets.get('depth')
