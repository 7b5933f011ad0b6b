"""What a run trains, chosen by `config.task`: the model it builds and the
two halves of its loss, so the step, the loop, checkpoints, resume,
preemption and sharding are the same for pretraining and fine-tuning.

  prepare(model, batch, rng) -> inputs   outside the gradient: the mask to
                                         sample, the augmentations to apply
  loss(model, inputs, rng) -> terms      inside it: named scalar terms whose
                                         sum is minimized (logged loss/<name>)

`inputs` is a tuple of [B, ...] arrays, so gradient accumulation can cut it
into micro-batches. Adding a task = a function config -> Task plus
`@register('name', check=...)`, the check validating the task's own config
keys (config.validate calls it).

  pretrain  the masked autoencoder (models/mae.py, step.loss_terms)
  classify  fine-tuning: the encoder plus a linear head (models/classifier.py)
            on soft targets (label smoothing, mixup / cutmix) of augmented
            images (RandAugment, random erasing: augment.py), MAE appendix A.3;
            softmax cross-entropy, or for multi-label sets
            (config.data.multi_label) a sigmoid per class; optionally with
            tokens hidden from the encoder (classify.masking, AudioMAE)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import optax
from flax import nnx

from mae_jax import augment, masking
from mae_jax import config as config_lib
from mae_jax import step as step_lib
from mae_jax.models import classifier, mae, tokenizers
from mae_jax.models.vit import decode_variant


@dataclasses.dataclass(frozen=True)
class Task:
  build: Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]
  batch_keys: tuple[str, ...]  # what the step reads from a batch
  prepare: Callable[[Any, dict, jax.Array], tuple]
  loss: Callable[[Any, tuple, jax.Array], dict[str, jax.Array]]


TASKS: dict[str, Callable[[ml_collections.ConfigDict], Task]] = {}
CHECKS: dict[str, Callable[[ml_collections.ConfigDict], None]] = {}


def register(name: str, check=lambda config: None):
  def wrap(fn):
    TASKS[name], CHECKS[name] = fn, check
    return fn
  return wrap


def check(config: ml_collections.ConfigDict) -> None:
  """ValueError naming the key if the task's own config keys are wrong."""
  CHECKS[config.task](config)


def get(config: ml_collections.ConfigDict) -> Task:
  if config.task not in TASKS:
    raise ValueError(f'task={config.task!r}: allowed {sorted(TASKS)}')
  return TASKS[config.task](config)


def pretraining(target: str) -> Task:
  """The MAE objective with reconstruction target `target`."""

  def prepare(model, batch, rng):
    images = batch['image']
    return images, model.sample_mask(rng, images)

  def loss(model, inputs, rng):
    del rng  # the mask was drawn in prepare
    images, mask = inputs
    return step_lib.loss_terms(model, images, mask, target)

  return Task(mae.build, ('image',), prepare, loss)


@register('pretrain')
def pretrain(config: ml_collections.ConfigDict) -> Task:
  return pretraining(config.target)


def _check_classify(c: ml_collections.ConfigDict) -> None:
  f = c.classify

  def fail(key, value, allowed):
    raise ValueError(f'config.classify.{key}={value!r}: {allowed}')

  if f.num_classes < 1:
    fail('num_classes', f.num_classes,
         "task='classify' needs the number of classes of the head (>= 1)")
  if f.pool not in classifier.POOLS:
    fail('pool', f.pool, f'allowed {classifier.POOLS}')
  if f.pool == 'cls' and not c.model.cls_token:
    fail('pool', f.pool, 'needs model.cls_token=True; use mean')
  for key in ('drop_path', 'label_smoothing'):  # 1 would zero everything
    if not 0 <= f[key] < 1:
      fail(key, f[key], 'must be in [0, 1)')
  for key in ('mix_prob', 'mix_switch_prob', 'random_erase'):
    if not 0 <= f[key] <= 1:
      fail(key, f[key], 'must be in [0, 1]')
  if f.mixup < 0 or f.cutmix < 0:
    fail('mixup', (f.mixup, f.cutmix),
         'mixup and cutmix alphas must be >= 0 (0 = off)')
  if f.randaugment_ops < 0 or not 0 <= f.randaugment_magnitude <= 10:
    fail('randaugment_ops', (f.randaugment_ops, f.randaugment_magnitude),
         'ops must be >= 0 (0 = off) and magnitude in [0, 10]')
  if f.head_init_std < 0:
    fail('head_init_std', f.head_init_std, 'must be >= 0')
  if f.masking:
    strategy = masking.get(f.masking)
    if strategy.needs or strategy.decoded:
      fail('masking', f.masking, 'needs a strategy that is a function of the '
           'key alone, e.g. random, time, freq, time_freq, specaugment')
    grid = tokenizers.grid_shape(config_lib.spatial_shape(c),
                                 decode_variant(c.model.variant).patch)
    strategy.check(grid, masking.options(c.masking))
  if c.data.multi_label and f.num_classes != c.data.num_classes:
    fail('num_classes', f.num_classes, 'must equal config.data.num_classes='
         f'{c.data.num_classes} (the multi-label set\'s classes)')


@register('classify', check=_check_classify)
def classify(config: ml_collections.ConfigDict) -> Task:
  f = config.classify
  mean, std = tuple(config.data.mean), tuple(config.data.std)

  def prepare(model, batch, rng):
    """-> (augmented images [B, *S, C], soft targets [B, K][, ids_keep
    [B, K'] of classify.masking]). The order of
    timm's pipeline: per-example RandAugment and erasing, then the batch's
    mixup / cutmix."""
    images = batch['image']
    k_aug, k_erase, k_mix = jax.random.split(rng, 3)
    if f.randaugment_ops:
      images = augment.rand_augment(
          k_aug, images, mean=mean, std=std, num_ops=f.randaugment_ops,
          magnitude=f.randaugment_magnitude,
          magnitude_std=f.randaugment_magnitude_std)
    if f.random_erase:
      images = augment.random_erasing(k_erase, images, prob=f.random_erase)
    targets = augment.smooth_one_hot(batch['label'], f.num_classes,
                                     f.label_smoothing)
    if f.mixup or f.cutmix:
      images, targets = augment.mixup_cutmix(
          k_mix, images, targets, mixup_alpha=f.mixup, cutmix_alpha=f.cutmix,
          prob=f.mix_prob, switch_prob=f.mix_switch_prob)
    if not f.masking:
      return images, targets
    # A key of its own (fold_in), so the streams above stay as they were.
    mask = masking.get(f.masking).sample(
        jax.random.fold_in(rng, 3), images.shape[0], model.grid,
        masking.options(config.masking))
    return images, targets, mask.ids_keep

  def loss(model, inputs, rng):
    images, targets, *ids_keep = inputs
    logits = model(images, rng, *ids_keep)  # rng: drop path
    if config.data.multi_label:
      # Independent sigmoids, mean over examples and classes (AudioMAE's
      # BCEWithLogitsLoss on AudioSet).
      return {'classification':
              optax.sigmoid_binary_cross_entropy(logits, targets).mean()}
    return {'classification':
            optax.softmax_cross_entropy(logits, targets).mean()}

  return Task(classifier.build, ('image', 'label'), prepare, loss)
