"""Reconstruction targets and the masked loss.

A target maps the input's patch tokens [B, L, P] (values in (patch...,
channel) order, C channels) to what the decoder must predict [B, L, P]; its
`to_pixels` maps a prediction back to pixels (for pictures). Adding one = a
function `fn(patches, channels)` plus `@register('name')`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

TargetFn = Callable[[jax.Array, int], jax.Array]
TARGETS: dict[str, TargetFn] = {}
# (prediction [B, L, P], input patches [B, L, P], channels) -> pixels [B, L, P]
TO_PIXELS: dict[str, Callable[[jax.Array, jax.Array, int], jax.Array]] = {}


def register(name: str, to_pixels=lambda pred, patches, channels: pred):
  def wrap(fn: TargetFn) -> TargetFn:
    TARGETS[name], TO_PIXELS[name] = fn, to_pixels
    return fn
  return wrap


def get(name: str) -> TargetFn:
  if name not in TARGETS:
    raise ValueError(f'target={name!r}: allowed {sorted(TARGETS)}')
  return TARGETS[name]


def to_pixels(name: str, pred: jax.Array, patches: jax.Array,
              channels: int = 1) -> jax.Array:
  get(name)
  return TO_PIXELS[name](pred, patches, channels)


@register('pixels')
def pixels(patches: jax.Array, channels: int = 1) -> jax.Array:
  del channels
  return patches


_EPS = 1e-6


def _patch_stats(patches: jax.Array) -> tuple[jax.Array, jax.Array]:
  # Unbiased variance: the official norm_pix_loss calls torch's
  # `target.var(dim=-1)`, whose default is the unbiased estimate.
  return (patches.mean(axis=-1, keepdims=True),
          jnp.sqrt(patches.var(axis=-1, keepdims=True, ddof=1) + _EPS))


def _norm_pixels_to_pixels(pred, patches, channels) -> jax.Array:
  # Pictures use the true patch statistics (as MAE's visualization does).
  del channels
  mean, std = _patch_stats(patches)
  return pred * std + mean


@register('norm_pixels', to_pixels=_norm_pixels_to_pixels)
def norm_pixels(patches: jax.Array, channels: int = 1) -> jax.Array:
  """Each patch normalized by its own mean and variance (MAE's norm_pix_loss).

  Unbiased variance, eps 1e-6 inside the sqrt, as the official code computes
  it (torch's var defaults to unbiased).
  """
  del channels
  mean, std = _patch_stats(patches)
  return (patches - mean) / std


def _channel_stats(patches: jax.Array, channels: int):
  """[B, L, P] -> per token and channel: values [B, L, P/C, C], mean and
  std (unbiased, eps 1e-6 added outside the sqrt) [B, L, 1, C]."""
  v = patches.reshape(*patches.shape[:-1], -1, channels)
  mean = v.mean(axis=-2, keepdims=True)
  std = jnp.sqrt(v.var(axis=-2, keepdims=True, ddof=1)) + _EPS
  return v, mean, std


def _norm_channel_to_pixels(pred, patches, channels) -> jax.Array:
  _, mean, std = _channel_stats(patches, channels)
  p = pred.reshape(*pred.shape[:-1], -1, channels)
  return (p * std + mean).reshape(pred.shape)


@register('norm_pixels_channel', to_pixels=_norm_channel_to_pixels)
def norm_pixels_channel(patches: jax.Array, channels: int = 1) -> jax.Array:
  """VideoMAE's normalized target (Tong et al. 2022, official code): each
  tubelet normalized per channel by its own mean and unbiased std, eps 1e-6
  added to the std.

  VideoMAE computes it on the un-normalized [0, 1] pixels; on our normalized
  input the result is the same up to that eps (x / s changes eps to eps / s
  for the per-channel scale s of data.std).
  """
  v, mean, std = _channel_stats(patches, channels)
  return ((v - mean) / std).reshape(patches.shape)


def token_error(pred: jax.Array, target: jax.Array, mask
                ) -> tuple[jax.Array, jax.Array]:
  """Per-token squared error of the tokens the decoder predicted, and their
  loss weights.

  pred: [B, M, P], the tokens of mask.decode_ids (M = L over the whole grid
  when decode_ids is None); target: [B, L, P]; mask: masking.Mask.
  Returns (error [B, M], weight [B, M]): weight 1 on the tokens the encoder
  did not see, 0 on the visible ones (dual masking's decoder may predict
  some of those; as in VideoMAE V2 they add nothing to the loss).
  """
  weight = mask.mask
  if mask.decode_ids is not None:
    target = jnp.take_along_axis(target, mask.decode_ids[..., None], axis=1)
    weight = jnp.take_along_axis(weight, mask.decode_ids, axis=1)
  error = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  return error, weight


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over masked tokens of the per-token mean squared error.

  pred, target: [B, L, P]; mask: [B, L], 1 = masked. Visible tokens add nothing.
  """
  per_token = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  return jnp.sum(per_token * mask) / jnp.sum(mask)
