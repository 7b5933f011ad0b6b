"""Masking strategies: pure functions of an explicit PRNG key.

A strategy is `fn(key, batch_size, grid, mask_ratio) -> Mask`. The grid (patch
counts per spatial axis) and ratio are Python values, so the kept count is
static and every strategy compiles to fixed shapes. Adding one (tube, block,
time/frequency, ...) = a function here plus `@register('name')`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Mask:
  """ids_keep: [B, K] visible token ids, in the order the encoder sees them.
  ids_restore: [B, L] position of each token in [visible..., masked...].
  mask: [B, L] 1.0 where a token is masked (removed), 0.0 where visible.
  """
  ids_keep: jax.Array
  ids_restore: jax.Array
  mask: jax.Array


MaskFn = Callable[[jax.Array, int, Sequence[int], float], Mask]
MASKING: dict[str, MaskFn] = {}


def register(name: str):
  def wrap(fn: MaskFn) -> MaskFn:
    MASKING[name] = fn
    return fn
  return wrap


def get(name: str) -> MaskFn:
  if name not in MASKING:
    raise ValueError(f'masking.name={name!r}: allowed {sorted(MASKING)}')
  return MASKING[name]


def num_kept(num_tokens: int, mask_ratio: float) -> int:
  """Visible tokens per example, rounded down as in MAE's reference code."""
  return int(num_tokens * (1 - mask_ratio))


def from_shuffle(ids_shuffle: jax.Array, keep: int) -> Mask:
  """Builds a Mask from a per-example permutation whose first `keep` are kept."""
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  mask = (ids_restore >= keep).astype(jnp.float32)
  return Mask(ids_keep=ids_shuffle[:, :keep], ids_restore=ids_restore, mask=mask)


@register('random')
def random_masking(key: jax.Array, batch_size: int, grid: Sequence[int],
                   mask_ratio: float) -> Mask:
  """Uniform random masking without replacement (He et al. 2022, Sec. 3).

  Each example sorts i.i.d. uniform noise; the tokens with the lowest noise
  are kept, so every subset of size K is equally likely.
  """
  length = math.prod(grid)
  noise = jax.random.uniform(key, (batch_size, length))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  return from_shuffle(ids_shuffle, num_kept(length, mask_ratio))
