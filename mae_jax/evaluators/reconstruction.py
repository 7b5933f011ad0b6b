"""Reconstruction pictures: PNG grids of original | masked | reconstruction.

Writes <workdir>/images/reconstruction_<step>.png and a TensorBoard image,
and reports the masked-patch loss on the pictured examples.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from flax import nnx
from PIL import Image

from mae_jax import config as config_lib
from mae_jax import data, sharding
from mae_jax import step
from mae_jax.data import transforms
from mae_jax.config import open_split
from mae_jax.evaluators.base import Evaluator, register
from mae_jax.models import mae

_GAP = 2  # pixels between panels


def _panels(graphdef, params, images, rng, target: str):
  """images: [N, *S, C] -> (recon [N, *S, C], mask [N, *S, 1], loss)."""
  model = nnx.merge(graphdef, params)
  recon, mask = mae.reconstruct(model, images, rng, target)
  m = model.sample_mask(rng, images)  # same rng: the same mask
  loss = step.loss_terms(model, images, m, target)['reconstruction']
  return recon, mask, loss


def _tile(panels: list[np.ndarray], axis: int) -> np.ndarray:
  """uint8 [h, w, 3] panels side by side (axis 1) or stacked (axis 0), with
  white gaps."""
  gap_shape = list(panels[0].shape)
  gap_shape[axis] = _GAP
  gap = np.full(gap_shape, 255, np.uint8)
  out = [panels[0]]
  for panel in panels[1:]:
    out += [gap, panel]
  return np.concatenate(out, axis=axis)


# Anchors of a perceptual dark-to-bright colormap (inferno's ends and three
# interior points) for spectrograms: loudness reads as brightness.
_HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9],
                  [252, 255, 164]], np.float32)


def _heat(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """float [...] -> uint8 [..., 3]: x in [lo, hi] along the colormap."""
  t = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1) * (len(_HEAT) - 1)
  i = np.minimum(t.astype(np.int32), len(_HEAT) - 2)
  f = (t - i)[..., None]
  return np.round(_HEAT[i] * (1 - f) + _HEAT[i + 1] * f).astype(np.uint8)


def spectrogram_grid(specs: np.ndarray, recon: np.ndarray, mask: np.ndarray,
                     min_height: int = 128) -> np.ndarray:
  """Spectrogram pictures -> uint8 [H', W', 3]: per example the original |
  masked | reconstruction, time left to right and frequency bottom to top
  (as spectrograms are drawn), one colour scale per example (its original's
  range). The three panels sit side by side, or one above the other when a
  spectrogram is more than twice as long as it is high (AudioMAE's
  1024 x 128). specs, recon: [N, T, F, 1]; mask the same, 1 = masked (shown
  mid-gray)."""
  long = specs.shape[1] > 2 * specs.shape[2]
  scale = max(1, min_height // specs.shape[2])
  blocks = []
  for x, r, m in zip(specs[..., 0], recon[..., 0], mask[..., 0]):
    lo, hi = float(x.min()), float(x.max())
    panels = [_heat(x, lo, hi), np.where(m[..., None] > 0.5, np.uint8(128),
                                         _heat(x, lo, hi)), _heat(r, lo, hi)]
    panels = [p.transpose(1, 0, 2)[::-1].repeat(scale, 0).repeat(scale, 1)
              for p in panels]  # [F, T, 3], low frequencies at the bottom
    blocks.append(_tile(panels, axis=0 if long else 1))
  return _tile(blocks, axis=0)


def picture_grid(images: np.ndarray, recon: np.ndarray, mask: np.ndarray,
                 mean, std, min_size: int = 96) -> np.ndarray:
  """Pictures of reconstructions -> uint8 [H', W', 3].

  images, recon: [N, H, W, C] or clips [N, T, H, W, C], normalized pixels;
  mask: the same with 1 channel, 1 = masked. Images: one row per image,
  [original | masked | reconstruction]. Clips: per clip three frame strips
  (frames left to right) stacked: original, masked, reconstruction.
  Masked pixels are shown mid-gray. Small frames are enlarged (nearest
  neighbour) to about `min_size` pixels so they can be seen.
  """
  orig = transforms.denormalize(images, mean, std)
  rec = transforms.denormalize(recon, mean, std)
  masked = np.where(mask > 0.5, np.uint8(128), orig)
  if orig.shape[-1] == 1:
    orig, rec, masked = (np.repeat(a, 3, axis=-1) for a in (orig, rec, masked))
  scale = max(1, min_size // max(orig.shape[-3:-1]))
  orig, rec, masked = (a.repeat(scale, axis=-3).repeat(scale, axis=-2)
                       for a in (orig, rec, masked))
  rows = []
  for i in range(len(orig)):
    if orig.ndim == 4:
      rows.append(_tile([orig[i], masked[i], rec[i]], axis=1))
    else:
      rows += [_tile(list(a[i]), axis=1) for a in (orig, masked, rec)]
  return _tile(rows, axis=0)


@register('reconstruction')
class Reconstruction(Evaluator):
  tasks = ('pretrain',)  # it needs the decoder

  @staticmethod
  def check_config(config, cfg) -> None:
    if cfg.num_images < 1:
      raise ValueError(f'config.evals.reconstruction.num_images='
                       f'{cfg.num_images}: must be >= 1')

  @classmethod
  def check_data(cls, config, opened: dict) -> None:
    open_split(config, config.data.eval_split or config.data.split,
               'evaluator reconstruction', opened)

  def __init__(self, ctx, cfg):
    super().__init__(ctx, cfg)
    c = ctx.config
    self._fn = jax.jit(functools.partial(_panels, ctx.graphdef),
                       static_argnames='target')
    split = c.data.eval_split or c.data.split
    # Every process takes the same first images (pictures are replicated).
    batch = next(data.eval_batches(
        c.data, split, image_size=config_lib.image_size(c),
        channels=c.model.channels, batch_size=cfg.num_images,
        max_examples=cfg.num_images, frames=c.model.frames))
    self._images = batch['image'][batch['valid']]
    self._rng = jax.random.key(c.seed + 1)

  def run(self, params, step: int, tag: str = 'trained'
          ) -> dict[str, float]:
    c = self.ctx.config
    images = jax.device_put(self._images, sharding.replicated(self.ctx.mesh))
    recon, mask, loss = jax.device_get(
        self._fn(params, images, self._rng, target=c.target))
    if jax.process_index() == 0:
      grid = (spectrogram_grid(self._images, recon, mask)
              if c.model.spectrogram else
              picture_grid(self._images, recon, mask, c.data.mean, c.data.std))
      folder = os.path.join(self.ctx.workdir, 'images')
      os.makedirs(folder, exist_ok=True)
      name = 'reconstruction' + ('' if tag == 'trained' else f'_{tag}')
      Image.fromarray(grid).save(os.path.join(folder, f'{name}_{step:07d}.png'))
      self.ctx.writer.image(step, name, grid)
    return {'reconstruction/loss': float(loss)}
