"""The fine-tuning model: the pretrained encoder plus a linear head (MAE,
He et al. 2022, appendix A.3; the official models_vit.py).

Pooling: 'mean' averages the patch tokens and normalizes them with a fresh
LayerNorm (`fc_norm`; the encoder's final norm is dropped, as the official
global_pool does); 'cls' takes the cls token after the encoder's final norm.
The head starts near zero (N(0, 2e-5) weights, as the official code), the
position embedding becomes a parameter (see position.trainable), and drop
path regularizes the blocks.

Shapes: B batch, L patches, P values per patch, D width, K classes.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mae_jax import config as config_lib
from mae_jax.models.encoder import Encoder
from mae_jax.models.vit import decode_variant, layer_norm, param_init

POOLS = ('mean', 'cls')


class Classifier(Encoder):
  """x: [B, *S, C] -> logits [B, K]."""

  def __init__(self, *, input_size: Sequence[int], channels: int,
               variant: str, num_classes: int, pool: str = 'mean',
               pos_embed: str = 'sincos', trainable_pos_embed: bool = True,
               cls_token: bool = True, drop_path: float = 0.0,
               head_init_std: float = 2e-5, dtype=jnp.float32,
               attention: str | None = None, remat: str = 'none',
               remat_names: Sequence[str] = (), scan_unroll: int = 1,
               rngs: nnx.Rngs):
    if pool not in POOLS:
      raise ValueError(f'classify.pool={pool!r}: allowed {POOLS}')
    if pool == 'cls' and not cls_token:
      raise ValueError("classify.pool='cls' needs model.cls_token=True")
    size = decode_variant(variant)
    stack = dict(dtype=dtype, attention=attention, remat=remat,
                 remat_names=remat_names, scan_unroll=scan_unroll)
    self.init_encoder(size, input_size=input_size, channels=channels,
                      pos_embed=pos_embed, cls_token=cls_token,
                      final_norm=pool == 'cls',
                      trainable_pos_embed=trainable_pos_embed, stack=stack,
                      rngs=rngs)
    self.pool, self.drop_path = pool, drop_path
    self.fc_norm = (layer_norm(size.width, dtype=dtype, rngs=rngs)
                    if pool == 'mean' else None)
    self.head = nnx.Linear(
        size.width, num_classes, dtype=dtype, rngs=rngs,
        kernel_init=param_init(nnx.initializers.normal(head_init_std),
                               ('embed', None)),
        bias_init=param_init(nnx.initializers.zeros_init(), (None,)))

  def features(self, x: jax.Array, rng: jax.Array | None = None,
               ids_keep: jax.Array | None = None) -> jax.Array:
    """x: [B, *S, C] -> pooled, normalized features [B, D]. rng: drop path
    (training); None: deterministic (evaluation). ids_keep [B, K]: the
    tokens the encoder sees (token masking while fine-tuning, AudioMAE);
    None: all."""
    tokens = self.encode(self.patchify(x), ids_keep,
                         drop_path_rate=self.drop_path, rng=rng)
    if self.pool == 'cls':
      return tokens[:, 0]
    n_cls = 1 if self.cls_token is not None else 0
    return self.fc_norm(tokens[:, n_cls:].mean(axis=1))

  def __call__(self, x: jax.Array, rng: jax.Array | None = None,
               ids_keep: jax.Array | None = None) -> jax.Array:
    """x: [B, *S, C] -> logits [B, K] in float32 (see features)."""
    return self.head(self.features(x, rng, ids_keep)).astype(jnp.float32)


def build(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> Classifier:
  m, f = config.model, config.classify
  return Classifier(
      input_size=config_lib.spatial_shape(config), channels=m.channels,
      variant=m.variant, num_classes=f.num_classes, pool=f.pool,
      pos_embed=m.pos_embed, trainable_pos_embed=f.trainable_pos_embed,
      cls_token=m.cls_token, drop_path=f.drop_path,
      head_init_std=f.head_init_std, dtype=jnp.dtype(m.dtype),
      attention=m.attention or None, remat=m.remat,
      remat_names=tuple(m.remat_names), scan_unroll=m.scan_unroll, rngs=rngs)
