"""Python API: load a pretrained MAE from a workdir or checkpoint directory.

  import mae_jax
  mae = mae_jax.load('workdirs/demo')           # latest checkpoint
  feats = mae.encode(images)                    # [N, D]
  recon, mask = mae.reconstruct(images, rng=0)  # like images; mask [N, H, W]
  logits = mae_jax.load('workdirs/finetune_demo').classify(images)  # [N, K]

Audio models (config.model.spectrogram) take waveforms ([n] or [N, n] at
the config's data.sample_rate, or a list of them) or log-mel spectrograms
([T, F] or [N, T, F] as `mae.spectrogram(waveform)` computes them);
reconstructions come back as log-mel spectrograms [(N,) T, F].

Images are [N, H, W, C] at the model's size, or one image [H, W, C] (then
the outputs have no batch axis either); with C = 1 the channel axis may be
left out ([N, H, W] or [H, W]). uint8 pixels are normalized with the training
config's mean/std and reconstructions come back as uint8; float inputs are
taken as already normalized and reconstructions come back normalized. Bad
arguments raise ValueError / TypeError naming the argument and what is
allowed; a missing or damaged checkpoint raises FileNotFoundError /
mae_jax.errors.CheckpointError naming the step and item.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from mae_jax import checkpoint, config as config_lib, optim, sharding
from mae_jax import step as step_lib
from mae_jax.data import transforms
from mae_jax.evaluators.features import POOLS, pooled_features
from mae_jax.models import mae as mae_lib


def resolve(path: str, step: int | None = None) -> tuple[str, int]:
  """workdir | workdir/checkpoints | workdir/checkpoints/<step> ->
  (checkpoint root, step). Raises FileNotFoundError naming what was tried."""
  path = os.path.abspath(path)
  base = os.path.basename(path.rstrip('/'))
  if re.fullmatch(r'\d+', base) and os.path.isdir(path):
    return os.path.dirname(path), int(base) if step is None else step
  for root in (os.path.join(path, 'checkpoints'), path):
    if os.path.isdir(root):
      steps = sorted(int(d) for d in os.listdir(root) if re.fullmatch(r'\d+', d)
                     and os.path.isdir(os.path.join(root, d)))
      if steps:
        if step is not None and step not in steps:
          raise FileNotFoundError(f'{root} has no checkpoint for step {step}; '
                                  f'available: {steps}')
        return root, steps[-1] if step is None else step
  raise FileNotFoundError(
      f'no checkpoint found at {path}: expected a workdir (with checkpoints/), '
      'a checkpoints/ directory, or one step directory inside it')


def restore(path: str, step: int | None = None,
            mesh_config: dict | None = None):
  """-> (config, StateSetup, params, step), params sharded on a mesh of the
  local devices (data-parallel unless mesh_config says otherwise)."""
  root, step = resolve(path, step)
  ckpt = checkpoint.Checkpointer(root, async_save=False, read_only=True)
  hint = lambda k: (f'load an earlier one with step={k} (mae_jax.load(path, '
                    f'step={k}); mae_jax.evaluate --step={k})')
  try:
    config = config_lib.with_defaults(ckpt.verify(step, hint)['config'])
    config.mesh = ml_collections.ConfigDict(
        mesh_config or dict(dcn=1, data=-1, fsdp=1, tensor=1))
    mesh = sharding.make_mesh(config.mesh)
    # The schedule's values do not matter here, only the optimizer's structure.
    tx = optim.optimizer(config, lambda count: 0.0)
    with sharding.rules_context(mesh, config.sharding.rules):
      setup = step_lib.StateSetup(config, tx, mesh)
      state = ckpt.restore(step, setup.abstract, hint=hint)
  finally:
    ckpt.close()
  return config, setup, state.params, step


class Pretrained:
  """A loaded MAE (or fine-tuned classifier: config.task='classify').
  `.config` (ConfigDict), `.params` (pure dict of arrays), `.step` (training
  steps done), `.model` (the flax NNX module)."""

  def __init__(self, config: ml_collections.ConfigDict, setup, params: Any,
               step: int):
    self.config, self.params, self.step = config, params, step
    self._setup = setup
    self.graphdef = setup.graphdef
    self._encode = jax.jit(functools.partial(pooled_features, self.graphdef),
                           static_argnames='pool')
    self._reconstruct = jax.jit(self._reconstruct_fn)

  @property
  def model(self) -> mae_lib.MAE:
    return nnx.merge(self.graphdef, self.params)

  def spectrogram(self, waveform, sample_rate: int | None = None
                  ) -> np.ndarray:
    """A waveform (float [n], mono) -> this model's log-mel spectrogram
    float32 [T, F] (Kaldi fbank as in training, the first T frames, zero
    padded), not normalized. sample_rate: the waveform's (default: the
    training config's data.sample_rate); another rate is resampled."""
    from mae_jax.data import audio  # pylint: disable=g-import-not-at-top
    c = self.config
    if not c.model.spectrogram:
      raise ValueError('spectrogram() needs an audio model '
                       '(config.model.spectrogram=True)')
    wave = np.asarray(waveform, np.float32)
    if wave.ndim != 1 or wave.size == 0:
      raise ValueError(f'waveform: shape {wave.shape}; expected mono samples '
                       '[n], n > 0')
    rate = c.data.sample_rate
    if sample_rate and sample_rate != rate:
      import soxr  # pylint: disable=g-import-not-at-top
      wave = soxr.resample(wave, sample_rate, rate).astype(np.float32)
    frames, bins = config_lib.image_size(c)
    return audio.fix_length(audio.fbank(wave, rate, bins), frames)

  def _prepare_audio(self, x) -> tuple[np.ndarray, bool, bool]:
    """Waveforms ([n], [N, n] or a list of [n_i], at data.sample_rate) or
    log-mel spectrograms ([T, F], [N, T, F], [N, T, F, 1], as
    spectrogram() gives them) -> (normalized [N, T, F, 1], True, one)."""
    want = config_lib.image_size(self.config)
    if isinstance(x, (list, tuple)):
      specs, single = np.stack([self.spectrogram(w) for w in x]), False
    else:
      x = np.asarray(x)
      if not np.issubdtype(x.dtype, np.floating) and x.dtype != np.int16:
        raise ValueError(f'audio: dtype {x.dtype}; use float waveforms or '
                         'spectrograms')
      x = x.astype(np.float32)
      if x.shape == want or x.shape[1:] in (want, (*want, 1)):
        single = x.shape == want
        specs = x.reshape(-1, *want)
      elif x.ndim in (1, 2):
        single = x.ndim == 1
        specs = np.stack([self.spectrogram(w) for w in x.reshape(
            -1, x.shape[-1])])
      else:
        t, f = want
        raise ValueError(f'audio: shape {x.shape}; this model takes waveforms '
                         f'[n] or [N, n] at {self.config.data.sample_rate} Hz,'
                         f' or log-mel spectrograms [{t}, {f}], [N, {t}, {f}]'
                         f' or [N, {t}, {f}, 1]')
    c = self.config
    return (transforms.normalize(specs[..., None], c.data.mean, c.data.std),
            True, single)

  def _prepare(self, images) -> tuple[np.ndarray, bool, bool]:
    """-> (float32 [N, *input_shape] normalized, was uint8 (audio: was raw
    log-mel), was one example). input_shape: [H, W, C] for images,
    [T, H, W, C] for clips, [T, F, 1] for spectrograms."""
    if self.config.model.spectrogram:
      return self._prepare_audio(images)
    x = np.asarray(images)
    c = self.config
    want = config_lib.input_shape(c)
    gray = c.model.channels == 1
    single = x.shape == want or (gray and x.shape == want[:-1])
    if single:
      x = x[None]
    if gray and x.ndim == len(want):
      x = x[..., None]
    if x.ndim != 1 + len(want) or tuple(x.shape[1:]) != want or not len(x):
      dims = ', '.join(map(str, want))
      what = 'clip' if c.model.frames else 'image'
      also = ', or either without the channel axis' if gray else ''
      raise ValueError(f'images: shape {np.shape(images)}; this model takes a '
                       f'batch [N, {dims}] (N >= 1) or one {what} [{dims}]'
                       f'{also}')
    if x.dtype == np.uint8:
      return transforms.normalize(x, c.data.mean, c.data.std), True, single
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f'images: dtype {x.dtype}; use uint8 pixels or '
                       'normalized floats')
    return x.astype(np.float32), False, single

  def encode(self, images, pool: str = 'mean') -> np.ndarray:
    """[N, H, W, C] images or [N, T, H, W, C] clips -> pooled encoder
    features [N, D] (all patches visible)."""
    if pool not in POOLS:
      raise ValueError(f'pool={pool!r}: allowed {POOLS}')
    x, _, single = self._prepare(images)
    feats = np.asarray(self._encode(self.params, x, pool=pool))
    return feats[0] if single else feats

  def _require(self, task: str, method: str) -> None:
    if self.config.task != task:
      raise ValueError(f'{method}() needs a model of task {task!r}; this '
                       f'checkpoint is task={self.config.task!r}')

  def classify(self, images) -> np.ndarray:
    """A fine-tuned model's logits [N, K] (without N for one example), on
    the inputs as given (no augmentation, no drop path)."""
    self._require('classify', 'classify')
    x, _, single = self._prepare(images)
    logits = np.asarray(self._logits(self.params, x))
    return logits[0] if single else logits

  @functools.cached_property
  def _logits(self):
    return jax.jit(lambda p, x: nnx.merge(self.graphdef, p)(x))

  def _reconstruct_fn(self, params, x, rng):
    model = nnx.merge(self.graphdef, params)
    return mae_lib.reconstruct(model, x, rng, self.config.target)

  def reconstruct(self, images, rng: int | jax.Array = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """-> (reconstruction like `images`, mask [N, H, W] ([N, T, H, W] for
    clips) with 1 = masked; without N for one example).

    rng: an int seed or a jax PRNG key (jax.random.key); it picks the mask.
    """
    self._require('pretrain', 'reconstruct')
    x, was_uint8, single = self._prepare(images)
    recon, mask = self._reconstruct(self.params, x, _as_key(rng))
    recon, mask = np.asarray(recon), np.asarray(mask)[..., 0]
    c = self.config
    if c.model.spectrogram:  # raw log-mel [N, T, F], like spectrogram()
      recon = recon[..., 0] * c.data.std[0] + c.data.mean[0]
      return ((recon[0], mask[0]) if single else (recon, mask))
    if was_uint8:
      recon = transforms.denormalize(recon, c.data.mean, c.data.std)
    # Back to the input's layout: with or without batch and channel axes.
    return recon.reshape(np.shape(images)), (mask[0] if single else mask)


def _as_key(rng) -> jax.Array:
  if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
    return jax.random.key(int(rng))
  if isinstance(rng, jax.Array) and jax.dtypes.issubdtype(
      rng.dtype, jax.dtypes.prng_key) and rng.shape == ():
    return rng
  if isinstance(rng, (jax.Array, np.ndarray)) and rng.dtype == np.uint32 \
      and rng.shape == (2,):  # a raw key from jax.random.PRNGKey
    return jax.random.wrap_key_data(rng)
  got = (f'an array of shape {rng.shape} and dtype {rng.dtype}'
         if hasattr(rng, 'shape') else repr(rng))
  raise TypeError(f'rng={got}: expected an int seed or one jax PRNG key '
                  '(jax.random.key(0))')


def load(path: str, step: int | None = None) -> Pretrained:
  """Loads the latest (or `step`) checkpoint of a workdir or checkpoint dir."""
  return Pretrained(*restore(path, step))
