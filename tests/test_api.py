"""mae_jax.load and the standalone evaluator CLI on a tiny trained workdir."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import mae_jax
from mae_jax import evaluate, train
from conftest import ROOT, load_config, subprocess_env


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp('run')
  train.train(load_config('test'), str(path))
  return path


@pytest.fixture(scope='module')
def model(workdir):
  return mae_jax.load(str(workdir))


def _images(n=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), np.uint8)


def test_load_from_workdir_checkpoints_or_step_dir(workdir, model):
  assert model.step == 4
  assert model.config.model.variant == 'mu/4'
  for path in (workdir / 'checkpoints', workdir / 'checkpoints' / '2'):
    other = mae_jax.load(str(path))
    assert other.step == (2 if path.name == '2' else 4)
  earlier = mae_jax.load(str(workdir), step=2)
  assert not np.array_equal(earlier.params['patch_embed']['kernel'],
                            model.params['patch_embed']['kernel'])


def test_encode_uint8_and_normalized_float_agree(model):
  x = _images()
  feats = model.encode(x)
  assert feats.shape == (3, 32) and feats.dtype == np.float32
  mean, std = np.array(model.config.data.mean), np.array(model.config.data.std)
  normalized = ((x / 255.0 - mean) / std).astype(np.float32)
  np.testing.assert_allclose(model.encode(normalized), feats, rtol=1e-5, atol=1e-5)
  assert model.encode(x, pool='cls').shape == (3, 32)


def test_reconstruct_keeps_visible_pixels_and_masks_three_quarters(model):
  x = _images()
  recon, mask = model.reconstruct(x, rng=1)
  assert recon.shape == x.shape and recon.dtype == np.uint8
  assert mask.shape == (3, 16, 16)
  np.testing.assert_allclose(mask.mean(axis=(1, 2)), 0.75)  # 12 of 16 patches
  visible = mask == 0
  assert np.abs(recon[visible].astype(int) - x[visible].astype(int)).max() <= 1
  again, mask2 = model.reconstruct(x, rng=1)
  np.testing.assert_array_equal(again, recon)
  _, mask3 = model.reconstruct(x, rng=jax.random.key(7))
  assert not np.array_equal(mask2, mask3)


def test_bad_inputs_are_named(model, tmp_path):
  with pytest.raises(ValueError, match=r'images: shape \(2, 28, 28, 3\).*'
                     r'\[N, 16, 16, 3\] \(N >= 1\) or one image \[16, 16, 3\]'):
    model.encode(np.zeros((2, 28, 28, 3), np.uint8))
  with pytest.raises(ValueError, match=r'images: shape \(0, 16, 16, 3\)'):
    model.encode(np.zeros((0, 16, 16, 3), np.uint8))
  with pytest.raises(ValueError, match='images: dtype int64'):
    model.encode(np.zeros((2, 16, 16, 3), np.int64))
  for rng in (1.5, 'seed', jax.random.split(jax.random.key(0), 2), True):
    with pytest.raises(TypeError, match=r'rng=.*expected an int seed or one '
                       r'jax PRNG key'):
      model.reconstruct(_images(), rng=rng)
  with pytest.raises(FileNotFoundError, match='no checkpoint found'):
    mae_jax.load(str(tmp_path))


def test_one_image_without_batch_axis(model):
  x = _images()
  feat = model.encode(x[1])
  assert feat.shape == (32,)
  np.testing.assert_allclose(feat, model.encode(x)[1], rtol=1e-5, atol=1e-5)
  recon, mask = model.reconstruct(x[1], rng=1)
  assert recon.shape == (16, 16, 3) and mask.shape == (16, 16)
  # A raw uint32 key (jax.random.PRNGKey) picks the same mask as its typed key.
  _, a = model.reconstruct(x[1], rng=jax.random.PRNGKey(3))
  _, b = model.reconstruct(x[1], rng=jax.random.key(3))
  np.testing.assert_array_equal(a, b)


def test_evaluate_runs_on_a_workdir_and_appends_metrics(workdir):
  results = evaluate.evaluate(str(workdir), ['linear_probe', 'knn',
                                             'reconstruction'])
  for key in ('linear_probe/accuracy', 'linear_probe/random_init_accuracy',
              'knn/accuracy', 'knn/random_init_accuracy'):
    assert 0.0 <= results[key] <= 1.0
  assert results['step'] == 4
  last = json.loads((workdir / 'metrics.jsonl').read_text().splitlines()[-1])
  assert last['step'] == 4 and 'knn/accuracy' in last
  assert os.listdir(workdir / 'images') == ['reconstruction_0000004.png']


def test_evaluate_cli_reports_missing_workdir(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'mae_jax.evaluate',
                        f'--workdir={tmp_path}/nothing'], cwd=ROOT,
                       env=subprocess_env(), capture_output=True, text=True)
  assert out.returncode == 1 and 'error: no checkpoint found' in out.stderr
