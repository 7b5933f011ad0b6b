"""Frozen encoder features of a whole split, for probes and k-NN: pooled
([N, D]) or, for the attentive probe, every patch token ([N, L, D])."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from mae_jax import config as config_lib
from mae_jax import data, sharding

POOLS = ('mean', 'cls')
TOKENS = 'tokens'  # pool= for all patch tokens, unpooled


def pooled_features(graphdef, params, images: jax.Array, pool: str) -> jax.Array:
  """images: [B, *S, C] -> [B, D]: the encoder on all patches (no masking),
  then the mean of the patch tokens or the cls token; pool='tokens' ->
  [B, L, D]: the patch tokens themselves (the cls token left out)."""
  model = nnx.merge(graphdef, params)
  tokens = model.encode(model.patchify(images))  # [B, (1+)L, D]
  has_cls = model.cls_token is not None
  if pool == TOKENS:
    return tokens[:, int(has_cls):].astype(jnp.float32)
  if pool == 'cls':
    if not has_cls:
      raise ValueError('pool="cls" needs model.cls_token=True')
    return tokens[:, 0].astype(jnp.float32)
  return tokens[:, int(has_cls):].mean(axis=1).astype(jnp.float32)


class FeatureExtractor:
  """Encodes a split batch by batch over the mesh; every process gets all
  features (needed by the probes, which are small)."""

  def __init__(self, config: ml_collections.ConfigDict, graphdef,
               mesh: jax.sharding.Mesh):
    self.config, self.mesh = config, mesh
    self._image_sharding = sharding.batch_sharding(
        mesh, config.sharding.rules, 1 + len(config_lib.input_shape(config)))
    self._encode = jax.jit(functools.partial(pooled_features, graphdef),
                           static_argnames='pool')
    self._cache: dict = {}

  def __call__(self, params, split: str, *, pool: str, max_examples: int,
               tag, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """-> (features float32 [N, D] ([N, L, D] for pool='tokens'), labels int32
    [N]). Results are cached under `tag` (e.g. 'baseline' or ('trained',
    step)); a new trained tag evicts the previous one. cache=False neither
    reads nor fills the cache (for token features, which are L times larger)."""
    key = (tag, split, pool, max_examples)
    if not cache:
      return self._extract(params, split, pool, max_examples)
    if key not in self._cache:
      if tag != 'baseline':
        self._cache = {k: v for k, v in self._cache.items() if k[0] == 'baseline'}
      self._cache[key] = self._extract(params, split, pool, max_examples)
    return self._cache[key]

  def _extract(self, params, split, pool, max_examples):
    return self.apply(functools.partial(self._encode, pool=pool), params,
                      split, max_examples)

  def apply(self, fn, params, split: str, max_examples: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """fn(params, images [B, *S, C]) -> [B, ...] on every example of
    `split` (the evaluation view) -> (outputs [N, ...], labels int32 [N] or
    multi-hot float32 [N, K]), gathered on every process."""
    c = self.config
    pc, pi = jax.process_count(), jax.process_index()
    outs, labels = [], []
    for batch in data.eval_batches(
        c.data, split, image_size=config_lib.image_size(c),
        channels=c.model.channels, batch_size=c.eval_batch_size // pc,
        process_index=pi, process_count=pc, max_examples=max_examples,
        frames=c.model.frames):
      images = sharding.to_global(batch['image'], self._image_sharding)
      out = fn(params, images)
      label, valid = batch['label'], batch['valid']
      if pc > 1:
        out, label, valid = (multihost_utils.process_allgather(x, tiled=True)
                             for x in (out, label, valid))
      valid = np.asarray(valid, bool)
      outs.append(np.asarray(out)[valid])
      labels.append(np.asarray(label)[valid])
    if not outs:
      raise ValueError(f'data split {split!r} of config.data.source='
                       f'{c.data.source!r} has no examples to evaluate on')
    return np.concatenate(outs), np.concatenate(labels)
