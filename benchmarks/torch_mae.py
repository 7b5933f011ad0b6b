"""PyTorch reference of mae_jax's MAE, for `python -m mae_jax.bench --torch_python=...`.

The same model (pre-norm ViT blocks, visible-only encoder, mask-token decoder,
fixed sin-cos positions, normalized-pixel loss on masked patches), batch,
masking and AdamW update, in idiomatic fast PyTorch: fused
scaled_dot_product_attention, bf16 autocast, torch.compile. Timed like
mae_jax.bench: warm-up, then the median over `repeats` windows of `steps`
steps, synchronized at the end of each window. Prints one JSON line.

  python benchmarks/torch_mae.py --variant=B/16 --decoder=512d8b --input=224x224x3 \
      --batch=256 --dtype=bfloat16 --steps=10 --repeats=5
"""

import argparse
import json
import math
import re
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# (width, depth, mlp, heads): the table in mae_jax/models/vit.py.
SIZES = {'mu': (32, 1, 128, 2), 'Ti': (192, 12, 768, 3), 'S': (384, 12, 1536, 6),
         'M': (512, 12, 2048, 8), 'B': (768, 12, 3072, 12),
         'L': (1024, 24, 4096, 16), 'H': (1280, 32, 5120, 16),
         'g': (1408, 40, 6144, 16), 'G': (1664, 48, 8192, 16),
         'e': (1792, 56, 15360, 16), '22B': (6144, 48, 24576, 48)}


def sincos(grid, dim):
  """[L, dim] fixed position embedding, as mae_jax.models.tokenizers."""
  half = dim // len(grid) // 2
  omega = 1.0 / 10000 ** (np.arange(half) / half)
  coords = np.meshgrid(*[np.arange(g, dtype=np.float64) for g in grid],
                       indexing='ij')
  parts = []
  for c in coords[::-1]:  # the last axis first, as the official MAE
    a = c.reshape(-1)[:, None] * omega[None]
    parts += [np.sin(a), np.cos(a)]
  return torch.tensor(np.concatenate(parts, 1), dtype=torch.float32)


class Block(nn.Module):

  def __init__(self, width, mlp, heads):
    super().__init__()
    self.heads = heads
    self.norm1 = nn.LayerNorm(width, eps=1e-6)
    self.qkv = nn.Linear(width, 3 * width)
    self.proj = nn.Linear(width, width)
    self.norm2 = nn.LayerNorm(width, eps=1e-6)
    self.fc1 = nn.Linear(width, mlp)
    self.fc2 = nn.Linear(mlp, width)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(self.norm1(x)).view(
        b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v)  # [b, heads, t, head_dim]
    x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
    return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class MAE(nn.Module):
  """x: [B, *S, C] (channels last, like mae_jax) -> masked normalized-pixel loss."""

  def __init__(self, variant, decoder, input_shape, mask_ratio, target):
    super().__init__()
    name, patch = variant.split('/')
    width, depth, mlp, heads = SIZES[name]
    patch = tuple(int(p) for p in patch.split('x'))
    self.patch = patch * 2 if len(patch) == 1 else patch
    *spatial, channels = input_shape
    self.grid = tuple(s // p for s, p in zip(spatial, self.patch))
    self.length = math.prod(self.grid)
    self.keep = int(self.length * (1 - mask_ratio))
    self.target = target
    m = re.fullmatch(r'(\d+)d(\d+)b(?:(\d+)h)?', decoder)
    dw, dd = int(m[1]), int(m[2])
    dh = int(m[3]) if m[3] else max(1, dw // 32)
    pdim = math.prod(self.patch) * channels
    self.patch_embed = nn.Linear(pdim, width)
    self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
    self.blocks = nn.ModuleList(Block(width, mlp, heads) for _ in range(depth))
    self.norm = nn.LayerNorm(width, eps=1e-6)
    self.decoder_embed = nn.Linear(width, dw)
    self.mask_token = nn.Parameter(torch.randn(1, 1, dw) * 0.02)
    self.decoder_blocks = nn.ModuleList(Block(dw, 4 * dw, dh) for _ in range(dd))
    self.decoder_norm = nn.LayerNorm(dw, eps=1e-6)
    self.decoder_pred = nn.Linear(dw, pdim)
    self.register_buffer('pos', sincos(self.grid, width), persistent=False)
    self.register_buffer('dec_pos', sincos(self.grid, dw), persistent=False)
    for mod in self.modules():
      if isinstance(mod, nn.Linear):
        nn.init.xavier_uniform_(mod.weight)
        nn.init.zeros_(mod.bias)

  def patchify(self, x):
    b, *spatial, c = x.shape
    n = len(self.grid)
    x = x.reshape(b, *[d for gp in zip(self.grid, self.patch) for d in gp], c)
    x = x.permute(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
    return x.reshape(b, self.length, -1)

  def forward(self, x, noise):
    patches = self.patchify(x)                       # [B, L, P]
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    keep = ids_shuffle[:, :self.keep]
    b = x.shape[0]
    gather = lambda t, ids: torch.gather(
        t, 1, ids[..., None].expand(-1, -1, t.shape[-1]))
    h = self.patch_embed(gather(patches, keep)) + self.pos[keep]
    h = torch.cat([self.cls_token.expand(b, -1, -1), h], 1)
    for blk in self.blocks:
      h = blk(h)
    h = self.decoder_embed(self.norm(h))
    vis = h[:, 1:]
    full = torch.cat([vis, self.mask_token.expand(
        b, self.length - self.keep, -1).to(vis.dtype)], 1)
    full = gather(full, ids_restore) + self.dec_pos
    h = torch.cat([h[:, :1], full], 1)
    for blk in self.decoder_blocks:
      h = blk(h)
    pred = self.decoder_pred(self.decoder_norm(h))[:, 1:].float()
    target = patches
    if self.target == 'norm_pixels':
      mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
      target = (patches - mean) / (var + 1e-6) ** 0.5
    mask = (ids_restore >= self.keep).float()
    return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()


def main():
  p = argparse.ArgumentParser()
  for name, default in (('variant', 'B/16'), ('decoder', '512d8b'),
                        ('input', '224x224x3'), ('dtype', 'bfloat16'),
                        ('target', 'norm_pixels')):
    p.add_argument(f'--{name}', default=default)
  for name, default in (('batch', 256), ('steps', 10), ('repeats', 5),
                        ('warmup', 3)):
    p.add_argument(f'--{name}', type=int, default=default)
  p.add_argument('--mask_ratio', type=float, default=0.75)
  p.add_argument('--compile', dest='compile', action='store_true', default=True)
  p.add_argument('--nocompile', dest='compile', action='store_false')
  a = p.parse_args()

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.manual_seed(0)
  shape = tuple(int(s) for s in a.input.split('x'))
  model = MAE(a.variant, a.decoder, shape, a.mask_ratio, a.target).to(device)
  decay = [q for n, q in model.named_parameters() if q.ndim == 2]
  rest = [q for n, q in model.named_parameters() if q.ndim != 2]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.05},
                           {'params': rest, 'weight_decay': 0.0}], lr=1e-4,
                          betas=(0.9, 0.95), fused=device == 'cuda')
  net = torch.compile(model) if a.compile else model
  x = torch.randn(a.batch, *shape, device=device)
  amp = a.dtype == 'bfloat16'

  def step():
    noise = torch.rand(a.batch, model.length, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
      loss = net(x, noise)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  t = time.perf_counter()
  for _ in range(max(a.warmup, 1)):
    loss = step()
  loss.item()
  sync()
  warm = time.perf_counter() - t
  times = []
  for _ in range(a.repeats):
    t = time.perf_counter()
    for _ in range(a.steps):
      loss = step()
    sync()
    times.append((time.perf_counter() - t) / a.steps)
  s = statistics.median(times)
  print(json.dumps({
      'torch': torch.__version__, 'device': (torch.cuda.get_device_name()
                                             if device == 'cuda' else 'cpu'),
      'compiled': a.compile, 'dtype': a.dtype, 'warmup_seconds': warm,
      'step_seconds': s, 'step_seconds_all': times,
      'examples_per_sec': a.batch / s, 'loss': float(loss.item()),
      'params': sum(q.numel() for q in model.parameters())}))


if __name__ == '__main__':
  main()
