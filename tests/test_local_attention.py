"""AudioMAE's local-attention decoder (models/local_attention.py) and the
MAE's decoder_attention='local' option. Equivalence with the official
PyTorch blocks is tested on converted checkpoints
(tests/test_convert_audiomae.py); here: the windowing against plain
attention, window isolation, the shift mask, the scanned stack, and the
MAE wired with it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mae_jax import config as config_lib, flops, masking, step as step_lib
from mae_jax.models import local_attention as la
from mae_jax.models import mae, vit

WIDTH, HEADS, MLP = 16, 4, 32


def _random(make, seed: int):
  """The module `make()` builds, every parameter random (norms, taus and
  the meta MLP included; one head's tau below the 0.01 clamp). Built
  abstractly and filled from numpy: eager initialization compiles every
  small op on its own (seconds on a shared CPU)."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  leaves, tree = jax.tree.flatten(nnx.to_pure_dict(state))
  rng = np.random.default_rng(seed)
  # N(0, 0.5); vectors (norm scales, biases, taus) around 1.
  values = [rng.normal(size=x.shape).astype(np.float32) * 0.5
            + (1.0 if x.ndim == 1 else 0.0) for x in leaves]
  params = jax.tree.unflatten(tree, values)

  def taus(tree):
    for k, v in tree.items():
      if k == 'tau':
        v = np.abs(v)
        v[..., 0] = 0.004
      if isinstance(v, dict):
        taus(v)
      else:
        tree[k] = jnp.asarray(v)
  taus(params)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def _block(grid, window, shift, seed=0) -> la.LocalBlock:
  return _random(lambda: la.LocalBlock(
      WIDTH, MLP, HEADS, grid=grid, window=window, shift=shift,
      dtype=jnp.float32, rngs=nnx.Rngs(0)), seed)


@jax.jit
def _apply(module, x, *args):
  return module(x, *args)


def _tokens(grid, seed=2, batch=2):
  return jax.random.normal(jax.random.key(seed),
                           (batch, grid[0] * grid[1], WIDTH))


def _plain_attention(block: la.LocalBlock, x, grid) -> jax.Array:
  """The block over all tokens at once: cosine attention of every token
  pair, bias from the meta MLP of the pair's grid offset."""
  a = block.attn
  b, length, _ = x.shape
  qkv = a.qkv(x)  # [B, L, 3, H, K]
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  cos = jnp.einsum('bqhk,bshk->bhqs', q, k) / jnp.maximum(
      jnp.linalg.norm(q, axis=-1)[:, :, None, :].transpose(0, 3, 1, 2)
      * jnp.linalg.norm(k, axis=-1)[:, None, :, :].transpose(0, 3, 1, 2),
      1e-6)
  rows, cols = np.divmod(np.arange(length), grid[1])
  offsets = np.stack([rows[:, None] - rows[None, :],
                      cols[:, None] - cols[None, :]], -1).astype(np.float32)
  bias = a.meta_mlp(jnp.asarray(np.sign(offsets) * np.log(1 + np.abs(offsets))))
  logits = cos / jnp.maximum(a.tau[...], 0.01)[:, None, None] + bias.transpose(
      2, 0, 1)
  o = jnp.einsum('bhqs,bshk->bqhk', jax.nn.softmax(logits, -1), v)
  y = x + block.norm1(a.out(o))
  return y + block.norm2(block.mlp(y))


def test_full_window_equals_plain_attention_over_all_tokens():
  grid = (3, 5)
  block = _block(grid, window=(4, 100), shift=(2, 1))
  # Clipped to the grid, and nothing left to shift.
  assert (block.window, block.shift) == ((3, 5), (0, 0))
  x = _tokens(grid)
  want = jax.jit(_plain_attention, static_argnums=2)(block, x, grid)
  for shifted in (False, True):  # no shift: both are the same block
    got = _apply(block, x, shifted)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The bias and the clamp matter (the reference is not trivially equal).
  assert float(jnp.max(jnp.abs(block.attn.position_bias()))) > 0.1
  assert float(jnp.min(block.attn.tau[...])) < 0.01


def test_window_partition_round_trip_and_order():
  x = jnp.arange(2 * 8 * 6 * 1, dtype=jnp.float32).reshape(2, 8, 6, 1)
  w = la.window_partition(x, (4, 3))  # [B, N, A, E]
  assert w.shape == (2, 4, 12, 1)
  # Window 1 is the top-right one; its tokens row-major.
  np.testing.assert_array_equal(w[0, 1, :3, 0], x[0, 0, 3:6, 0])
  np.testing.assert_array_equal(w[0, 1, 3:6, 0], x[0, 1, 3:6, 0])
  np.testing.assert_array_equal(la.window_reverse(w, (4, 3), (8, 6)), x)


def test_tokens_never_attend_across_windows():
  grid, window = (8, 8), (4, 4)
  block = _block(grid, window, shift=(0, 0))
  x = _tokens(grid)
  # Token (1, 2) is in window (0, 0).
  y0 = _apply(block, x).reshape(2, 8, 8, WIDTH)
  y1 = _apply(block, x.at[:, 1 * 8 + 2].add(3.0)).reshape(2, 8, 8, WIDTH)
  diff = jnp.max(jnp.abs(y1 - y0), axis=(0, 3))  # [8, 8]
  assert float(jnp.min(diff[:4, :4])) > 1e-4  # every token of the window
  outside = diff.at[:4, :4].set(0.0)
  assert float(jnp.max(outside)) == 0.0


def test_shifted_windows_mask_the_wrapped_tokens():
  grid, window, shift = (8, 4), (4, 4), (2, 0)
  block = _block(grid, window, shift)
  x = _tokens(grid)
  plain = _apply(block, x, False)
  shifted = _apply(block, x, True)
  assert float(jnp.max(jnp.abs(plain - shifted))) > 1e-3
  # Rolled by -2 rows, windows hold rows 2..5 and 6, 7, 0, 1; the mask
  # keeps rows 6, 7 and rows 0, 1 apart although they share a window.
  y0 = shifted.reshape(2, 8, 4, WIDTH)
  y1 = _apply(block, x.at[:, 0 * 4 + 1].add(3.0), True).reshape(
      2, 8, 4, WIDTH)
  diff = jnp.max(jnp.abs(y1 - y0), axis=(0, 3))  # [8 rows, 4]
  assert float(jnp.min(diff[0:2])) > 1e-4
  # exp(-100) of a logit is below float32's resolution of the outputs.
  assert float(jnp.max(diff[2:8])) < 1e-6


def test_shift_mask_is_the_wrap_around_rule():
  """A pair of a rolled window may attend iff the roll wrapped neither or
  both of them, along each axis (the official region labelling)."""
  grid, window, shift = (8, 6), (4, 3), (2, 1)
  mask = la.shift_mask(grid, window, shift)
  assert mask.shape == (4, 12, 12) and set(np.unique(mask)) == {0.0, -100.0}
  pos = np.stack(np.meshgrid(np.arange(8), np.arange(6), indexing='ij'), -1)
  pos = la.window_partition(pos[None], window)[0]  # rolled positions [N, A, 2]
  wrapped = pos >= np.array(grid) - np.array(shift)  # [N, A, 2]
  same = np.all(wrapped[:, :, None] == wrapped[:, None, :], axis=-1)
  np.testing.assert_array_equal(mask == 0, same)
  assert not np.all(same)


def test_window_and_shift():
  assert la.window_and_shift((64, 8), (4, 4), (2, 0)) == ((4, 4), (2, 0))
  assert la.window_and_shift((8, 4), (4, 8), (2, 2)) == ((4, 4), (2, 0))
  with pytest.raises(ValueError, match='decoder_window.*tile'):
    la.window_and_shift((8, 4), (3, 4), (0, 0))
  with pytest.raises(ValueError, match='decoder_shift'):
    la.window_and_shift((8, 4), (4, 2), (4, 0))
  with pytest.raises(ValueError, match='decoder_window'):
    la.window_and_shift((8, 4), (0, 4), (0, 0))


def test_stack_alternates_shifts_like_a_loop_of_blocks():
  grid, depth = (8, 4), 3
  x = _tokens(grid)
  stack = _random(lambda: la.LocalBlockStack(
      depth, WIDTH, MLP, HEADS, grid=grid, window=(4, 4), shift=(2, 0),
      dtype=jnp.float32, rngs=nnx.Rngs(0)), 5)
  got = _apply(stack, x)
  graphdef, stacked = nnx.split(stack.layers)
  blocks = [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], stacked))
            for i in range(depth)]
  want = none = x
  for i, block in enumerate(blocks):
    want = _apply(block, want, i % 2 == 1)
    none = _apply(block, none, False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Not the same as no shift at all.
  assert float(jnp.max(jnp.abs(got - none))) > 1e-3


def _local_mae(**kw) -> mae.MAE:
  args = dict(input_size=(32, 16), channels=1, variant='mu/4',
              decoder='32d2b4h', mask_ratio=0.75, decoder_attention='local',
              decoder_window=(4, 4), decoder_shift=(2, 0))
  args.update(kw)
  return mae.MAE(**args, rngs=nnx.Rngs(0))


def test_mae_with_the_local_decoder_trains():
  model = _random(_local_mae, 3)
  assert model.grid == (8, 4)
  x = jax.random.normal(jax.random.key(1), (2, 32, 16, 1))
  ids = jnp.stack([jax.random.permutation(jax.random.key(i), 32)
                   for i in (4, 5)]).astype(jnp.int32)
  mask = masking.from_shuffle(ids, 8)
  graphdef, params = nnx.split(model, nnx.Param)

  @jax.jit
  def run(params):
    def loss(params):
      m = nnx.merge(graphdef, params)
      return step_lib.loss_terms(m, x, mask, 'norm_pixels')['reconstruction']
    m = nnx.merge(graphdef, params)
    latent = m.encode(m.patchify(x), mask.ids_keep)
    # Moving the cls token's latent must not change the prediction.
    preds = [m.decode(latent.at[:, 0].add(shift), mask) for shift in (0, 5)]
    return jax.value_and_grad(loss)(params), preds

  (value, grads), (pred, moved) = run(params)
  assert np.isfinite(float(value))
  layers = nnx.to_pure_dict(grads)['decoder']['layers']
  for path in (('attn', 'tau'), ('attn', 'meta_mlp', 'fc1', 'kernel'),
               ('attn', 'qkv', 'kernel'), ('mlp', 'fc2', 'kernel'),
               ('norm1', 'scale')):
    g = layers
    for p in path:
      g = g[p]
    assert g.shape[0] == 2 and np.all(np.abs(np.asarray(g)).reshape(2, -1)
                                      .max(axis=1) > 0), path
  # Every token predicted, in position order; the cls token stays out.
  assert pred.shape == (2, 32, 16)
  np.testing.assert_array_equal(moved, pred)


def test_global_decoder_parameters_are_unchanged():
  """decoder_attention='global' (the default) keeps the ViT decoder."""
  model = nnx.eval_shape(lambda: mae.MAE(
      input_size=(32, 16), channels=1, variant='mu/4', decoder='32d2b4h',
      mask_ratio=0.75, rngs=nnx.Rngs(0)))
  layers = nnx.to_pure_dict(nnx.state(model))['decoder']['layers']
  assert isinstance(model.decoder, vit.BlockStack)
  assert 'tau' not in layers['attn'] and 'meta_mlp' not in layers['attn']


def test_official_audiomae_parameter_count():
  """facebookresearch/AudioMAE's mae_vit_base_patch16 (decoder_mode=1,
  in_chans 1, 1024 x 128) has 136,992,768 parameters, its two fixed tables
  (513 x (768 + 512)) included; 111,656,448 with decoder_mode 0 (8 ViT
  blocks)."""
  tables = 513 * (768 + 512)
  for attention, decoder, total in (('local', '512d16b16h', 136_992_768),
                                    ('global', '512d8b16h', 111_656_448)):
    model = nnx.eval_shape(lambda: mae.MAE(
        input_size=(1024, 128), channels=1, variant='B/16', decoder=decoder,
        mask_ratio=0.8, decoder_attention=attention, rngs=nnx.Rngs(0)))
    assert model.grid == (64, 8)
    assert vit.count_params(nnx.state(model, nnx.Param)) + tables == total


def test_config_refuses_what_local_attention_cannot_do():
  c = config_lib.base_config()
  c.model.decoder_attention = 'local'
  c.model.image_size, c.model.variant = (32, 16), 'mu/4'
  c.total_steps = 1
  c.model.channels, c.data.mean, c.data.std = 1, (0.0,), (1.0,)
  config_lib.validate(c, check_files=False)
  for key, value, match in (
      ('decoder_attention', 'windowed', 'decoder_attention.*allowed'),
      ('decoder_window', (3, 4), 'decoder_window'),
      ('decoder_shift', (4, 0), 'decoder_shift')):
    bad = c.copy_and_resolve_references()
    bad.model[key] = value
    with pytest.raises(ValueError, match=match):
      config_lib.validate(bad, check_files=False)
  video = c.copy_and_resolve_references()
  video.model.frames, video.model.variant = 4, 'mu/2x4x4'
  video.model.pos_embed = 'sincos_flat'
  with pytest.raises(ValueError, match="decoder_attention='local'.*2-D"):
    config_lib.validate(video, check_files=False)
  with pytest.raises(ValueError, match="decoder_attention='local'.*'dual'"):
    mae.check_decoder_attention('local', (4, 4), (2, 0), (8, 4),
                                masking.get('dual'))
  with pytest.raises(ValueError, match='dual'):
    _local_mae(masking_name='dual')


def test_flops_count_windows_not_the_whole_grid():
  c = config_lib.base_config()
  c.model.image_size, c.model.channels = (1024, 128), 1
  c.model.variant, c.model.decoder = 'B/16', '512d16b16h'
  c.masking.ratio, c.batch_size = 0.8, 1
  glob = flops.train_flops(c)
  c.model.decoder_attention = 'local'
  local = flops.train_flops(c)
  assert (glob['decoder_tokens'], local['decoder_tokens']) == (513, 512)
  enc_attn = 12 * 2 * 2 * 103 ** 2 * 768  # 102 kept + cls
  assert local['attention'] - enc_attn == 16 * 2 * 2 * 512 * 16 * 512
  assert glob['attention'] - enc_attn == 16 * 2 * 2 * 513 ** 2 * 512
