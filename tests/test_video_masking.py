"""Video masking strategies, position embeddings and the clip model.

Invariants per strategy (exact counts, tube constancy, running-cell coverage,
dual-mask subsets, a motion-guided mask that follows known motion, adaptive
sampling without replacement with a gradient into its sampler), and one
train step per strategy on random clips.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mae_jax import masking, step as step_lib, targets, video_masking
from mae_jax.models import mae, position, tokenizers

GRID = (4, 6, 6)  # (t, h, w) tokens


def _opts(ratio=0.9, **kw):
  return masking.Options(ratio=ratio, **kw)


def _sample(name, batch=8, grid=GRID, ratio=0.9, key=0, **inputs):
  s = masking.get(name)
  return s.sample(jax.random.key(key), batch, grid, _opts(ratio), **inputs)


def _check_consistent(m: masking.Mask, kept: int, length: int):
  ids_keep, mask = np.asarray(m.ids_keep), np.asarray(m.mask)
  restore = np.asarray(m.ids_restore)
  assert ids_keep.shape[1] == kept and mask.shape[1] == length
  np.testing.assert_array_equal(mask.sum(1), length - kept)
  for b in range(len(mask)):
    assert len(set(ids_keep[b].tolist())) == kept  # without replacement
    assert (mask[b, ids_keep[b]] == 0).all()
    assert sorted(restore[b].tolist()) == list(range(length))


@pytest.mark.parametrize('name,ratio,kept', [
    ('random', 0.9, int(144 * 0.1)),          # MAE-ST space-time: int(L(1-r))
    ('tube', 0.9, 4 * (36 - int(0.9 * 36))),  # VideoMAE: per frame h*w - int(r*h*w)
    ('frame', 0.5, 2 * 36),
    ('dual', 0.9, 4 * (36 - int(0.9 * 36))),
])
def test_static_kept_counts(name, ratio, kept):
  s = masking.get(name)
  assert s.kept(GRID, masking.Options(ratio)) == kept
  _check_consistent(_sample(name, ratio=ratio), kept, math.prod(GRID))


def test_videomae_b_counts_at_16x224():
  grid = (8, 14, 14)  # 16 frames / 2, 224 / 16
  assert masking.get('tube').kept(grid, masking.Options(0.9)) == 8 * 20     # 160 (VideoMAE)
  assert masking.get('random').kept(grid, masking.Options(0.9)) == 156      # MAE-ST
  assert masking.get('dual').kept(grid, masking.Options(0.9)) == 160
  assert video_masking.running_cell_ids(grid, 0.5).shape == (4, 784)


def test_tube_is_constant_over_time_and_differs_between_examples():
  m = np.asarray(_sample('tube').mask).reshape(8, *GRID)
  assert (m == m[:, :1]).all()
  assert len({m[b, 0].tobytes() for b in range(8)}) > 1


def test_frame_masking_hides_whole_time_steps():
  m = np.asarray(_sample('frame', ratio=0.5).mask).reshape(8, GRID[0], -1)
  per_step = m.mean(-1)
  assert set(np.unique(per_step)) <= {0.0, 1.0}
  np.testing.assert_array_equal(per_step.sum(1), 2)


def _official_running_cell(t, h, w, start):
  """VideoMAE V2's RunningCellMaskingGenerator, written from its description:
  a queue [1, 1, 0, 0] read cyclically from a pointer that advances one slot
  before each time step; 1 = dropped by the decoder."""
  queue = [1, 1, 0, 0]
  out = []
  for i in range(t):
    ptr = start + i + 1
    cell = np.array([queue[(j + ptr) % 4] for j in range(4)]).reshape(2, 2)
    out.append(np.tile(cell, (h // 2, w // 2)))
  return np.stack(out)  # [t, h, w]


def test_running_cell_matches_the_v2_generator_and_covers_every_slot():
  t, h, w = GRID
  table = video_masking.running_cell_ids(GRID, 0.5)
  for start in range(4):
    dropped = _official_running_cell(t, h, w, start).reshape(-1)
    np.testing.assert_array_equal(table[start], np.flatnonzero(dropped == 0))
  # Coverage: over 4 consecutive steps every token position is decoded twice.
  kept = np.zeros(t * h * w)
  kept[table[0]] = 1
  np.testing.assert_array_equal(kept.reshape(t, h * w).sum(0), 2)


def test_dual_mask_decoder_subset_and_loss_weights():
  m = _sample('dual')
  ids = np.asarray(m.decode_ids)
  table = video_masking.running_cell_ids(GRID, 0.5)
  assert ids.shape == (8, math.prod(GRID) // 2)
  assert masking.get('dual').num_decoded(GRID, _opts()) == ids.shape[1]
  assert masking.get('tube').num_decoded(GRID, _opts()) == math.prod(GRID)
  assert all(any((row == t).all() for t in table) for row in ids)
  # The encoder's tube mask is untouched by the decoder mask.
  tube = masking.get('tube').sample(jax.random.split(jax.random.key(0))[0], 8,
                                    GRID, _opts())
  np.testing.assert_array_equal(np.asarray(m.mask), np.asarray(tube.mask))
  # Loss weights: 1 exactly on decoded tokens the encoder did not see.
  pred = jnp.zeros((8, ids.shape[1], 3))
  err, weight = targets.token_error(pred, jnp.ones((8, math.prod(GRID), 3)), m)
  np.testing.assert_array_equal(
      np.asarray(weight), np.take_along_axis(np.asarray(m.mask), ids, 1))
  assert err.shape == weight.shape == ids.shape


def _moving_texture(shift=(0, 1), t=4, h=6, w=6, p=4, seed=0):
  """Patches [1, t*h*w, p*p] of a random texture that moves by `shift`
  tokens per time step (wrapping around)."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(h, w, p * p)).astype(np.float32)
  frames = [np.roll(base, (i * shift[0], i * shift[1]), axis=(0, 1))
            for i in range(t)]
  return jnp.asarray(np.stack(frames).reshape(1, t * h * w, p * p))


def test_block_matching_finds_the_motion():
  motion = np.asarray(video_masking.block_matching(_moving_texture(), GRID, 1))
  assert motion.shape == (1, 3, 6, 6, 2)
  # Away from the wrapped column the estimate is the true shift.
  np.testing.assert_array_equal(motion[0, :, :, 1:], np.broadcast_to(
      [0, 1], (3, 6, 5, 2)))


def test_motion_mask_follows_known_motion():
  patches = _moving_texture()
  m = np.asarray(masking.get('motion').sample(
      jax.random.key(3), 1, GRID, _opts(ratio=0.5), patches=patches
  ).mask).reshape(GRID)
  # What is masked at step i is masked one token to the right at step i + 1.
  follows = (m[1:, :, 1:] == m[:-1, :, :-1]).mean()
  assert follows > 0.9
  static = np.asarray(masking.get('motion').sample(
      jax.random.key(3), 1, GRID, _opts(ratio=0.5),
      patches=_moving_texture(shift=(0, 0))).mask).reshape(GRID)
  assert (static == static[:1]).all()  # no motion: a tube
  counts = m.reshape(GRID[0], -1).sum(1)
  np.testing.assert_array_equal(counts, 36 - video_masking._per_frame_kept(GRID, 0.5))


def test_adaptive_sampling_is_without_replacement_and_follows_the_logits():
  length = math.prod(GRID)
  logits = jnp.full((8, length), -20.0).at[:, :14].set(20.0)
  m = _sample('adaptive', logits=logits)
  _check_consistent(m, 14, length)
  np.testing.assert_array_equal(np.sort(np.asarray(m.ids_keep), 1),
                                np.broadcast_to(np.arange(14), (8, 14)))
  uniform = _sample('adaptive', logits=jnp.zeros((8, length)))
  assert len({tuple(np.sort(r)) for r in np.asarray(uniform.ids_keep)}) == 8


def _clip_model(masking_name='tube', pos_embed='sincos_flat', cls_token=False,
                ratio=0.75, **kw):
  return mae.MAE(input_size=(8, 16, 16), channels=3, variant='mu/2x4x4',
                 decoder='24d1b', mask_ratio=ratio, masking_name=masking_name,
                 masking_options=masking.Options(ratio=ratio, **kw),
                 pos_embed=pos_embed, cls_token=cls_token, rngs=nnx.Rngs(0))


def test_clip_patchify_order_and_round_trip():
  x = jax.random.normal(jax.random.key(0), (2, 8, 16, 16, 3))
  tokens = tokenizers.patchify(x, (2, 4, 4))
  assert tokens.shape == (2, 4 * 4 * 4, 2 * 4 * 4 * 3)
  # Token (t=1, y=2, x=3) holds its tubelet in (dt, dy, dx, channel) order.
  idx = 1 * 16 + 2 * 4 + 3
  np.testing.assert_array_equal(
      np.asarray(tokens[1, idx]),
      np.asarray(x[1, 2:4, 8:12, 12:16, :]).reshape(-1))
  np.testing.assert_array_equal(
      np.asarray(tokenizers.unpatchify(tokens, (4, 4, 4), (2, 4, 4), 3)),
      np.asarray(x))


def test_videomae_sinusoid_table():
  # VideoMAE's get_sinusoid_encoding_table, entry by entry.
  n, d = 7, 6
  table = position.sinusoid_table(n, d)
  for pos in range(n):
    for j in range(d):
      angle = pos / 10000 ** (2 * (j // 2) / d)
      want = math.sin(angle) if j % 2 == 0 else math.cos(angle)
      assert abs(table[pos, j] - want) < 1e-6


def test_learned_separable_is_space_plus_time():
  model = _clip_model(pos_embed='learned_separable', cls_token=True)
  pe = model.pos_embed
  assert pe.space.shape == (16, 32) and pe.time.shape == (4, 32)
  table = np.asarray(pe())
  want = (np.asarray(pe.time[...])[:, None] + np.asarray(pe.space[...])[None])
  np.testing.assert_allclose(table, want.reshape(64, 32), rtol=1e-6)
  assert float(jnp.abs(pe.cls()).sum()) > 0  # MAE-ST learns the cls one too


@pytest.mark.parametrize('name,kw', [
    ('random', {}), ('tube', {}), ('frame', {}), ('dual', {}), ('motion', {}),
    ('adaptive', dict(sampler_weight=1.0))])
@pytest.mark.parametrize('pos_embed', ['sincos_flat'])
def test_one_train_step_per_strategy(name, kw, pos_embed):
  model = _clip_model(name, pos_embed=pos_embed, ratio=0.5, **kw)
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  tx = optax.adamw(1e-3)
  state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  fn = jax.jit(step_lib.make_train_step(graphdef, tx, lambda s: 1e-3,
                                        'norm_pixels_channel'))
  x = jax.random.normal(jax.random.key(1), (2, 8, 16, 16, 3))
  new, metrics = fn(state, {'image': x}, jax.random.key(2))
  assert np.isfinite(float(metrics['loss']))
  terms = {k for k in metrics if k.startswith('loss/')}
  assert terms == ({'loss/reconstruction', 'loss/sampler'} if name == 'adaptive'
                   else {'loss/reconstruction'})
  np.testing.assert_allclose(
      float(metrics['loss']), sum(float(metrics[t]) for t in terms), rtol=1e-6)
  changed = jax.tree.map(lambda a, b: bool((a != b).any()), params, new.params)
  assert all(jax.tree.leaves(changed['encoder']))


def test_sampler_gets_a_gradient_only_from_its_loss_term():
  model = _clip_model('adaptive', ratio=0.5, sampler_weight=1e-4)
  graphdef, params = nnx.split(model)
  x = jax.random.normal(jax.random.key(1), (2, 8, 16, 16, 3))
  mask = model.sample_mask(jax.random.key(2), x)

  def term(p, name):
    m = nnx.merge(graphdef, p)
    return step_lib.loss_terms(m, x, mask, 'pixels')[name]

  g = jax.grad(term)(params, 'sampler')
  assert float(optax.tree.norm(g['sampler'])) > 0
  g_rec = jax.grad(term)(params, 'reconstruction')
  assert float(optax.tree.norm(g_rec['sampler'])) == 0


def test_dual_decoder_predicts_only_its_subset():
  model = _clip_model('dual', ratio=0.5)
  x = jax.random.normal(jax.random.key(1), (2, 8, 16, 16, 3))
  mask = model.sample_mask(jax.random.key(2), x)
  pred, patches = model(x, mask)
  assert pred.shape == (2, 32, patches.shape[-1])  # half of 64 tokens
  full, _ = model(x, mask.replace(decode_ids=None))
  assert full.shape == patches.shape


def test_strategies_check_their_grid():
  with pytest.raises(ValueError, match=r"masking.name='tube' masks clips"):
    masking.get('tube').check((14, 14), _opts())
  with pytest.raises(ValueError, match='both must be even'):
    masking.get('dual').check((4, 7, 7), _opts())
  with pytest.raises(ValueError, match='decoder_ratio'):
    masking.get('dual').check((4, 6, 6), _opts(decoder_ratio=0.1))


def test_clip_pictures_are_frame_strips():
  from mae_jax.evaluators import reconstruction
  rng = np.random.default_rng(0)
  clips = rng.normal(size=(2, 3, 8, 8, 1)).astype(np.float32)
  recon = rng.normal(size=(2, 3, 8, 8, 1)).astype(np.float32)
  mask = np.zeros((2, 3, 8, 8, 1), np.float32)
  mask[:, 1] = 1  # the middle frame hidden
  grid = reconstruction.picture_grid(clips, recon, mask, (0.5,), (0.25,),
                                     min_size=0)
  # 2 clips x 3 strips of 8 rows; 3 frames of 8 columns; 2-pixel gaps.
  assert grid.shape == (6 * 8 + 5 * 2, 3 * 8 + 2 * 2, 3)
  orig = np.clip(np.round((clips[1] * 0.25 + 0.5) * 255), 0, 255)[..., 0]
  top = 3 * 10  # clip 1's original strip
  np.testing.assert_allclose(grid[top:top + 8, 10:18, 0], orig[1], atol=1)
  masked_strip = grid[top + 10:top + 18]
  assert (masked_strip[:, 10:18] == 128).all()
  np.testing.assert_allclose(masked_strip[:, :8, 0], orig[0], atol=1)
  rec = np.clip(np.round((recon[1] * 0.25 + 0.5) * 255), 0, 255)[..., 0]
  np.testing.assert_allclose(grid[top + 20:top + 28, 20:28, 0], rec[2], atol=1)
