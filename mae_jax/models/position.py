"""Position embeddings, chosen by name (config.model.pos_embed).

Each kind is a module built for one token grid and width; calling it gives
the table [L, D] for the grid's tokens in row-major order, and `cls()` the
embedding of the cls token ([D], zero for the fixed kinds, as in MAE). The
encoder and the decoder each build their own. Adding a kind = a class here
plus `@register('name')`.

  sincos             separable sin-cos over the grid axes (MAE, Sec. A.1),
                     in the official code's channel order: the last axis
                     first (images: x then y; clips: x, y, t, 1/3 each)
  sincos_yx          the same with the first axis first (y then x): the
                     order of checkpoints made before mae_jax adopted the
                     official one (config.with_defaults maps them to it)
  sincos_audiomae    AudioMAE's fixed table: 'sincos' of the grid with its
                     axes reversed, row i for token i (the official
                     PatchEmbed_org swaps its patch_hw, so the (64, 8)
                     time x mel grid gets the table of an 8 x 64 grid in
                     token order); the same as 'sincos' on square grids
  sincos_flat        VideoMAE's fixed table: 1-D sinusoids of the flat token
                     index (t, y, x row-major), sin on even and cos on odd
                     channels (Tong et al. 2022, official code)
  learned_separable  MAE-ST: a learned table over space (the last two grid
                     axes) plus one over time (the axes before), and a
                     learned cls embedding (Feichtenhofer et al. 2022)
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mae_jax.models import tokenizers
from mae_jax.models.vit import param_init

KINDS: dict[str, type] = {}


def register(name: str):
  def wrap(cls):
    KINDS[name] = cls
    return cls
  return wrap


def get(name: str) -> type:
  if name not in KINDS:
    raise ValueError(f'model.pos_embed={name!r}: allowed {sorted(KINDS)}')
  return KINDS[name]


def check(name: str, grid: Sequence[int], width: int) -> None:
  """ValueError if `name` cannot embed `grid` at `width` (checked at config time)."""
  get(name).check(tuple(grid), width)


def build(name: str, grid: Sequence[int], width: int, *, rngs: nnx.Rngs
          ) -> nnx.Module:
  check(name, grid, width)
  return get(name)(tuple(grid), width, rngs=rngs)


class _Fixed(nnx.Module):
  """A constant table computed with numpy: part of the program, not a Param."""

  def __init__(self, grid: tuple[int, ...], width: int, *, rngs: nnx.Rngs):
    del rngs
    self.grid, self.width = grid, width

  @staticmethod
  def check(grid, width) -> None:
    del grid, width

  def table(self) -> np.ndarray:
    raise NotImplementedError

  def __call__(self) -> jax.Array:
    """[L, D]."""
    return jnp.asarray(self.table())

  def cls(self) -> jax.Array:
    return jnp.zeros((self.width,), jnp.float32)


@register('sincos')
class SinCos(_Fixed):

  @staticmethod
  def check(grid, width) -> None:
    if width % (2 * len(grid)):
      raise ValueError(f'width {width} must be divisible by {2 * len(grid)} '
                       f'for a {len(grid)}-D sin-cos position embedding')

  def table(self) -> np.ndarray:
    return tokenizers.sincos_pos_embed(self.grid, self.width)


@register('sincos_yx')
class SinCosYX(SinCos):

  def table(self) -> np.ndarray:
    return tokenizers.sincos_pos_embed(self.grid, self.width,
                                       last_axis_first=False)


@register('sincos_audiomae')
class SinCosAudioMAE(SinCos):

  def table(self) -> np.ndarray:
    # Built for the reversed grid, read in this grid's flat token order:
    # what the official checkpoints were trained with.
    return tokenizers.sincos_pos_embed(self.grid[::-1], self.width)


def sinusoid_table(length: int, width: int) -> np.ndarray:
  """[length, width]: channel j of position p is p / 10000^(2 floor(j/2) / width),
  sin on even j and cos on odd j (the 1-D table VideoMAE uses for the flat
  token index, encoder and decoder alike)."""
  pos = np.arange(length, dtype=np.float64)[:, None]
  j = np.arange(width)
  angles = pos / np.power(10000.0, 2 * (j // 2) / width)[None, :]
  return np.where(j % 2 == 0, np.sin(angles), np.cos(angles)).astype(np.float32)


@register('sincos_flat')
class SinCosFlat(_Fixed):

  def table(self) -> np.ndarray:
    return sinusoid_table(math.prod(self.grid), self.width)


class Trainable(nnx.Module):
  """A fixed kind's table as a parameter [L, D], with a cls embedding [1, D]
  (zero at first): MAE fine-tuning trains the position embedding that
  pretraining kept fixed (the official code loads the sin-cos table into
  timm's learnable `pos_embed`, cls row included)."""

  def __init__(self, table: np.ndarray):
    init = param_init(lambda key, shape, dtype=jnp.float32: jnp.asarray(
        table, dtype), (None, 'norm'))
    self.table = nnx.Param(init(None, table.shape))
    zeros = param_init(nnx.initializers.zeros_init(), (None, 'norm'))
    self.cls_embed = nnx.Param(zeros(None, (1, table.shape[1])))

  def __call__(self) -> jax.Array:
    return self.table[...]

  def cls(self) -> jax.Array:
    return self.cls_embed[...][0]


def trainable(name: str, grid: Sequence[int], width: int, *,
              rngs: nnx.Rngs) -> nnx.Module:
  """Kind `name` made trainable: a fixed table becomes a Trainable
  initialized to it; a learned kind is returned as it is (its own
  parameters)."""
  kind = get(name)
  check(name, grid, width)
  if not issubclass(kind, _Fixed):
    return kind(tuple(grid), width, rngs=rngs)
  return Trainable(kind(tuple(grid), width, rngs=None).table())


@register('learned_separable')
class LearnedSeparable(nnx.Module):
  """space [S, D] (S = the last two grid axes) + time [T, D] (T = the axes
  before; 1 for images), broadcast to [T * S, D]; cls [D]. Initialized
  N(0, 0.02) as MAE-ST does."""

  def __init__(self, grid: tuple[int, ...], width: int, *, rngs: nnx.Rngs):
    self.grid, self.width = grid, width
    init = param_init(nnx.initializers.normal(0.02), (None, 'norm'))
    space, time = math.prod(grid[-2:]), math.prod(grid[:-2])
    self.space = nnx.Param(init(rngs.params(), (space, width)))
    self.time = nnx.Param(init(rngs.params(), (time, width)))
    self.cls_embed = nnx.Param(init(rngs.params(), (1, width)))

  @staticmethod
  def check(grid, width) -> None:
    del width
    if len(grid) < 2:
      raise ValueError(f'learned_separable needs a grid of >= 2 axes, got {grid}')

  def __call__(self) -> jax.Array:
    t, s = self.time[...], self.space[...]
    return (t[:, None, :] + s[None, :, :]).reshape(-1, self.width)

  def cls(self) -> jax.Array:
    return self.cls_embed[...][0]
