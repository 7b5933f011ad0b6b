"""Masking strategies: which tokens the encoder sees, pure functions of a key.

A strategy is `sample(key, batch_size, grid, opts, **inputs) -> Mask`, with
`kept(grid, opts)`: its visible-token count, a Python int, so every strategy
compiles to fixed shapes. `grid` is the token grid ((h, w) for images,
(t, h, w) for clips) and `opts` the config's masking options. A strategy that
needs more than a key declares it in `needs`, and the model passes it in:
  'patches'  the input's tokens [B, L, P] (motion-guided masking),
  'sampler'  logits [B, L] of the model's token sampler (adaptive masking;
             the model owns the sampler's parameters, created only then).
A strategy may also add named loss terms (`loss`, e.g. the sampler's) and
have the decoder predict a subset of the tokens (`decoded`: its size).
Adding one = a function plus `@register('name', kept=...)`.

  random    uniform over all tokens (MAE; on clips: MAE-ST's space-time masking)
  adaptive  visible tokens drawn from a learned distribution (AdaMAE)
  tube, frame, dual, motion: the clip strategies, in video_masking.py
  time, freq, time_freq, specaugment: the spectrogram strategies, in
            audio_masking.py
"""

from __future__ import annotations

import dataclasses
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
  decode_ids: None, or [B, M] the tokens the decoder adds mask tokens for
    and predicts (dual masking); None = all masked tokens, predicted in
    place over the whole grid.
  """
  ids_keep: jax.Array
  ids_restore: jax.Array
  mask: jax.Array
  decode_ids: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Options:
  """config.masking as static values (jit-hashable)."""
  ratio: float
  decoder_ratio: float = 0.5
  motion_radius: int = 1
  sampler_weight: float = 1e-4
  time_ratio: float = 0.6
  freq_ratio: float = 0.5


def options(masking_cfg) -> Options:
  return Options(**{f.name: masking_cfg[f.name]
                    for f in dataclasses.fields(Options)})


def _no_check(grid, opts) -> None:
  del grid, opts


@dataclasses.dataclass(frozen=True)
class Strategy:
  name: str
  sample: Callable[..., Mask]
  kept: Callable[[Sequence[int], 'Options'], int]  # (grid, opts) -> K
  needs: tuple[str, ...] = ()
  check: Callable[[Sequence[int], Options], None] = _no_check
  # (model, patches [B, L, P], mask, per-token error [B, M], weight [B, M],
  #  opts) -> {name: scalar}, added to the reconstruction loss.
  loss: Callable[..., dict] | None = None
  # (grid, opts) -> M, the tokens the decoder predicts (Mask.decode_ids);
  # None: all L of them.
  decoded: Callable[[Sequence[int], Options], int] | None = None

  def num_decoded(self, grid: Sequence[int], opts: Options) -> int:
    return (math.prod(grid) if self.decoded is None
            else self.decoded(tuple(grid), opts))


STRATEGIES: dict[str, Strategy] = {}


def register(name: str, *, kept, needs=(), check=_no_check, loss=None,
             decoded=None):
  def wrap(fn):
    STRATEGIES[name] = Strategy(name, fn, kept, tuple(needs), check, loss,
                                decoded)
    return fn
  return wrap


def get(name: str) -> Strategy:
  if name not in STRATEGIES:
    raise ValueError(f'masking.name={name!r}: allowed {sorted(STRATEGIES)}')
  return STRATEGIES[name]


def num_kept(num_tokens: int, mask_ratio: float) -> int:
  """Visible tokens per example, rounded down as in MAE's reference code."""
  return int(num_tokens * (1 - mask_ratio))


def from_shuffle(ids_shuffle: jax.Array, keep: int) -> Mask:
  """Builds a Mask from a per-example permutation whose first `keep` are kept."""
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  mask = (ids_restore >= keep).astype(jnp.float32)
  return Mask(ids_keep=ids_shuffle[:, :keep], ids_restore=ids_restore, mask=mask)


def from_scores(scores: jax.Array, keep: int) -> Mask:
  """scores [B, L]: the `keep` lowest are visible (ties: lower id first)."""
  return from_shuffle(jnp.argsort(scores, axis=1, stable=True).astype(jnp.int32),
                      keep)


def _random_kept(grid, opts: Options) -> int:
  return num_kept(math.prod(grid), opts.ratio)


@register('random', kept=_random_kept)
def random_masking(key, batch_size, grid, opts) -> Mask:
  """Uniform random masking without replacement (He et al. 2022, Sec. 3).

  Each example sorts i.i.d. uniform noise; the tokens with the lowest noise
  are kept, so every subset of size K is equally likely. On a clip's
  (t, h, w) grid this is MAE-ST's space-time masking.
  """
  length = math.prod(grid)
  noise = jax.random.uniform(key, (batch_size, length))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  return from_shuffle(ids_shuffle, num_kept(length, opts.ratio))


# ------------------------------------------------------------ adaptive masking


def _sampler_loss(model, patches, mask, error, weight, opts) -> dict:
  """AdaMAE's sampling loss: -mean over masked tokens of log p(token) x its
  reconstruction error (no gradient into the error), times sampler_weight
  (1e-4 in the paper). Raising p where the error is high makes the sampler
  show the encoder the tokens that are hardest to reconstruct."""
  del weight
  log_p = jax.nn.log_softmax(model.sampler_logits(patches), axis=-1)  # [B, L]
  err = jax.lax.stop_gradient(error)  # [B, L]: decode_ids is None here
  per_example = (jnp.sum(log_p * err * mask.mask, axis=1)
                 / jnp.sum(mask.mask, axis=1))
  return {'sampler': -opts.sampler_weight * jnp.mean(per_example)}


@register('adaptive', kept=_random_kept, needs=('sampler',),
          loss=_sampler_loss)
def adaptive_masking(key, batch_size, grid, opts, *, logits) -> Mask:
  """AdaMAE (Bandara et al. 2023): visible tokens are K draws without
  replacement from the sampler network's categorical distribution
  softmax(logits), by the Gumbel top-k trick (the K largest of
  logits + Gumbel noise are such a draw). logits: [B, L]."""
  length = math.prod(grid)
  gumbel = jax.random.gumbel(key, (batch_size, length))
  scores = -(jax.lax.stop_gradient(logits).astype(jnp.float32) + gumbel)
  return from_scores(scores, num_kept(length, opts.ratio))


# The clip strategies register themselves (they import this module's names).
from mae_jax import video_masking  # pylint: disable=wrong-import-position,unused-import
from mae_jax import audio_masking  # pylint: disable=wrong-import-position,unused-import
