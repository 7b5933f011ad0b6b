"""AudioMAE's local-attention decoder (Huang et al., "Masked Autoencoders
that Listen", 2022, Sec. 3.3): Swin-style blocks that attend within windows
of the token grid, every second block over windows cyclically shifted.

The block is the official one (facebookresearch/AudioMAE,
timm_patch/swin_transformer.py: timm's Swin V2 "CR" block), piece by piece:
  - scaled cosine attention: q.k / max(|q| |k|, 1e-6), divided by a learned
    per-head temperature tau (clamped to >= 0.01), plus
  - a continuous relative position bias [H, A, A]: a meta MLP
    (2 -> 384 -> H, ReLU) of the log-spaced relative coordinates
    sign(d) log(1 + |d|) of every token pair of a window,
  - post-norm residuals: x + norm1(attn(x)), then x + norm2(mlp(x)),
  - shifted windows: the grid rolled by -shift before the partition and
    back after it, with -100 added to the logits of token pairs that the
    roll brought together from different regions of the grid.
A window larger than the grid is clipped to it, and its shift is 0 along
that axis (as the official block's _calc_window_shift).

The official meta MLP has dropout 0.1 (both layers) in training; this one
has none (its eval-mode output, which the checkpoints are compared on).

Shapes: B batch, G = (gh, gw) the token grid, L = gh * gw tokens (row-major),
E width, H heads, K head dim, (ah, aw) the window, A = ah * aw tokens per
window, N = (gh / ah) (gw / aw) windows per example.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mae_jax.models import vit
from mae_jax.models.vit import dense, layer_norm, param_init
from mae_jax.sharding import constrain

META_HIDDEN = 384  # the official meta MLP's hidden width (meta_hidden_dim)
MASK_VALUE = -100.0  # added to logits across shifted regions (official)
TAU_MIN = 0.01  # tau is clamped to this before dividing the logits
NORM_MIN = 1e-6  # |q| |k| is clamped to this (cosine of near-zero vectors)


def window_and_shift(grid: Sequence[int], window: Sequence[int],
                     shift: Sequence[int]
                     ) -> tuple[tuple[int, int], tuple[int, int]]:
  """The window and shift a block uses on `grid`: a window at least as
  large as the grid along an axis becomes the grid's size there, with no
  shift (a single window along that axis has nothing to shift across).
  ValueError naming model.decoder_window / model.decoder_shift otherwise."""
  grid, window, shift = tuple(grid), tuple(window), tuple(shift)
  ints = lambda v: len(v) == 2 and all(
      isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in v)
  if len(grid) != 2:
    raise ValueError(f'local attention needs a 2-D token grid, got {grid}')
  if not ints(window) or min(window) < 1:
    raise ValueError(f'model.decoder_window={window}: expected 2 positive '
                     'ints (tokens along each grid axis)')
  if not ints(shift) or min(shift) < 0:
    raise ValueError(f'model.decoder_shift={shift}: expected 2 ints >= 0')
  win = tuple(min(g, w) for g, w in zip(grid, window))
  sh = tuple(0 if g <= w else s for g, w, s in zip(grid, window, shift))
  if any(g % w for g, w in zip(grid, win)):
    raise ValueError(f'model.decoder_window={window} does not tile the '
                     f'{grid[0]}x{grid[1]} token grid (clipped to it: {win})')
  if any(s >= w for s, w in zip(sh, win)):
    raise ValueError(f'model.decoder_shift={shift}: each shift must be '
                     f'smaller than the window {win}')
  return win, sh


def window_partition(x, window: Sequence[int]):
  """[B, gh, gw, E] -> [B, N, A, E]: windows row-major over the grid, tokens
  row-major within a window (the official order). numpy or jax arrays."""
  b, gh, gw, e = x.shape
  ah, aw = window
  x = x.reshape(b, gh // ah, ah, gw // aw, aw, e).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (gh // ah) * (gw // aw), ah * aw, e)


def window_reverse(windows, window: Sequence[int], grid: Sequence[int]):
  """[B, N, A, E] -> [B, gh, gw, E], the inverse of window_partition."""
  b, e = windows.shape[0], windows.shape[-1]
  (ah, aw), (gh, gw) = window, grid
  x = windows.reshape(b, gh // ah, gw // aw, ah, aw, e).transpose(
      0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh, gw, e)


def relative_coordinates(window: Sequence[int]) -> np.ndarray:
  """[A, A, 2]: for window tokens i, j the offset coord(i) - coord(j),
  log-spaced (sign(d) log(1 + |d|)): the meta MLP's input."""
  ah, aw = window
  coords = np.stack(np.meshgrid(np.arange(ah), np.arange(aw), indexing='ij'),
                    axis=-1).reshape(-1, 2).astype(np.float64)  # [A, 2]
  d = coords[:, None, :] - coords[None, :, :]
  return (np.sign(d) * np.log1p(np.abs(d))).astype(np.float32)


def shift_mask(grid: Sequence[int], window: Sequence[int],
               shift: Sequence[int]) -> np.ndarray:
  """[N, A, A] float32: MASK_VALUE where two tokens of a window of the
  rolled grid come from different regions of the unrolled one, else 0.

  Rolling by -s along an axis of n tokens brings the first s tokens to the
  end: in the last window they sit beside tokens that were n - s apart.
  Along each shifted axis the rolled positions fall into three regions,
  [0, n - a), [n - a, n - s), [n - s, n) (a the window); a token may attend
  only within its own pair of regions. An axis without shift is one region.
  """
  def regions(n, a, s):
    idx = np.arange(n)
    if s == 0:
      return np.zeros(n, np.int64)
    return np.where(idx < n - a, 0, np.where(idx < n - s, 1, 2))
  (gh, gw), (ah, aw), (sh, sw) = grid, window, shift
  label = regions(gh, ah, sh)[:, None] * 3 + regions(gw, aw, sw)[None, :]
  label = window_partition(label[None, :, :, None], window)[0, ..., 0]
  return np.where(label[:, :, None] != label[:, None, :], MASK_VALUE,
                  0.0).astype(np.float32)


class MetaMlp(nnx.Module):
  """The position-bias network: [.., 2] offsets -> [.., H], one ReLU layer
  of META_HIDDEN. Small and replicated (no sharded axes)."""

  def __init__(self, num_heads: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = dense(2, META_HIDDEN, (None, None), dtype=dtype, rngs=rngs)
    self.fc2 = dense(META_HIDDEN, num_heads, (None, None), dtype=dtype,
                     rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.relu(self.fc1(x)))


class WindowAttention(vit.Attention):
  """Scaled cosine attention within windows, with the meta-MLP position
  bias. x: [B, N, A, E] -> [B, N, A, E].

  The q/k/v and output projections are vit.Attention's (the same
  parameters and layout: a checkpoint's qkv / proj convert the same way).
  """

  def __init__(self, width: int, num_heads: int, window: Sequence[int], *,
               dtype, rngs: nnx.Rngs):
    super().__init__(width, num_heads, dtype=dtype, implementation=None,
                     rngs=rngs)
    self.window = tuple(window)
    self.num_heads = num_heads
    self.tau = nnx.Param(param_init(nnx.initializers.ones_init(), ('norm',))(
        rngs.params(), (num_heads,)))
    # float32 whatever the compute dtype: it is tiny (A^2 x 384 per step),
    # and its bias adds to float32 logits.
    self.meta_mlp = MetaMlp(num_heads, dtype=jnp.float32, rngs=rngs)

  def position_bias(self) -> jax.Array:
    """[H, A, A]: the bias of query i and key j of any window."""
    bias = self.meta_mlp(jnp.asarray(relative_coordinates(self.window)))
    return jnp.transpose(bias, (2, 0, 1)).astype(jnp.float32)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> jax.Array:
    """mask: None, or [N, A, A] added to the logits (shift_mask)."""
    b, n, a, e = x.shape
    qkv = self.qkv(x.reshape(b, n * a, e)).reshape(b, n, a, 3,
                                                   self.num_heads, -1)
    # The logits in float32: dividing by tau (down to 0.01) magnifies the
    # cosine's rounding up to 100x, too much for bfloat16.
    q, k, v = (qkv[:, :, :, i].astype(jnp.float32) for i in range(3))
    dots = jnp.einsum('bnqhk,bnshk->bnhqs', q, k)
    norms = jnp.einsum('bnqh,bnsh->bnhqs', jnp.linalg.norm(q, axis=-1),
                       jnp.linalg.norm(k, axis=-1))
    logits = dots / jnp.maximum(norms, NORM_MIN)
    tau = jnp.maximum(self.tau[...].astype(jnp.float32), TAU_MIN)
    logits = logits / tau[:, None, None] + self.position_bias()
    if mask is not None:
      logits = logits + mask[None, :, None]
    weights = jax.nn.softmax(logits, axis=-1)
    o = jnp.einsum('bnhqs,bnshk->bnqhk', weights, v).astype(x.dtype)
    return self.out(o.reshape(b, n * a, self.num_heads, -1)).reshape(
        b, n, a, e)


class LocalBlock(nnx.Module):
  """A post-norm block with (shifted) window attention over a token grid.
  x: [B, L, E] (tokens row-major over `grid`) -> [B, L, E]."""

  def __init__(self, width: int, mlp_dim: int, num_heads: int, *,
               grid: Sequence[int], window: Sequence[int],
               shift: Sequence[int], dtype, rngs: nnx.Rngs):
    self.grid = tuple(grid)
    self.window, self.shift = window_and_shift(grid, window, shift)
    self.norm1 = layer_norm(width, dtype=dtype, rngs=rngs)
    self.attn = WindowAttention(width, num_heads, self.window, dtype=dtype,
                                rngs=rngs)
    self.norm2 = layer_norm(width, dtype=dtype, rngs=rngs)
    self.mlp = vit.Mlp(width, mlp_dim, dtype=dtype, rngs=rngs)

  def attend(self, x: jax.Array, shifted: bool | jax.Array) -> jax.Array:
    """Window attention of x [B, L, E]; shifted: a Python or traced bool
    (inside a scan, every second block's), with this block's shift."""
    b, length, e = x.shape
    x = x.reshape(b, *self.grid, e)
    shift = self.shift if shifted is not False else (0, 0)
    if any(shift):
      rolled = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
      x = jnp.where(shifted, rolled, x)
      mask = jnp.asarray(shift_mask(self.grid, self.window, shift))
      mask = jnp.where(shifted, mask, 0.0)
    else:
      mask = None
    y = window_reverse(self.attn(window_partition(x, self.window), mask),
                       self.window, self.grid)
    if any(shift):
      y = jnp.where(shifted, jnp.roll(y, shift, axis=(1, 2)), y)
    return y.reshape(b, length, e)

  def __call__(self, x: jax.Array, shifted: bool | jax.Array = False
               ) -> jax.Array:
    x = x + self.norm1(self.attend(x, shifted))
    x = x + self.norm2(self.mlp(x))
    return constrain(x, ('batch', 'length', 'act_embed'))


class LocalBlockStack(vit.ScannedStack):
  """`depth` LocalBlocks, parameters stacked on a leading 'layers' axis
  (the layout of vit.BlockStack), applied with lax.scan; blocks 1, 3, 5, ...
  use the shifted windows. x: [B, L, E] -> [B, L, E]."""

  def __init__(self, depth: int, width: int, mlp_dim: int, num_heads: int,
               *, grid: Sequence[int], window: Sequence[int],
               shift: Sequence[int], dtype, remat: str = 'none',
               remat_names: Sequence[str] = (), scan_unroll: int = 1,
               rngs: nnx.Rngs):
    self.init_stack(
        depth, lambda r: LocalBlock(width, mlp_dim, num_heads, grid=grid,
                                    window=window, shift=shift, dtype=dtype,
                                    rngs=r),
        remat=remat, remat_names=remat_names, scan_unroll=scan_unroll,
        rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    # One scanned body for all blocks: the shift is data (a bool per block),
    # so the even and odd blocks share one compiled block.
    shifted = jnp.arange(self.depth) % 2 == 1
    return self.scan(x, shifted, lambda block, x, s: block(x, s))
