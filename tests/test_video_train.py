"""Clips through the whole code path: a training run per masking strategy,
the API and evaluate on a clip workdir, and further pretraining of a
converted official VideoMAE checkpoint (config.init_from)."""

import json

import jax
import ml_collections
import numpy as np
import pytest

import mae_jax
from mae_jax import convert, errors, evaluate, train

from conftest import ROOT, load_config

PTH = ROOT / 'tests' / 'fixtures' / 'videomae_tiny.pth'


def _clip_config(masking='tube', pos_embed='sincos_flat', steps=2):
  """Moving digits, 4 frames of 16x16, 2x4x4 tubelets: a (2, 4, 4) grid."""
  c = load_config('test', f'steps={steps}')
  c.model.variant, c.model.decoder = 'mu/2x4x4', '24d1b'
  c.model.frames, c.model.image_size, c.model.channels = 4, 16, 1
  c.model.cls_token = pos_embed == 'learned_separable'
  c.model.pos_embed = pos_embed
  c.masking.name, c.masking.ratio = masking, 0.5
  c.target = 'norm_pixels_channel'
  c.data.source = 'moving_digits'
  c.data.moving_digits.update(videos=32, video_frames=8, size=16, digit_size=8,
                              speed=(1.0, 1.5))
  c.data.frame_stride = 2
  c.data.mean, c.data.std = (0.05,), (0.2,)
  c.data.hflip = False
  return c


# The strategies whose model differs (decoded subset, sampler network,
# learned tables); every strategy's train step is in test_video_masking.py.
@pytest.mark.parametrize('masking,pos_embed', [
    ('random', 'learned_separable'), ('dual', 'sincos_flat'),
    ('adaptive', 'learned_separable')])
def test_training_run_per_strategy(tmp_path, masking, pos_embed):
  out = train.train(_clip_config(masking, pos_embed), str(tmp_path))
  assert out['step'] == 2
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  losses = [r for r in records if 'loss' in r]
  assert len(losses) == 2 and all(np.isfinite(r['loss']) for r in losses)
  want = {'loss/reconstruction'} | ({'loss/sampler'} if masking == 'adaptive'
                                     else set())
  assert {k for k in losses[0] if k.startswith('loss/')} == want


@pytest.fixture(scope='module')
def clip_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('clips') / 'run'
  c = _clip_config(steps=3)
  c.evals.reconstruction.enabled = True
  c.evals.knn.enabled = True
  train.train(c, str(workdir))
  return workdir


def test_pictures_api_and_evaluate_take_clips(clip_workdir):
  assert (clip_workdir / 'images' / 'reconstruction_0000003.png').exists()
  model = mae_jax.load(str(clip_workdir))
  clips = np.random.default_rng(0).integers(0, 255, (3, 4, 16, 16, 1),
                                            dtype=np.uint8)
  assert model.encode(clips).shape == (3, 32)
  assert model.encode(clips[0, ..., 0]).shape == (32,)  # one clip, no channel
  recon, mask = model.reconstruct(clips, rng=0)
  assert recon.shape == clips.shape and recon.dtype == np.uint8
  assert mask.shape == (3, 4, 16, 16)
  assert (mask == mask[:, :1]).all()  # tube masking: the same in every frame
  np.testing.assert_allclose(mask.mean(), 0.5)
  with pytest.raises(ValueError, match=r'one clip \[4, 16, 16, 1\]'):
    model.encode(clips[:, :2])
  results = evaluate.evaluate(str(clip_workdir), ['knn'])
  assert 0 <= results['knn/accuracy'] <= 1
  moving = evaluate.evaluate(str(clip_workdir), ['knn'], label_key='direction')
  assert set(moving) == {'step', 'knn@direction/accuracy',
                         'knn@direction/random_init_accuracy'}


def test_converted_videomae_keeps_pretraining(tmp_path):
  """Official layout -> mae_jax checkpoint -> a new run starts from it."""
  out = tmp_path / 'converted'
  convert.convert('videomae', str(PTH), str(out), convert.Options(
      frames=4, image_size=16, decoder_heads=2))
  converted = mae_jax.load(str(out))
  c = ml_collections.ConfigDict(json.load(open(out / 'config.json')))
  run = _clip_config(steps=2)
  for key in ('data', 'total_steps', 'batch_size', 'eval_batch_size',
              'checkpoint_every', 'log_every', 'progress', 'evals'):
    c[key] = run[key]
  c.data.mean, c.data.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  c.optim.base_lr, c.total_epochs = 1e-6, 0.0
  c.optim.warmup_steps, c.optim.warmup_epochs = 0, 0.0
  c.init_from = str(out)
  workdir = tmp_path / 'more'
  assert train.train(c, str(workdir))['step'] == 2
  more = mae_jax.load(str(workdir))
  # Two tiny steps away from the converted weights, far from a fresh init.
  diff = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)
                                                 ).max()),
                      converted.params, more.params)
  assert 0 < max(jax.tree.leaves(diff)) < 1e-4
  # A mismatched architecture is refused by name, before anything is written.
  c.model.decoder = '32d2b'
  with pytest.raises(errors.CheckpointError, match='model.decoder'):
    train.train(c, str(tmp_path / 'refused'))
  assert not (tmp_path / 'refused').exists()
