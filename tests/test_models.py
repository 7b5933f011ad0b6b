import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mae_jax.models import mae, tokenizers, vit

ENCODER_KEYS = ('patch_embed', 'cls_token', 'encoder', 'encoder_norm')


def _abstract_params(**kw):
  args = dict(input_size=(224, 224), channels=3, variant='B/16',
              decoder='512d8b', mask_ratio=0.75)
  args.update(kw)
  model = nnx.eval_shape(lambda: mae.MAE(**args, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(model)), model


def _count(params, keys=None):
  return sum(vit.count_params(v) for k, v in params.items()
             if keys is None or k in keys)


# The reference MAE models (facebookresearch/mae, also facebook/vit-mae-base
# on the HF hub) count their fixed sin-cos position embeddings as (frozen)
# parameters: (L + 1) x width for the encoder and the decoder.
@pytest.mark.parametrize('variant,total', [('B/16', 111_907_840),
                                           ('L/16', 329_541_888)])
def test_full_mae_matches_reference_parameter_count(variant, total):
  params, model = _abstract_params(variant=variant)
  enc_w = vit.decode_variant(variant).width
  pos = (model.num_patches + 1) * (enc_w + 512)
  assert _count(params) + pos == total


# Published encoder sizes (MAE paper: ViT-B 86M, ViT-L 304M, ViT-H 632M),
# counting the position embedding as ViT does.
@pytest.mark.parametrize('variant,published', [('B/16', 86e6), ('L/16', 304e6),
                                               ('H/14', 632e6)])
def test_encoder_matches_published_size(variant, published):
  params, model = _abstract_params(variant=variant)
  width = vit.decode_variant(variant).width
  n = _count(params, ENCODER_KEYS) + (model.num_patches + 1) * width
  assert abs(n - published) / published < 0.005, n


def test_default_decoder_size():
  # 512 wide, 8 blocks, MLP 2048, for 16x16x3 patches of a ViT-B encoder:
  # embed 768*512+512, mask token 512, 8 blocks of 3,152,384, norm 1024,
  # prediction 512*768+768.
  params, _ = _abstract_params()
  dec = _count(params) - _count(params, ENCODER_KEYS)
  assert dec == 393_728 + 512 + 8 * 3_152_384 + 1_024 + 393_984


def test_decode_variant_and_decoder():
  s = vit.decode_variant('L/16')
  assert (s.width, s.depth, s.mlp_dim, s.num_heads, s.patch) == (
      1024, 24, 4096, 16, (16, 16))
  assert vit.decode_variant('B/2x16x16').patch == (2, 16, 16)
  d = mae.decode_decoder('512d8b')
  assert (d.width, d.depth, d.num_heads, d.mlp_dim) == (512, 8, 16, 2048)
  assert mae.decode_decoder('256d4b8h').num_heads == 8
  for bad in ('X/16', 'B16', 'B/0', 'B/ax2'):
    with pytest.raises(ValueError, match='model.variant'):
      vit.decode_variant(bad)
  with pytest.raises(ValueError, match='model.decoder'):
    mae.decode_decoder('512x8')


def test_patchify_matches_reference_layout_and_inverts():
  x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
  p = 4
  # MAE's layout: token (h, w) row-major; values ordered (p, q, c).
  ref = x.reshape(2, 2, p, 3, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 48)
  tok = tokenizers.patchify(jnp.asarray(x), (p, p))
  np.testing.assert_array_equal(tok, ref)
  np.testing.assert_array_equal(
      tokenizers.unpatchify(tok, (2, 3), (p, p), 3), x)


def test_spectrogram_patches_are_audiomaes_layout_and_invert():
  """A 1024 x 128 spectrogram [T, F, 1] -> 64 x 8 tokens, time-major, values
  ordered as AudioMAE's patchify of its [N, 1, T, F] input."""
  x = np.random.default_rng(1).normal(size=(2, 1024, 128, 1)).astype(
      np.float32)
  assert tokenizers.grid_shape((1024, 128), (16, 16)) == (64, 8)
  ref = x[..., 0].reshape(2, 64, 16, 8, 16).transpose(0, 1, 3, 2, 4)
  tok = tokenizers.patchify(jnp.asarray(x), (16, 16))
  np.testing.assert_array_equal(tok, ref.reshape(2, 512, 256))
  np.testing.assert_array_equal(
      tokenizers.unpatchify(tok, (64, 8), (16, 16), 1), x)


def test_patchify_video_tubelets_invert():
  x = jnp.arange(2 * 4 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 4, 8, 8, 3)
  tok = tokenizers.patchify(x, (2, 4, 4))
  assert tok.shape == (2, 2 * 2 * 2, 2 * 4 * 4 * 3)
  np.testing.assert_array_equal(
      tokenizers.unpatchify(tok, (2, 2, 2), (2, 4, 4), 3), x)


def test_patchify_rejects_indivisible_input():
  with pytest.raises(ValueError, match='not divisible'):
    tokenizers.patchify(jnp.zeros((1, 10, 16, 3)), (4, 4))


def test_sincos_matches_1d_formula_per_axis():
  pe = tokenizers.sincos_pos_embed((3, 5), 16)
  assert pe.shape == (15, 16)
  omega = 1.0 / 10000 ** (np.arange(4) / 4)
  r, c = 2, 3  # token (row 2, col 3) is index 2 * 5 + 3
  # The official MAE order: the column (x) coordinate fills the first half.
  want = np.concatenate([np.sin(c * omega), np.cos(c * omega),
                         np.sin(r * omega), np.cos(r * omega)])
  np.testing.assert_allclose(pe[13], want, rtol=1e-6)
  assert len({tuple(row) for row in pe.round(6)}) == 15  # all distinct
  old = tokenizers.sincos_pos_embed((3, 5), 16, last_axis_first=False)
  np.testing.assert_allclose(old[13], np.roll(want, 8), rtol=1e-6)


def test_configs_saved_before_version_2_keep_their_sincos_order():
  from mae_jax import config as config_lib
  old = config_lib.with_defaults({'model': {'variant': 'mu/4'}})
  assert old.model.pos_embed == 'sincos_yx' and old.version == 2
  flat = config_lib.with_defaults({'model': {'pos_embed': 'sincos_flat'}})
  assert flat.model.pos_embed == 'sincos_flat'
  new = config_lib.with_defaults({'version': 2, 'model': {}})
  assert new.model.pos_embed == 'sincos'


def _numpy_block(x, p):
  """Reference pre-norm ViT block in plain numpy."""
  def ln(v, g):
    mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + 1e-6) * g['scale'] + g['bias']
  def gelu(v):
    from math import erf, sqrt
    return 0.5 * v * (1 + np.vectorize(erf)(v / sqrt(2)))
  h = ln(x, p['norm1'])
  qkv = np.einsum('btd,dshk->btshk', h, p['attn']['qkv']['kernel']) + p['attn']['qkv']['bias']
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  logits = np.einsum('bqhk,bthk->bhqt', q, k) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  o = np.einsum('bhqt,bthk->bqhk', w, v)
  x = x + np.einsum('bthk,hkd->btd', o, p['attn']['out']['kernel']) + p['attn']['out']['bias']
  h = ln(x, p['norm2'])
  h = gelu(h @ p['mlp']['fc1']['kernel'] + p['mlp']['fc1']['bias'])
  return x + h @ p['mlp']['fc2']['kernel'] + p['mlp']['fc2']['bias']


def test_block_matches_numpy_reference():
  block = vit.Block(16, 32, 4, dtype=jnp.float32, attention=None,
                    rngs=nnx.Rngs(0))
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(block)))
  # non-trivial norms and biases
  params = jax.tree.map(
      lambda a: a + np.random.default_rng(a.size).normal(size=a.shape) * 0.1,
      params)
  nnx.update(block, params)
  x = np.random.default_rng(1).normal(size=(2, 5, 16)).astype(np.float32)
  np.testing.assert_allclose(block(jnp.asarray(x)), _numpy_block(x, params),
                             rtol=2e-4, atol=2e-4)


def _tiny(**kw):
  args = dict(input_size=(16, 16), channels=3, variant='mu/4', decoder='32d2b',
              mask_ratio=0.75)
  args.update(kw)
  return mae.MAE(**args, rngs=nnx.Rngs(0))


def test_forward_shapes_and_visible_only_encoder():
  model = _tiny()
  x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  mask = model.sample_mask(jax.random.key(1), x)
  pred, patches = nnx.jit(lambda m, x, mask: m(x, mask))(model, x, mask)
  assert pred.shape == patches.shape == (3, 16, 48)
  assert pred.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(mask.mask).sum(1), 12)
  encode = nnx.jit(lambda m, p, ids: m.encode(p, ids))
  assert encode(model, patches, mask.ids_keep).shape == (3, 1 + 4, 32)  # cls + 4 of 16
  assert encode(model, patches, None).shape == (3, 17, 32)


def test_no_cls_token_variant():
  model = _tiny(cls_token=False)
  x = jnp.ones((2, 16, 16, 3))
  mask = model.sample_mask(jax.random.key(0), x)
  pred, _ = nnx.jit(lambda m, x, mask: m(x, mask))(model, x, mask)
  assert pred.shape == (2, 16, 48)
  assert model.cls_token is None


@functools.cache
def _loss_and_grads_cached(items):
  return _loss_and_grads(dict(items))


def _loss_and_grads(model_kwargs):
  model = _tiny(**model_kwargs)
  graphdef, params = nnx.split(model)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))

  def loss(p):
    model = nnx.merge(graphdef, p)
    mask = model.sample_mask(jax.random.key(1), x)
    pred, patches = model(x, mask)
    return jnp.mean(jnp.square(pred - patches) * mask.mask[..., None])

  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize('kw', [dict(remat='full'), dict(remat='dots'),
                                dict(remat='names', remat_names=('mlp_hidden',)),
                                dict(scan_unroll=2)])
def test_remat_and_unroll_do_not_change_the_math(kw):
  base_loss, base_grads = _loss_and_grads_cached(())
  loss, grads = _loss_and_grads(kw)
  # Same math, possibly reassociated float sums: equal to float32 precision.
  np.testing.assert_allclose(loss, base_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               grads, base_grads)


def test_bf16_compute_keeps_fp32_params_and_close_loss():
  loss32, _ = _loss_and_grads_cached(())
  loss16, grads16 = _loss_and_grads(dict(dtype=jnp.bfloat16))
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
  assert abs(float(loss16) - float(loss32)) / float(loss32) < 0.05


def test_unknown_remat_policy():
  with pytest.raises(ValueError, match='model.remat'):
    _tiny(remat='sometimes')
