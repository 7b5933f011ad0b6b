"""Inputs -> patch tokens and back, and fixed sin-cos position embeddings.

One rule serves every modality: an input [B, *S, C] with n spatial axes S
(2 for images and spectrograms, 3 for video clips) is cut into patches of shape
`patch` (one size per spatial axis: 16x16 patches, 2x16x16 tubelets). Tokens
are ordered row-major over the patch grid; a token's vector is its pixels in
(patch..., channel) order, the order MAE's pixel targets use.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def grid_shape(spatial: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
  """Number of patches along each spatial axis."""
  if len(spatial) != len(patch):
    raise ValueError(f'input has {len(spatial)} spatial axes {tuple(spatial)} '
                     f'but the patch {tuple(patch)} has {len(patch)}')
  for s, p in zip(spatial, patch):
    if s % p:
      raise ValueError(f'input size {tuple(spatial)} is not divisible by the '
                       f'patch size {tuple(patch)}')
  return tuple(s // p for s, p in zip(spatial, patch))


def patchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
  """x: [B, *S, C] -> tokens [B, L, prod(patch) * C], L = prod(S / patch)."""
  b, *spatial, c = x.shape
  grid = grid_shape(spatial, patch)
  n = len(grid)
  # [B, g0, p0, g1, p1, ..., C] -> [B, g0, g1, ..., p0, p1, ..., C]
  x = x.reshape(b, *[d for gp in zip(grid, patch) for d in gp], c)
  perm = (0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
  x = x.transpose(perm)
  return x.reshape(b, math.prod(grid), math.prod(patch) * c)


def unpatchify(tokens: jax.Array, grid: Sequence[int], patch: Sequence[int],
               channels: int) -> jax.Array:
  """tokens: [B, L, prod(patch) * C] -> [B, *S, C]; inverse of patchify."""
  b = tokens.shape[0]
  n = len(grid)
  x = tokens.reshape(b, *grid, *patch, channels)
  # [B, g0, g1, ..., p0, p1, ..., C] -> [B, g0, p0, g1, p1, ..., C]
  perm = (0, *[a for i in range(n) for a in (1 + i, 1 + n + i)], 2 * n + 1)
  x = x.transpose(perm)
  return x.reshape(b, *[g * p for g, p in zip(grid, patch)], channels)


def sincos_pos_embed(grid: Sequence[int], dim: int,
                     last_axis_first: bool = True) -> np.ndarray:
  """Fixed sin-cos position embedding [L, dim] for a patch grid (MAE, Sec. A.1).

  Each grid axis gets dim / n channels: half sines, half cosines of its
  coordinate at frequencies 1 / 10000^(i / (dim / 2n)). The axes fill the
  channels last axis first, as the official MAE code does for images
  (`get_2d_sincos_pos_embed`: the column coordinate in the first half, the
  row in the second); last_axis_first=False is the order mae_jax used before
  (kind 'sincos_yx'). Computed with numpy so it is a compile-time constant,
  never a parameter.
  """
  n = len(grid)
  if dim % (2 * n):
    raise ValueError(f'width {dim} must be divisible by {2 * n} for a {n}-D '
                     'sin-cos position embedding')
  half = dim // n // 2
  omega = 1.0 / 10000 ** (np.arange(half, dtype=np.float64) / half)
  coords = np.meshgrid(*[np.arange(g, dtype=np.float64) for g in grid],
                       indexing='ij')
  parts = []
  for c in (coords[::-1] if last_axis_first else coords):
    angles = c.reshape(-1)[:, None] * omega[None, :]  # [L, half]
    parts += [np.sin(angles), np.cos(angles)]
  return np.concatenate(parts, axis=1).astype(np.float32)


def gather_tokens(x: jax.Array, ids: jax.Array) -> jax.Array:
  """x: [B, L, D], ids: [B, K] -> [B, K, D] (row b takes tokens ids[b])."""
  return jnp.take_along_axis(x, ids[..., None], axis=1)
