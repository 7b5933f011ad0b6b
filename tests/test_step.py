"""The jitted train step: gradient accumulation and optimizer-state dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import optim, sharding, step
from conftest import load_config


def _one_step(c, batch):
  mesh = sharding.make_mesh(c.mesh)
  lr = optim.schedule(c, 1000)
  tx = optim.optimizer(c, lr)
  setup = step.StateSetup(c, tx, mesh)
  state = setup.init(jax.random.key(0))
  fn = jax.jit(step.make_train_step(setup.graphdef, tx, lr, c.target,
                                    c.grad_accum_steps))
  return fn(state, batch, jax.random.key(1))


def test_gradient_accumulation_gives_the_full_batch_update():
  c = load_config('test')
  c.optim.warmup_steps = 0
  batch = {'image': jax.random.normal(jax.random.key(2), (8, 16, 16, 3))}
  full, m_full = _one_step(c, batch)
  c.grad_accum_steps = 4
  accum, m_accum = _one_step(c, batch)
  # Same masks (loss), same gradient scale (norm), same update up to float
  # noise that Adam's first step magnifies where a gradient is ~0 (lr 3e-5).
  assert float(m_accum['loss']) == pytest.approx(float(m_full['loss']), rel=1e-6)
  assert float(m_accum['grad_norm']) == pytest.approx(float(m_full['grad_norm']),
                                                      rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-6),
               accum.params, full.params)


def test_micro_batches_are_strided_so_each_stays_on_every_device():
  x = jnp.arange(8)
  micro = step._micro_batches(x, 2)  # pylint: disable=protected-access
  np.testing.assert_array_equal(micro, [[0, 2, 4, 6], [1, 3, 5, 7]])


def test_bfloat16_first_moment():
  c = load_config('test')
  c.optim.mu_dtype = 'bfloat16'
  state, _ = _one_step(c, {'image': jnp.ones((8, 16, 16, 3))})
  adam = state.opt_state[1][0]  # chain(clip or identity, adamw)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(adam.mu))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(adam.nu))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
