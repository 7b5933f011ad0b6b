"""Optimizer recipe: AdamW with MAE's learning-rate rule and schedule.

MAE (He et al. 2022, Table 8): AdamW (b1=0.9, b2=0.95), weight decay 0.05,
lr = base_lr * batch_size / 256, linear warmup then half-cycle cosine decay.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

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


# Parameters below the blocks (layer 0 of BEiT's / MAE's `param_groups_lrd`);
# everything not in the encoder's blocks or here (final norms, the head) is
# above them.
_EMBEDDINGS = ('patch_embed', 'pos_embed', 'cls_token')


def layer_multipliers(params, layer_decay: float):
  """A tree like `params` of lr multipliers for layer-wise lr decay (BEiT,
  Bao et al. 2022; MAE fine-tuning): with n = encoder depth + 1, layer 0 =
  the embeddings, layer i + 1 = block i, layer n = the rest, and multiplier
  layer_decay^(n - layer). The blocks are stacked, so their multiplier is a
  [depth, 1, ...] array broadcast over each stacked parameter."""
  layers = params['encoder']['layers']
  depth = jax.tree.leaves(layers)[0].shape[0]
  n = depth + 1
  blocks = layer_decay ** (n - jnp.arange(1, depth + 1, dtype=jnp.float32))

  def multiplier(path, leaf):
    keys = [getattr(k, 'key', None) for k in path]
    if keys[:2] == ['encoder', 'layers']:
      return blocks.reshape((depth,) + (1,) * (leaf.ndim - 1))
    if keys[0] in _EMBEDDINGS:
      return jnp.float32(layer_decay ** n)
    return jnp.float32(1.0)

  return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_by_layer(layer_decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its layer_multipliers(). After AdamW (whose
  update already holds -lr x (adam + weight decay)), this is PyTorch's
  per-group lr scale exactly. Stateless."""

  def update(updates, state, params=None):
    del params
    mult = layer_multipliers(updates, layer_decay)
    return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates,
                        mult), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


class EmaState(NamedTuple):
  ema: Any  # like the params


def ema_of_params(decay: float) -> optax.GradientTransformation:
  """Keeps an exponential moving average of the parameters *after* each
  update (timm's ModelEma: ema <- decay * ema + (1 - decay) * params) in the
  optimizer state, so it is checkpointed, resumed and sharded like the
  params. Passes the updates through; put it last in the chain."""

  def init(params):
    return EmaState(jax.tree.map(jnp.array, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('ema_of_params needs the params')
    new = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema,
                       new)
    return updates, EmaState(ema)

  return optax.GradientTransformation(init, update)


def ema_params(config: ml_collections.ConfigDict, opt_state) -> Any | None:
  """The EMA of the parameters in an optimizer state made by optimizer()
  (None when config.optim.ema_decay is 0)."""
  if not config.optim.ema_decay:
    return None
  return opt_state[-1].ema


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
  # Optional stages are in the chain only when on: older states keep loading.
  stages = [clip, adamw]
  if o.layer_decay < 1.0:
    stages.append(scale_by_layer(o.layer_decay))
  if o.ema_decay:
    stages.append(ema_of_params(o.ema_decay))
  return optax.chain(*stages)
