import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mae_jax import optim
from mae_jax.models import mae
from conftest import load_config


def test_lr_scales_with_batch_and_follows_warmup_then_cosine():
  c = load_config('test')
  c.batch_size, c.optim.base_lr, c.optim.min_lr = 512, 1.5e-4, 1e-6
  c.total_steps, c.optim.warmup_steps = 100, 10
  lr = optim.schedule(c, num_examples=10_000)
  peak = 1.5e-4 * 512 / 256
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(peak / 2)
  assert float(lr(10)) == pytest.approx(peak)
  assert float(lr(55)) == pytest.approx(1e-6 + (peak - 1e-6) / 2, rel=1e-5)
  assert float(lr(100)) == pytest.approx(1e-6)
  values = [float(lr(s)) for s in range(10, 101)]
  assert all(a >= b for a, b in zip(values, values[1:]))


def test_epochs_convert_to_steps_with_full_batches():
  c = load_config('test')
  c.total_steps, c.total_epochs, c.batch_size = 0, 30.0, 128
  c.optim.warmup_steps, c.optim.warmup_epochs = 0, 2.0
  assert optim.steps_per_epoch(c, 4000) == 31
  assert optim.total_steps(c, 4000) == 930
  assert optim.warmup_steps(c, 4000) == 62


def test_warmup_longer_than_training_is_refused():
  c = load_config('test')
  c.optim.warmup_steps = c.total_steps
  with pytest.raises(ValueError, match='optim.warmup'):
    optim.schedule(c, 100)


def test_weight_decay_only_on_weight_matrices():
  c = load_config('test')
  params = nnx.to_pure_dict(nnx.state(mae.build(c, nnx.Rngs(0))))
  mask = optim.decay_mask(params)
  flat = {jax.tree_util.keystr(p): m for p, m in
          jax.tree_util.tree_flatten_with_path(mask)[0]}
  decayed = sorted(k for k, m in flat.items() if m)
  assert all(k.endswith("['kernel']") for k in decayed)
  assert "['encoder']['layers']['mlp']['fc1']['kernel']" in decayed
  assert "['patch_embed']['kernel']" in decayed
  for k in ("['cls_token']", "['mask_token']",
            "['encoder']['layers']['norm1']['scale']",
            "['encoder']['layers']['mlp']['fc1']['bias']"):
    assert not flat[k]
  # With zero gradients, AdamW only decays: kernels shrink, the rest stays.
  c.optim.weight_decay, c.optim.clip_norm = 0.5, 1.0
  tx = optim.optimizer(c, lambda step: 0.1)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = jax.tree.map(lambda p, u: p + u, params, updates)
  k = params['patch_embed']['kernel']
  np.testing.assert_allclose(new['patch_embed']['kernel'], k * (1 - 0.1 * 0.5),
                             rtol=1e-6)
  np.testing.assert_array_equal(new['cls_token'], params['cls_token'])
