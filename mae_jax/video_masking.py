"""Masking strategies for clips, registered into masking.py's registry.

Token grids are (t, h, w). VideoMAE's kept count per time step is
h * w - int(ratio * h * w); the strategies here that mask per time step
(tube, dual, motion) all keep that many.

  tube    one spatial mask repeated over time (VideoMAE)
  frame   whole time steps hidden
  dual    tube for the encoder, a running-cell subset for the decoder (VideoMAE V2)
  motion  masks that follow motion estimated by block matching (MGMAE)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.masking import Mask, from_shuffle, register


def _video_grid(name: str):
  def check(grid, opts) -> None:
    del opts
    if len(grid) != 3 or grid[0] < 2:
      raise ValueError(f'masking.name={name!r} masks clips: it needs a token '
                       f'grid (t, h, w) with t >= 2, got {tuple(grid)} (set '
                       'model.frames and a tubelet variant such as B/2x16x16)')
  return check


def _per_frame_kept(grid, ratio) -> int:
  """Visible tokens of one time step: VideoMAE masks int(ratio * h * w)."""
  hw = math.prod(grid[1:])
  return hw - int(ratio * hw)


def _tube_kept(grid, opts) -> int:
  return grid[0] * _per_frame_kept(grid, opts.ratio)


def _kept_per_frame(scores: jax.Array, grid, keep_hw: int) -> Mask:
  """scores [B, t*h*w]: per time step the `keep_hw` lowest are visible."""
  t, hw = grid[0], math.prod(grid[1:])
  b = scores.shape[0]
  order = jnp.argsort(scores.reshape(b, t, hw), axis=2, stable=True)
  order = order + (jnp.arange(t) * hw)[None, :, None]
  kept = order[:, :, :keep_hw].reshape(b, -1)
  masked = order[:, :, keep_hw:].reshape(b, -1)
  return from_shuffle(jnp.concatenate([kept, masked], 1).astype(jnp.int32),
                      t * keep_hw)


@register('tube', kept=_tube_kept, check=_video_grid('tube'))
def tube_masking(key, batch_size, grid, opts) -> Mask:
  """VideoMAE's tube masking (Tong et al. 2022): one random spatial mask of
  int(ratio * h * w) tokens, the same at every time step."""
  t, hw = grid[0], math.prod(grid[1:])
  noise = jax.random.uniform(key, (batch_size, 1, hw))
  scores = jnp.broadcast_to(noise, (batch_size, t, hw)).reshape(batch_size, -1)
  return _kept_per_frame(scores, grid, _per_frame_kept(grid, opts.ratio))


def _frame_kept(grid, opts) -> int:
  return (grid[0] - int(opts.ratio * grid[0])) * math.prod(grid[1:])


def _frame_check(grid, opts) -> None:
  _video_grid('frame')(grid, opts)
  if grid[0] - int(opts.ratio * grid[0]) < 1:
    raise ValueError(f'masking.ratio={opts.ratio} hides all {grid[0]} time '
                     'steps with masking.name=frame; lower it')


@register('frame', kept=_frame_kept, check=_frame_check)
def frame_masking(key, batch_size, grid, opts) -> Mask:
  """Whole time steps: int(ratio * t) random ones are hidden entirely."""
  t, hw = grid[0], math.prod(grid[1:])
  noise = jax.random.uniform(key, (batch_size, t))
  keep_t = t - int(opts.ratio * t)
  frames = jnp.argsort(noise, axis=1)  # [B, t], kept time steps first
  ids = frames[:, :, None] * hw + jnp.arange(hw)[None, None, :]
  return from_shuffle(ids.reshape(batch_size, t * hw).astype(jnp.int32),
                      keep_t * hw)


# ------------------------------------------------------------ dual masking


@functools.cache
def running_cell_ids(grid: tuple[int, ...], decoder_ratio: float) -> np.ndarray:
  """VideoMAE V2's running-cell decoder masks: [4, M] token ids the decoder
  keeps, one row per start phase of the cell.

  A 2x2 cell holds int(4 * decoder_ratio) masked and the rest visible slots
  (queue [1]*masked + [0]*visible); tiled over the (h, w) grid, it advances
  one slot per time step, so a token is kept by the decoder in some time
  steps and dropped in others.
  """
  t, h, w = grid
  masked = int(4 * decoder_ratio)
  queue = np.array([1] * masked + [0] * (4 - masked))
  rows = []
  for start in range(4):
    frames = []
    for step in range(t):
      ptr = start + step + 1  # the cell runs before each frame's map
      cell = queue[(np.arange(4) + ptr) % 4].reshape(2, 2)
      frames.append(np.tile(cell, (h // 2, w // 2)).reshape(-1))
    rows.append(np.flatnonzero(np.concatenate(frames) == 0))
  return np.stack(rows).astype(np.int32)


def _dual_check(grid, opts) -> None:
  _video_grid('dual')(grid, opts)
  if grid[1] % 2 or grid[2] % 2:
    raise ValueError(f'masking.name=dual tiles 2x2 cells over the (h, w) token '
                     f'grid {tuple(grid[1:])}: both must be even')
  if not 0 < int(4 * opts.decoder_ratio) < 4:
    raise ValueError(f'masking.decoder_ratio={opts.decoder_ratio}: the running '
                     'cell drops int(4 * ratio) of 4 tokens; allowed 0.25 <= '
                     'ratio < 1 (VideoMAE V2: 0.5)')


def _dual_decoded(grid, opts) -> int:
  return running_cell_ids(tuple(grid), opts.decoder_ratio).shape[1]


@register('dual', kept=_tube_kept, check=_dual_check, decoded=_dual_decoded)
def dual_masking(key, batch_size, grid, opts) -> Mask:
  """VideoMAE V2's dual masking (Wang et al. 2023): tube masking for the
  encoder; the decoder gets mask tokens only at the running cell's kept
  positions (decode_ids, M = L * (1 - decoder_ratio)) and predicts those.

  As in the official code the running cell ignores the encoder mask: a
  decoder position may be one the encoder saw; the loss (targets.py) counts
  only the positions the encoder did not see.
  """
  k_tube, k_cell = jax.random.split(key)
  mask = tube_masking(k_tube, batch_size, grid, opts)
  table = jnp.asarray(running_cell_ids(tuple(grid), opts.decoder_ratio))
  phase = jax.random.randint(k_cell, (batch_size,), 0, table.shape[0])
  return mask.replace(decode_ids=table[phase])


# ------------------------------------------------------ motion-guided masking


def block_matching(patches: jax.Array, grid, radius: int) -> jax.Array:
  """Token motion between consecutive time steps, by exhaustive block matching.

  patches: [B, t*h*w, P] -> displacement [B, t-1, h, w, 2] (dy, dx), in
  tokens: the content of token (y, x) at step i+1 is best matched by token
  (y - dy, x - dx) at step i (squared error over the token's values, ties
  and flat regions resolved to the smallest displacement). The search window
  is (2 radius + 1)^2; the previous step is edge-padded at the borders.
  """
  t, h, w = grid
  b = patches.shape[0]
  f = patches.astype(jnp.float32).reshape(b, t, h, w, -1)
  prev, nxt = f[:, :-1], f[:, 1:]
  padded = jnp.pad(prev, ((0, 0), (0, 0), (radius, radius), (radius, radius),
                          (0, 0)), mode='edge')
  shifts = [(dy, dx) for dy in range(-radius, radius + 1)
            for dx in range(-radius, radius + 1)]
  costs = []
  for dy, dx in shifts:
    src = padded[:, :, radius - dy:radius - dy + h, radius - dx:radius - dx + w]
    cost = jnp.mean(jnp.square(nxt - src), axis=-1)
    # A tiny preference for short moves: flat regions stay put.
    costs.append(cost + 1e-6 * (dy * dy + dx * dx))
  best = jnp.argmin(jnp.stack(costs, -1), axis=-1)  # [B, t-1, h, w]
  table = jnp.asarray(shifts, jnp.int32)
  return table[best]


def warp_along_motion(base: jax.Array, motion: jax.Array) -> jax.Array:
  """base: [B, h, w] values at step 0; motion [B, t-1, h, w, 2] ->
  [B, t, h, w]: step i+1 takes the value of the token its content came from
  (backward warping, as MGMAE warps its mask map with optical flow)."""
  b, h, w = base.shape
  yy, xx = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing='ij')

  def step(values, d):  # values [B, h, w], d [B, h, w, 2]
    sy = jnp.clip(yy[None] - d[..., 0], 0, h - 1)
    sx = jnp.clip(xx[None] - d[..., 1], 0, w - 1)
    nxt = values[jnp.arange(b)[:, None, None], sy, sx]
    return nxt, nxt

  _, rest = jax.lax.scan(step, base, jnp.moveaxis(motion, 1, 0))
  return jnp.concatenate([base[:, None], jnp.moveaxis(rest, 0, 1)], axis=1)


def _motion_check(grid, opts) -> None:
  _video_grid('motion')(grid, opts)
  if opts.motion_radius < 1:
    raise ValueError(f'masking.motion_radius={opts.motion_radius}: must be >= 1')


@register('motion', kept=_tube_kept, needs=('patches',), check=_motion_check)
def motion_masking(key, batch_size, grid, opts, *, patches) -> Mask:
  """MGMAE-style motion-guided masking (Huang et al. 2023).

  MGMAE warps a random mask map along optical flow so that masked volumes
  follow the moving content. Here the motion is estimated online, in JAX,
  by block matching on the tokens themselves (block_matching: integer token
  displacements; MGMAE uses RAFT flow, which is finer but needs a separate
  network). A random score map at the first time step is carried along the
  motion; at every time step the int(ratio * h * w) highest scores are
  masked, so each step keeps as many tokens as tube masking.
  """
  t, h, w = grid
  motion = block_matching(jax.lax.stop_gradient(patches), grid,
                          opts.motion_radius)
  base = jax.random.uniform(key, (batch_size, h, w))
  scores = warp_along_motion(base, motion).reshape(batch_size, t * h * w)
  # Warping can copy a score to two tokens; a little noise breaks the tie.
  scores = scores + 1e-3 * jax.random.uniform(jax.random.fold_in(key, 1),
                                              scores.shape)
  return _kept_per_frame(scores, grid, _per_frame_kept(grid, opts.ratio))
