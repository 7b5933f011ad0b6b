"""Vision Transformer pieces: the size table, pre-norm blocks, a scanned block stack.

Shapes: B batch, T tokens, D width, H heads, K head dim, M MLP width.

Parameters carry *logical* axis names only ('embed', 'mlp', 'heads', 'kv',
'layers', 'norm', 'patch'); `mae_jax.sharding` maps them to mesh axes using
rules from the config, so the model never mentions a mesh.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mae_jax.sharding import constrain

# ViT sizes (Zhai et al., "Scaling Vision Transformers", Table 2; mu from
# big_vision; 22B: the width/depth/MLP/heads of ViT-22B, Dehghani et al. 2023,
# the scale of the largest MAE in "Scaling 4D Representations").
_WIDTH = dict(mu=32, Ti=192, S=384, M=512, B=768, L=1024, H=1280, g=1408,
              G=1664, e=1792, **{'22B': 6144})
_DEPTH = dict(mu=1, Ti=12, S=12, M=12, B=12, L=24, H=32, g=40, G=48, e=56,
              **{'22B': 48})
_MLP = dict(mu=128, Ti=768, S=1536, M=2048, B=3072, L=4096, H=5120, g=6144,
            G=8192, e=15360, **{'22B': 24576})
_HEADS = dict(mu=2, Ti=3, S=6, M=8, B=12, L=16, H=16, g=16, G=16, e=16,
              **{'22B': 48})
VARIANTS = tuple(_WIDTH)


@dataclasses.dataclass(frozen=True)
class ViTSize:
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch: tuple[int, ...]  # one entry per spatial axis of the input


def decode_variant(variant: str) -> ViTSize:
  """"B/16" -> ViT-B with 16x16 patches; "B/2x16x16" -> 2x16x16 tubelets.

  A single patch number means a square patch over 2 spatial axes.
  """
  name, sep, patch = variant.partition('/')
  if not sep or name not in _WIDTH:
    raise ValueError(
        f'model.variant={variant!r}: expected "<size>/<patch>" with size one of '
        f'{", ".join(VARIANTS)} (e.g. "B/16" or "B/2x16x16")')
  try:
    dims = tuple(int(p) for p in patch.split('x'))
  except ValueError:
    dims = ()
  if not dims or min(dims) < 1:
    raise ValueError(f'model.variant={variant!r}: patch {patch!r} must be '
                     'positive integers joined by "x", e.g. 16 or 2x16x16')
  if len(dims) == 1:
    dims = dims * 2
  return ViTSize(_WIDTH[name], _DEPTH[name], _MLP[name], _HEADS[name], dims)


def param_init(init, axes: Sequence[str | None]):
  """Wraps an initializer so its Param records logical axis names.

  eager_sharding=False: we shard the whole state at once (sharding.py), rather
  than letting flax place each variable on creation.
  """
  return nnx.with_partitioning(init, tuple(axes), eager_sharding=False)


# MAE initializes every Linear with xavier-uniform and zero bias (He et al. 2022,
# following the official code); LayerNorm eps is 1e-6.
_xavier = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()
LN_EPS = 1e-6


def dense(d_in: int, d_out: int, axes: tuple[str | None, str | None], *,
          dtype, rngs: nnx.Rngs) -> nnx.Linear:
  """A Linear layer [.., d_in] -> [.., d_out] with logical axes on its kernel."""
  bias_axis = 'norm' if axes[1] in ('embed', None) else axes[1]
  return nnx.Linear(d_in, d_out, kernel_init=param_init(_xavier, axes),
                    bias_init=param_init(_zeros, (bias_axis,)),
                    dtype=dtype, rngs=rngs)


def layer_norm(width: int, *, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # flax computes the statistics in float32 even when dtype is bfloat16.
  return nnx.LayerNorm(width, epsilon=LN_EPS, dtype=dtype,
                       scale_init=param_init(_ones, ('norm',)),
                       bias_init=param_init(_zeros, ('norm',)), rngs=rngs)


def attention(q: jax.Array, k: jax.Array, v: jax.Array,
              implementation: str | None) -> jax.Array:
  """Softmax attention, q, k, v: [B, T, H, K] -> [B, T, H, K].

  implementation None picks per backend: cuDNN's fused flash attention on a
  GPU for bf16/fp16 and head dims it supports (jax's own None means XLA
  everywhere), XLA otherwise; 'xla' or 'cudnn' force one.
  """
  if implementation is None:
    implementation = 'xla'
    if (jax.default_backend() == 'gpu' and q.dtype in (jnp.bfloat16, jnp.float16)
        and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128):
      try:
        return jax.nn.dot_product_attention(q, k, v, implementation='cudnn')
      except (RuntimeError, NotImplementedError, ValueError):
        pass  # no cuDNN, or one too old for these shapes: XLA's version
  return jax.nn.dot_product_attention(q, k, v, implementation=implementation)


class Attention(nnx.Module):
  """Multi-head self-attention. x: [B, T, D] -> [B, T, D]."""

  def __init__(self, width: int, num_heads: int, *, dtype, implementation,
               rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f'width {width} is not divisible by {num_heads} heads')
    k = width // num_heads
    # One [D, 3, H, K] projection; heads as their own axis so tensor parallelism
    # can shard them without cutting across q/k/v. Fans match a [D, 3D] Linear.
    self.qkv = nnx.Einsum(
        'btd,dshk->btshk', (width, 3, num_heads, k), (3, num_heads, k),
        kernel_init=param_init(nnx.initializers.xavier_uniform(
            in_axis=0, out_axis=(1, 2, 3)), ('embed', None, 'heads', 'kv')),
        bias_init=param_init(_zeros, (None, 'heads', 'kv')),
        dtype=dtype, rngs=rngs)
    self.out = nnx.Einsum(
        'bthk,hkd->btd', (num_heads, k, width), (width,),
        kernel_init=param_init(nnx.initializers.xavier_uniform(
            in_axis=(0, 1), out_axis=2), ('heads', 'kv', 'embed')),
        bias_init=param_init(_zeros, ('norm',)), dtype=dtype, rngs=rngs)
    self.implementation = implementation

  def __call__(self, x: jax.Array) -> jax.Array:
    qkv = checkpoint_name(self.qkv(x), 'attn_qkv')
    q, k, v = (constrain(qkv[:, :, i], ('batch', 'length', 'heads', 'kv'))
               for i in range(3))
    o = attention(q, k, v, self.implementation)
    o = checkpoint_name(o, 'attn_context')
    return self.out(o)


class Mlp(nnx.Module):
  """x: [B, T, D] -> [B, T, D] through a GELU hidden layer [B, T, M]."""

  def __init__(self, width: int, mlp_dim: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = dense(width, mlp_dim, ('embed', 'mlp'), dtype=dtype, rngs=rngs)
    self.fc2 = dense(mlp_dim, width, ('mlp', 'embed'), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jax.nn.gelu(self.fc1(x), approximate=False)  # exact GELU, as PyTorch's
    h = constrain(h, ('batch', 'length', 'mlp'))
    h = checkpoint_name(h, 'mlp_hidden')
    return self.fc2(h)


def drop_path(x: jax.Array, rate: jax.Array, key: jax.Array) -> jax.Array:
  """Stochastic depth (Huang et al. 2016) as timm's DropPath: zeroes the
  residual branch x: [B, ...] of whole examples with probability `rate`,
  scaling the kept ones by 1 / (1 - rate)."""
  keep = 1.0 - rate
  kept = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(kept, x / keep.astype(x.dtype), jnp.zeros((), x.dtype))


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

  def __init__(self, width: int, mlp_dim: int, num_heads: int, *, dtype,
               attention, rngs: nnx.Rngs):
    self.norm1 = layer_norm(width, dtype=dtype, rngs=rngs)
    self.attn = Attention(width, num_heads, dtype=dtype,
                          implementation=attention, rngs=rngs)
    self.norm2 = layer_norm(width, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(width, mlp_dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array,
               drop: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """drop: (rate [], key) drops each residual branch per example
    (fine-tuning's drop path); None: no drop."""
    a = self.attn(self.norm1(x))
    if drop is not None:
      rate, key = drop
      k1, k2 = jax.random.split(key)
      a = drop_path(a, rate, k1)
    x = x + a
    m = self.mlp(self.norm2(x))
    if drop is not None:
      m = drop_path(m, rate, k2)
    x = x + m
    return constrain(x, ('batch', 'length', 'act_embed'))


def remat_policy(name: str, names: Sequence[str] = ()):
  """Returns (use_remat, policy) for config.model.remat.

  none: keep every activation (fastest, most memory); full: recompute the whole
  block in the backward pass; dots: keep matmul outputs, recompute the rest;
  names: keep only the activations tagged with checkpoint_name in `names`
  (attn_qkv, attn_context, mlp_hidden).
  """
  policies = {
      'none': (False, None),
      'full': (True, None),
      'dots': (True, jax.checkpoint_policies.dots_saveable),
      'names': (True, jax.checkpoint_policies.save_only_these_names(*names)),
  }
  if name not in policies:
    raise ValueError(f'model.remat={name!r}: allowed {sorted(policies)}')
  return policies[name]


class ScannedStack(nnx.Module):
  """`depth` blocks whose parameters are stacked on a leading 'layers' axis,
  applied with lax.scan, so compile time does not grow with depth and a remat
  policy wraps one block. Subclasses build the blocks (init_stack) and say
  what each one gets per layer (scan)."""

  def init_stack(self, depth: int, make_block: Callable[[nnx.Rngs], Any], *,
                 remat: str, remat_names: Sequence[str], scan_unroll: int,
                 rngs: nnx.Rngs) -> None:
    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0,
              transform_metadata={nnx.PARTITION_NAME: 'layers'})
    def make(rngs: nnx.Rngs):
      return make_block(rngs)

    self.layers = make(rngs)
    self.remat, self.remat_names = remat, tuple(remat_names)
    self.scan_unroll = scan_unroll
    remat_policy(remat, remat_names)  # validate early

  @property
  def depth(self) -> int:
    return jax.tree.leaves(nnx.split(self.layers)[1])[0].shape[0]

  def scan(self, x: jax.Array, per_layer, apply) -> jax.Array:
    """x through the blocks in order: apply(block, x, per_layer[i]) -> x,
    per_layer a pytree of [depth, ...] arrays (rates, keys, flags)."""
    graphdef, stacked = nnx.split(self.layers)

    def body(x, scanned):
      layer_params, extra = scanned
      return apply(nnx.merge(graphdef, layer_params), x, extra), None

    use_remat, policy = remat_policy(self.remat, self.remat_names)
    if use_remat:
      body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    x, _ = jax.lax.scan(body, x, (stacked, per_layer),
                        unroll=self.scan_unroll)
    return x


class BlockStack(ScannedStack):
  """`depth` ViT blocks (ScannedStack). x: [B, T, D] -> [B, T, D]."""

  def __init__(self, depth: int, width: int, mlp_dim: int, num_heads: int, *,
               dtype, attention, remat: str = 'none',
               remat_names: Sequence[str] = (), scan_unroll: int = 1,
               rngs: nnx.Rngs):
    self.init_stack(
        depth, lambda r: Block(width, mlp_dim, num_heads, dtype=dtype,
                               attention=attention, rngs=r),
        remat=remat, remat_names=remat_names, scan_unroll=scan_unroll,
        rngs=rngs)

  def __call__(self, x: jax.Array, drop_path_rate: float = 0.0,
               rng: jax.Array | None = None) -> jax.Array:
    """drop_path_rate > 0 with an rng: block i drops its residual branches
    at rate drop_path_rate * i / (depth - 1) (the linear rule of timm's ViT,
    used by MAE fine-tuning)."""
    depth = self.depth
    drop = drop_path_rate > 0 and rng is not None
    rates = jnp.linspace(0.0, drop_path_rate, depth, dtype=jnp.float32)
    keys = (jax.random.split(rng, depth) if drop
            else jnp.zeros((depth,), jnp.uint32))
    return self.scan(
        x, (rates, keys),
        lambda block, x, rk: block(x, rk if drop else None))


def count_params(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))

