"""Optimizer recipe: AdamW with MAE's learning-rate rule and schedule.

MAE (He et al. 2022, Table 8): AdamW (b1=0.9, b2=0.95), weight decay 0.05,
lr = base_lr * batch_size / 256, linear warmup then half-cycle cosine decay.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mae_jax.errors import ConfigError


def steps_per_epoch(config: ml_collections.ConfigDict, num_examples: int) -> int:
  """Full batches per pass over the training split (the last partial is
  dropped). With clips, a pass reads every video once, and each video gives
  data.clips_per_video of the batch's clips (repeated sampling, MAE-ST)."""
  per_video = config.data.clips_per_video if config.model.frames else 1
  return max(1, num_examples * per_video // config.batch_size)


def total_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
  if config.total_steps > 0:
    return int(config.total_steps)
  return max(1, math.ceil(config.total_epochs * steps_per_epoch(config, num_examples)))


def warmup_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
  o = config.optim
  if o.warmup_steps > 0:
    return int(o.warmup_steps)
  return int(round(o.warmup_epochs * steps_per_epoch(config, num_examples)))


def peak_lr(config: ml_collections.ConfigDict) -> float:
  return config.optim.base_lr * config.batch_size / config.optim.lr_batch_base


def schedule(config: ml_collections.ConfigDict, num_examples: int) -> optax.Schedule:
  """Step -> learning rate: 0 -> peak over the warmup, cosine to min_lr at the end."""
  total = total_steps(config, num_examples)
  warmup = warmup_steps(config, num_examples)
  if warmup >= total:
    raise ConfigError(f'config.optim.warmup: {warmup} warmup steps must be fewer '
                     f'than the {total} training steps')
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr(config), warmup_steps=warmup,
      decay_steps=total, end_value=config.optim.min_lr)


def decay_mask(params):
  """True for weight matrices ('kernel'); norms, biases and the cls/mask tokens
  are not decayed."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def optimizer(config: ml_collections.ConfigDict, lr: optax.Schedule
              ) -> optax.GradientTransformation:
  o = config.optim
  adamw = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=1e-8,
                      mu_dtype=jnp.dtype(o.mu_dtype) if o.mu_dtype else None,
                      weight_decay=o.weight_decay, mask=decay_mask)
  # The clipping stage is always in the chain (the identity when off): both
  # keep no state, so the optimizer state has one structure for every
  # clip_norm and a diverged run can resume with clipping turned on.
  clip = (optax.clip_by_global_norm(o.clip_norm) if o.clip_norm > 0
          else optax.identity())
  return optax.chain(clip, adamw)
