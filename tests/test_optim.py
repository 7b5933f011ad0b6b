import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def test_layer_decay_scales_each_block_like_a_torch_param_group():
  """MAE's param_groups_lrd: with n = depth + 1, embeddings get decay^n,
  block i decay^(n - 1 - i), the head and final norms 1; the update equals
  AdamW run with lr x multiplier on each parameter."""
  c = load_config('test')
  c.task, c.classify.num_classes = 'classify', 3
  c.model.variant = 'Ti/4'  # 12 blocks
  from mae_jax.models import classifier
  params = nnx.to_pure_dict(nnx.state(classifier.build(c, nnx.Rngs(0))))
  d = 0.75
  mult = optim.layer_multipliers(params, d)
  np.testing.assert_allclose(
      mult['encoder']['layers']['mlp']['fc1']['kernel'].reshape(-1),
      [d ** (12 - i) for i in range(12)], rtol=1e-6)
  assert float(mult['patch_embed']['kernel']) == pytest.approx(d ** 13)
  assert float(mult['pos_embed']['table']) == pytest.approx(d ** 13)
  assert float(mult['cls_token']) == pytest.approx(d ** 13)
  assert float(mult['head']['kernel']) == float(mult['fc_norm']['scale']) == 1

  c.optim.layer_decay, c.optim.weight_decay = d, 0.05
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3) + 0.01 * p, params)
  tx = optim.optimizer(c, lambda step: 1e-2)
  updates, _ = tx.update(grads, tx.init(params), params)
  layer = lambda t: jax.tree.map(lambda a: a[4], t['encoder']['layers'])
  for name, m in (('head', 1.0), ('patch_embed', d ** 13), ('block 4', d ** 8)):
    pick = ((lambda t: t[name]) if name != 'block 4' else layer)
    c.optim.layer_decay = 1.0
    ref = optim.optimizer(c, lambda step: 1e-2 * m)
    want, _ = ref.update(grads, ref.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-12),
                 pick(updates), pick(want))


def test_ema_of_params_follows_the_updated_params():
  params = {'w': jnp.array([1.0, 2.0])}
  tx = optax.chain(optax.sgd(0.5), optim.ema_of_params(0.9))
  state = tx.init(params)
  ema = np.array([1.0, 2.0])
  for g in ([1.0, 0.0], [0.0, 2.0]):
    updates, state = tx.update({'w': jnp.array(g)}, state, params)
    params = optax.apply_updates(params, updates)
    ema = 0.9 * ema + 0.1 * np.asarray(params['w'])
    np.testing.assert_allclose(state[-1].ema['w'], ema, rtol=1e-6)
