"""Reconstruction targets and the masked loss.

A target maps the input's patch tokens [B, L, P] to what the decoder must
predict [B, L, P]; its `to_pixels` maps a prediction back to pixels (for
pictures). Adding one = a function plus `@register('name')`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

TargetFn = Callable[[jax.Array], jax.Array]
TARGETS: dict[str, TargetFn] = {}
# (prediction [B, L, P], input patches [B, L, P]) -> pixels [B, L, P]
TO_PIXELS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {}


def register(name: str, to_pixels=lambda pred, patches: pred):
  def wrap(fn: TargetFn) -> TargetFn:
    TARGETS[name], TO_PIXELS[name] = fn, to_pixels
    return fn
  return wrap


def get(name: str) -> TargetFn:
  if name not in TARGETS:
    raise ValueError(f'target={name!r}: allowed {sorted(TARGETS)}')
  return TARGETS[name]


def to_pixels(name: str, pred: jax.Array, patches: jax.Array) -> jax.Array:
  get(name)
  return TO_PIXELS[name](pred, patches)


@register('pixels')
def pixels(patches: jax.Array) -> jax.Array:
  return patches


_EPS = 1e-6


def _patch_stats(patches: jax.Array) -> tuple[jax.Array, jax.Array]:
  return (patches.mean(axis=-1, keepdims=True),
          jnp.sqrt(patches.var(axis=-1, keepdims=True) + _EPS))


def _norm_pixels_to_pixels(pred: jax.Array, patches: jax.Array) -> jax.Array:
  # Pictures use the true patch statistics (as MAE's visualization does).
  mean, std = _patch_stats(patches)
  return pred * std + mean


@register('norm_pixels', to_pixels=_norm_pixels_to_pixels)
def norm_pixels(patches: jax.Array) -> jax.Array:
  """Each patch normalized by its own mean and variance (MAE's norm_pix_loss).

  As in the reference code: biased variance, eps 1e-6 inside the sqrt.
  """
  mean, std = _patch_stats(patches)
  return (patches - mean) / std


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over masked tokens of the per-token mean squared error.

  pred, target: [B, L, P]; mask: [B, L], 1 = masked. Visible tokens add nothing.
  """
  per_token = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  return jnp.sum(per_token * mask) / jnp.sum(mask)
