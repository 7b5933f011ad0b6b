"""The PyTorch ViT layout the formats share, both ways.

The official MAE (facebookresearch/mae), VideoMAE and timm build their
blocks from timm's `Block`, whose state dict is

  <prefix><i>.norm1 / norm2.{weight, bias}      LayerNorm
  <prefix><i>.attn.qkv.weight [3D, D]           rows (q|k|v, head, dim)
  <prefix><i>.attn.qkv.bias [3D]                (VideoMAE: q_bias, v_bias [D])
  <prefix><i>.attn.proj.{weight [D, D], bias}   input columns (head, dim)
  <prefix><i>.mlp.fc1 / fc2.{weight [out, in], bias}

mae_jax keeps a stack of blocks as one module whose parameters have a
leading layers axis: norm1/{scale, bias} [depth, D], attn/qkv/kernel
[depth, D, 3, H, K], attn/qkv/bias [depth, 3, H, K], attn/out/kernel
[depth, H, K, D], attn/out/bias, norm2/..., mlp/fc1/kernel [depth, D, M],
mlp/fc2/kernel [depth, M, D] (a kernel is a torch weight transposed).

Also here: checking a state dict's keys and shapes (Report), reading the
architecture off the shapes (depth_of, variant_name, decoder_spec), and the
patch embedding (a stride-p convolution in torch, a Linear on flattened
patches in mae_jax).
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

from mae_jax.convert import ConvertError, as_array

BLOCK_PARAMS = ('norm1.weight', 'norm1.bias', 'attn.qkv.weight',
                'attn.q_bias', 'attn.v_bias', 'attn.proj.weight',
                'attn.proj.bias', 'norm2.weight', 'norm2.bias',
                'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight',
                'mlp.fc2.bias')


def block_shapes(width: int, mlp: int) -> dict[str, tuple[int, ...]]:
  return {'norm1.weight': (width,), 'norm1.bias': (width,),
          'attn.qkv.weight': (3 * width, width), 'attn.q_bias': (width,),
          'attn.v_bias': (width,), 'attn.qkv.bias': (3 * width,),
          'attn.proj.weight': (width, width), 'attn.proj.bias': (width,),
          'norm2.weight': (width,), 'norm2.bias': (width,),
          'mlp.fc1.weight': (mlp, width), 'mlp.fc1.bias': (mlp,),
          'mlp.fc2.weight': (width, mlp), 'mlp.fc2.bias': (width,)}


def depth_of(keys, prefix: str) -> int:
  """The number of blocks <prefix><i>.* (the highest i + 1)."""
  ids = {int(m[1]) for k in keys for m in [re.match(
      rf'{re.escape(prefix)}(\d+)\.', k)] if m}
  return max(ids) + 1 if ids else 0


def listed(items: Sequence[str], limit: int = 12) -> str:
  more = f', ... ({len(items) - limit} more)' if len(items) > limit else ''
  return ', '.join(items[:limit]) + more


class Report:
  """Collects every missing / unexpected / mis-shaped key, raises once.

  what: the kind of state dict the reader wants (named in the error);
  hints: (regex over a key, what such a key says about the model) for the
  unexpected keys.
  """

  def __init__(self, sd: Mapping[str, Any], what: str,
               hints: Sequence[tuple[str, str]] = ()):
    self.sd, self.what, self.hints = sd, what, tuple(hints)
    self.expected: dict[str, tuple[int, ...]] = {}
    self.optional: dict[str, tuple[int, ...]] = {}

  def expect(self, key: str, shape, optional: bool = False) -> None:
    (self.optional if optional else self.expected)[key] = tuple(shape)

  def check(self) -> None:
    sd = self.sd
    missing = [k for k in self.expected if k not in sd]
    known = set(self.expected) | set(self.optional)
    unexpected = [k for k in sd if k not in known]
    shapes = [f'{k}: shape {tuple(sd[k].shape)}, expected {want}'
              for k, want in {**self.expected, **self.optional}.items()
              if k in sd and tuple(sd[k].shape) != want]
    if not (missing or unexpected or shapes):
      return
    parts = []
    if missing:
      parts.append(f'{len(missing)} missing key(s): ' + listed(missing))
    if unexpected:
      parts.append(f'{len(unexpected)} unexpected key(s): '
                   + listed(unexpected))
      hints = sorted({why for k in unexpected for pattern, why in self.hints
                      if re.search(pattern, k)})
      if hints:
        parts.append('they look like ' + '; '.join(hints))
    if shapes:
      parts.append(f'{len(shapes)} wrong shape(s): ' + listed(shapes))
    raise ConvertError(f'not {self.what} this converter can read:\n  '
                       + '\n  '.join(parts))


def expect_blocks(report: Report, sd, prefix: str, depth: int, width: int,
                  mlp: int) -> tuple[bool, bool]:
  """Expects `depth` blocks at `prefix` -> (q/v biases present (VideoMAE),
  a full qkv bias present (timm))."""
  keys = [k for k in sd if k.startswith(prefix)]
  has_qv = any(k.endswith(('.attn.q_bias', '.attn.v_bias')) for k in keys)
  has_qkv = any(k.endswith('.attn.qkv.bias') for k in keys)
  shapes = block_shapes(width, mlp)
  for i in range(depth):
    for name in BLOCK_PARAMS:
      if name in ('attn.q_bias', 'attn.v_bias') and not has_qv:
        continue  # qkv_bias=False, or a full qkv bias instead
      report.expect(f'{prefix}{i}.{name}', shapes[name])
    if has_qkv:
      report.expect(f'{prefix}{i}.attn.qkv.bias', shapes['attn.qkv.bias'])
  return has_qv, has_qkv


def variant_name(width: int, depth: int, mlp: int) -> str:
  """The mae_jax ViT size of these dimensions (ConvertError if none)."""
  from mae_jax.models import vit  # pylint: disable=g-import-not-at-top
  sizes = {n: vit.decode_variant(f'{n}/1') for n in vit.VARIANTS}
  for name, s in sizes.items():
    if (s.width, s.depth, s.mlp_dim) == (width, depth, mlp):
      return name
  table = ', '.join(f'{n} {s.width}/{s.depth}/{s.mlp_dim}'
                    for n, s in sizes.items())
  raise ConvertError(
      f'the encoder is {width} wide with {depth} blocks and an MLP of {mlp}: '
      f'no mae_jax ViT size matches (width/depth/MLP: {table})')


def decoder_spec(width: int, depth: int, heads: int, mlp: int) -> str:
  """A mae_jax decoder spec ('512d8b16h', with '<mlp>m' when the MLP is not
  4 x width)."""
  from mae_jax.models import mae  # pylint: disable=g-import-not-at-top
  spec = f'{width}d{depth}b{heads}h'
  if mlp == 4 * width:
    return spec
  try:
    if mae.decode_decoder(f'{spec}{mlp}m').mlp_dim == mlp:
      return f'{spec}{mlp}m'
  except ValueError:
    pass
  raise ConvertError(
      f'the decoder\'s MLP is {mlp} wide, {mlp / width:.4g} x its width '
      f'{width}; mae_jax decoders ("{spec}") have 4 x width = {4 * width}')


def linear(w) -> np.ndarray:
  """torch Linear weight [out, in] -> kernel [in, out]."""
  return as_array(w).astype(np.float32).T


def blocks_from_torch(sd, prefix: str, depth: int, width: int, heads: int,
                      has_qv_bias: bool, has_qkv_bias: bool
                      ) -> dict[str, np.ndarray]:
  """{'norm1/scale': [depth, ...], ...}: the stacked parameters of `depth`
  blocks, filled one block at a time (a large model is not held twice).
  No bias in the file: zeros; VideoMAE's q/v biases: (q_bias, 0, v_bias)."""
  k = width // heads
  out: dict[str, np.ndarray] = {}
  for i in range(depth):
    g = lambda name: as_array(sd[f'{prefix}{i}.{name}']).astype(np.float32)
    if has_qkv_bias:
      qkv_bias = g('attn.qkv.bias')
    elif has_qv_bias:
      qkv_bias = np.concatenate([g('attn.q_bias'), np.zeros(width, np.float32),
                                 g('attn.v_bias')])
    else:
      qkv_bias = np.zeros(3 * width, np.float32)
    block = {
        'norm1/scale': lambda: g('norm1.weight'),
        'norm1/bias': lambda: g('norm1.bias'),
        # [3D, D] rows ordered (q|k|v, head, dim) -> [D, 3, H, K]
        'attn/qkv/kernel': lambda: g('attn.qkv.weight').T.reshape(
            width, 3, heads, k),
        'attn/qkv/bias': lambda: qkv_bias.reshape(3, heads, k),
        # [D, H*K] -> [H, K, D]
        'attn/out/kernel': lambda: g('attn.proj.weight').T.reshape(
            heads, k, width),
        'attn/out/bias': lambda: g('attn.proj.bias'),
        'norm2/scale': lambda: g('norm2.weight'),
        'norm2/bias': lambda: g('norm2.bias'),
        'mlp/fc1/kernel': lambda: g('mlp.fc1.weight').T,
        'mlp/fc1/bias': lambda: g('mlp.fc1.bias'),
        'mlp/fc2/kernel': lambda: g('mlp.fc2.weight').T,
        'mlp/fc2/bias': lambda: g('mlp.fc2.bias'),
    }
    for name, make in block.items():
      value = make()
      if name not in out:
        out[name] = np.empty((depth, *value.shape), np.float32)
      out[name][i] = value
  return out


def blocks_to_torch(layers: Mapping[str, Any], prefix: str
                    ) -> 'collections.OrderedDict[str, np.ndarray]':
  """The inverse of blocks_from_torch for timm's Block (qkv_bias=True):
  layers, the nested pure dict of a mae_jax block stack's 'layers' ->
  {'<prefix><i>.norm1.weight': ..., ...} in timm's key order."""
  a = lambda x: np.asarray(x, np.float32)
  qkv_k = a(layers['attn']['qkv']['kernel'])  # [depth, D, 3, H, K]
  depth, width = qkv_k.shape[:2]
  out_k = a(layers['attn']['out']['kernel'])  # [depth, H, K, D]
  out = collections.OrderedDict()
  for i in range(depth):
    p = f'{prefix}{i}.'
    out[p + 'norm1.weight'] = a(layers['norm1']['scale'][i])
    out[p + 'norm1.bias'] = a(layers['norm1']['bias'][i])
    out[p + 'attn.qkv.weight'] = qkv_k[i].reshape(width, -1).T
    out[p + 'attn.qkv.bias'] = a(layers['attn']['qkv']['bias'][i]).reshape(-1)
    out[p + 'attn.proj.weight'] = out_k[i].reshape(-1, width).T
    out[p + 'attn.proj.bias'] = a(layers['attn']['out']['bias'][i])
    out[p + 'norm2.weight'] = a(layers['norm2']['scale'][i])
    out[p + 'norm2.bias'] = a(layers['norm2']['bias'][i])
    out[p + 'mlp.fc1.weight'] = a(layers['mlp']['fc1']['kernel'][i]).T
    out[p + 'mlp.fc1.bias'] = a(layers['mlp']['fc1']['bias'][i])
    out[p + 'mlp.fc2.weight'] = a(layers['mlp']['fc2']['kernel'][i]).T
    out[p + 'mlp.fc2.bias'] = a(layers['mlp']['fc2']['bias'][i])
  return collections.OrderedDict(
      (k, np.ascontiguousarray(v)) for k, v in out.items())


def patch_kernel_from_conv(w) -> np.ndarray:
  """Conv weight [D, C, *patch] -> mae_jax's patch_embed kernel
  [prod(patch) * C, D], rows in (patch..., channel) order (the order of
  mae_jax's tokens)."""
  w = as_array(w).astype(np.float32)
  n = w.ndim - 2
  return w.transpose(*range(2, 2 + n), 1, 0).reshape(-1, w.shape[0])


def conv_from_patch_kernel(kernel, patch: Sequence[int], channels: int
                           ) -> np.ndarray:
  """The inverse: [prod(patch) * C, D] -> [D, C, *patch]."""
  kernel = np.asarray(kernel, np.float32)
  width, n = kernel.shape[1], len(patch)
  assert kernel.shape[0] == math.prod(patch) * channels, kernel.shape
  w = kernel.reshape(*patch, channels, width)
  return np.ascontiguousarray(w.transpose(n + 1, n, *range(n)))


def stem_from_torch(sd) -> dict[str, np.ndarray]:
  """The official MAE layout's patch embedding (a Conv2d) and cls token ->
  mae_jax paths (AudioMAE's models share it)."""
  f32 = lambda key: as_array(sd[key]).astype(np.float32)
  return {'patch_embed/kernel': patch_kernel_from_conv(
              sd['patch_embed.proj.weight']),
          'patch_embed/bias': f32('patch_embed.proj.bias'),
          'cls_token': f32('cls_token')}


def decoder_ends_from_torch(sd) -> dict[str, np.ndarray]:
  """The official MAE decoder around its blocks (decoder_embed, mask_token,
  decoder_norm, decoder_pred) -> mae_jax paths."""
  f32 = lambda key: as_array(sd[key]).astype(np.float32)
  return {'decoder_embed/kernel': linear(sd['decoder_embed.weight']),
          'decoder_embed/bias': f32('decoder_embed.bias'),
          'mask_token': f32('mask_token'),
          'decoder_norm/scale': f32('decoder_norm.weight'),
          'decoder_norm/bias': f32('decoder_norm.bias'),
          'decoder_pred/kernel': linear(sd['decoder_pred.weight']),
          'decoder_pred/bias': f32('decoder_pred.bias')}


def expect_decoder_ends(report: Report, width: int, dec_width: int,
                        tokens: int, patch_dim: int) -> None:
  """Expects the official decoder's keys around its blocks, with shapes for
  an encoder `width` wide, `tokens` patches of `patch_dim` values."""
  report.expect('decoder_embed.weight', (dec_width, width))
  report.expect('decoder_embed.bias', (dec_width,))
  report.expect('mask_token', (1, 1, dec_width))
  report.expect('decoder_pos_embed', (1, 1 + tokens, dec_width))
  report.expect('decoder_norm.weight', (dec_width,))
  report.expect('decoder_norm.bias', (dec_width,))
  report.expect('decoder_pred.weight', (patch_dim, dec_width))
  report.expect('decoder_pred.bias', (patch_dim,))


def encoder_variant(width: int, depth: int, mlp: int, patch: Sequence[int],
                    num_heads: int | None) -> tuple[str, int, str]:
  """The shapes of an official encoder -> (mae_jax size name, its heads,
  model.variant). num_heads: what the user says the model was trained with
  (None: the size table's); another count cannot be represented."""
  size = variant_name(width, depth, mlp)
  from mae_jax.models import vit  # pylint: disable=g-import-not-at-top
  heads = vit.decode_variant(f'{size}/1').num_heads
  if num_heads and num_heads != heads:
    raise ConvertError(
        f'--num_heads={num_heads}: mae_jax\'s ViT-{size} has {heads} heads '
        '(mae_jax\'s size table; the official ViT-B/L/H have the same); a '
        'model trained with other heads cannot be represented')
  ph, pw = patch
  return size, heads, f'{size}/{ph}' if ph == pw else f'{size}/{ph}x{pw}'
