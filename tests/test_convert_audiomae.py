"""The AudioMAE format: --from=audiomae against the official code.

The fixtures (tests/fixtures/make_audiomae_fixture.py, run once with
PyTorch and timm on facebookresearch/AudioMAE's own models_mae.py,
models_vit.py and timm_patch/swin_transformer.py; none of them is needed
here): tiny pretraining checkpoints with the local (Swin, decoder_mode 1)
and the global (ViT, decoder_mode 0) decoder, and a fine-tuned classifier,
random values in every tensor, with the official outputs for two
spectrograms and a masking noise. The converted mae_jax models must give
the same encoder features, predictions, loss and logits within float32
tolerance.
"""

import collections
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mae_jax
from mae_jax import convert, masking, step as step_lib, tasks
from mae_jax.convert import torch_pickle, torch_save

from conftest import ROOT, subprocess_env

FIXTURES = ROOT / 'tests' / 'fixtures'
PTH = {mode: FIXTURES / f'audiomae_tiny_{mode}.pth'
       for mode in ('local', 'global', 'finetuned')}
REF = FIXTURES / 'audiomae_tiny.npz'
SIZE = (64, 32)  # the tiny spectrograms: F = 32, not AudioMAE's 128
OPTIONS = {'local': convert.Options(image_size=SIZE),
           # The tiny ViT decoder (16 wide) is not the official one.
           'global': convert.Options(image_size=SIZE, decoder_heads=2),
           'finetuned': convert.Options(image_size=SIZE)}
TOL = 1e-5
DECODER_KEYS = ('mask_token', 'decoder_pos_embed', 'decoder_embed.',
                'decoder_blocks.', 'decoder_norm.', 'decoder_pred.')


def _worst(ours, theirs) -> float:
  """max |ours - theirs| / max |theirs|."""
  theirs = np.asarray(theirs, np.float64)
  return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs))
               / np.max(np.abs(theirs)))


@pytest.fixture(scope='module')
def ref():
  return dict(np.load(REF))


@pytest.fixture(scope='module')
def official():
  return {mode: torch_pickle.load(path)['model']
          for mode, path in PTH.items()}


def _model(converted):
  """The mae_jax model of a Converted, its parameters set."""
  c = converted.config
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: tasks.get(c).build(c, nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray,
                                               converted.params))
  return nnx.merge(graphdef, state)


def _mask(noise) -> masking.Mask:
  """AudioMAE's random_masking for this noise: argsort, the first
  int(L (1 - 0.8)) kept."""
  noise = jnp.asarray(noise)
  keep = masking.num_kept(noise.shape[1], 0.8)
  return masking.from_shuffle(jnp.argsort(noise, axis=1).astype(jnp.int32),
                              keep)


@jax.jit
def _outputs(model, x, mask):
  patches = model.patchify(x)
  latent = model.encode(patches, mask.ids_keep)
  return dict(latent=latent, latent_full=model.encode(patches),
              pred=model.decode(latent, mask),
              loss=step_lib.loss_terms(model, x, mask,
                                       'norm_pixels')['reconstruction'])


# ------------------------------------------------------------- equivalence


@pytest.mark.parametrize('mode', ['local', 'global'])
def test_pretraining_checkpoint_matches_the_official_model(mode, ref):
  converted = convert.read('audiomae', str(PTH[mode]), OPTIONS[mode])
  c = converted.config
  assert (c.task, c.model.variant, c.model.image_size, c.model.channels,
          c.model.spectrogram, c.model.pos_embed, c.model.cls_token,
          c.masking.name, c.masking.ratio, c.target) == (
              'pretrain', 'mu/4', (64, 32), 1, True, 'sincos_audiomae', True,
              'random', 0.8, 'norm_pixels')
  assert (c.model.decoder, c.model.decoder_attention) == (
      ('32d2b16h', 'local') if mode == 'local' else ('16d2b2h', 'global'))
  if mode == 'local':
    assert (tuple(c.model.decoder_window), tuple(c.model.decoder_shift)) == (
        (4, 4), (2, 0))
  mask = _mask(ref['noise'])
  np.testing.assert_array_equal(mask.mask, ref[f'{mode}/mask'])
  np.testing.assert_array_equal(mask.ids_restore, ref[f'{mode}/ids_restore'])
  out = jax.device_get(_outputs(_model(converted),
                                jnp.asarray(ref['spectrograms']), mask))
  worst = {
      'encoder latent (cls + kept)': _worst(out['latent'],
                                            ref[f'{mode}/latent']),
      'encoder latent (no mask)': _worst(out['latent_full'],
                                         ref[f'{mode}/latent_full']),
      'predictions (every token)': _worst(out['pred'], ref[f'{mode}/pred']),
      'loss (norm_pix_loss)': _worst(out['loss'], ref[f'{mode}/loss']),
  }
  print(f'\nworst relative difference to the official AudioMAE, decoder '
        f'{mode} ({ref["versions"]}):')
  for name, value in worst.items():
    print(f'  {name:30s} {value:.2e}')
  assert out['pred'].shape == ref[f'{mode}/pred'].shape == (2, 128, 16)
  assert all(v < TOL for v in worst.values()), worst


def test_the_fixture_exercises_the_shift_and_the_swapped_table(ref):
  """Without the shifted blocks, or with the standard sin-cos table, the
  outputs are far from the official ones: the match above is not luck."""
  mask = _mask(ref['noise'])
  x = jnp.asarray(ref['spectrograms'])
  for key, value, output in (('model.decoder_shift', (0, 0), 'pred'),
                             ('model.pos_embed', 'sincos', 'latent')):
    converted = convert.read('audiomae', str(PTH['local']), convert.Options(
        image_size=SIZE, overrides={key: value}))
    out = _outputs(_model(converted), x, mask)
    assert _worst(out[output], ref[f'local/{output}']) > 1e-3, key


def test_finetuned_classifier_matches_the_official_model(ref):
  converted = convert.read('audiomae', str(PTH['finetuned']),
                           OPTIONS['finetuned'])
  c = converted.config
  assert (c.task, c.classify.num_classes, c.classify.pool,
          c.classify.trainable_pos_embed, c.model.variant,
          c.model.image_size, c.model.channels, c.model.spectrogram) == (
              'classify', 7, 'mean', True, 'mu/4', (64, 32), 1, True)
  assert any('multi-label' in n for n in converted.notes)
  logits = jax.jit(lambda m, x: m(x))(_model(converted),
                                      jnp.asarray(ref['spectrograms']))
  worst = _worst(logits, ref['finetuned/logits'])
  print(f'\nworst relative difference to the official AudioMAE classifier, '
        f'logits: {worst:.2e}')
  assert logits.shape == (2, 7) and worst < TOL


def test_the_command_writes_a_workdir_that_loads(ref, tmp_path):
  out = tmp_path / 'local'
  run = subprocess.run(
      [sys.executable, '-m', 'mae_jax.convert', '--from=audiomae',
       f'--in={PTH["local"]}', f'--out={out}', '--image_size=64,32'],
      env=subprocess_env(), capture_output=True, text=True, cwd=ROOT,
      timeout=120)
  assert run.returncode == 0, run.stderr
  assert 'decoder_mode 1' in run.stdout and 'sincos_audiomae' in run.stdout
  loaded = mae_jax.load(str(out))
  assert loaded.config.model.decoder_attention == 'local'
  model = nnx.merge(loaded.graphdef, loaded.params)
  mask = _mask(ref['noise'])
  pred = _outputs(model, jnp.asarray(ref['spectrograms']), mask)['pred']
  assert _worst(pred, ref['local/pred']) < TOL
  # The official MAE layout has no place for the local decoder.
  from mae_jax.convert import ConvertError, export  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConvertError, match=r"decoder_attention='local': .*"
                     r'--to=safetensors'):
    export.export('mae', str(out), str(tmp_path / 'x.pth'))
  assert not (tmp_path / 'x.pth').exists()


def test_encoder_only_file_gets_a_fresh_local_decoder(official, ref,
                                                      tmp_path):
  sd = collections.OrderedDict(
      (k, v) for k, v in official['local'].items()
      if not k.startswith(DECODER_KEYS))
  path = tmp_path / 'encoder_only.pth'
  torch_save.save({'model': sd}, path)
  converted = convert.read('audiomae', str(path), convert.Options(
      image_size=SIZE, overrides={'model.decoder': '32d1b16h'}))
  c = converted.config
  assert (c.task, c.model.decoder, c.model.decoder_attention) == (
      'pretrain', '32d1b16h', 'local')
  assert not c.evals.reconstruction.enabled
  notes = '\n'.join(converted.notes)
  assert 'encoder-only' in notes and 'freshly initialized' in notes
  out = _outputs(_model(converted), jnp.asarray(ref['spectrograms']),
                 _mask(ref['noise']))
  assert _worst(out['latent_full'], ref['local/latent_full']) < TOL
  # Without an override: AudioMAE's decoder (only read, not built).
  assert convert.get_format('audiomae').read(
      sd, convert.Options(image_size=SIZE)).config.model.decoder == (
          '512d16b16h')


# ------------------------------------------------------------- bad files


def _refused(sd, match: str, options=None) -> None:
  fmt = convert.get_format('audiomae')
  with pytest.raises(convert.ConvertError, match=match):
    fmt.read(sd, options or convert.Options(image_size=SIZE))


def test_bad_files_name_their_keys(official):
  sd = official['local']
  drop = {k: v for k, v in sd.items()
          if k != 'decoder_blocks.1.attn.meta_mlp.fc2.bias'}
  _refused(drop, r'1 missing key.*decoder_blocks\.1\.attn\.meta_mlp\.fc2'
           r'\.bias')
  extra = {**sd, 'decoder_blocks.0.norm3.weight': np.ones(32, np.float32)}
  _refused(extra, r'unexpected key.*norm3[\s\S]*extra_norm')
  shaped = {**sd, 'decoder_blocks.1.attn.tau': np.ones(8, np.float32)}
  _refused(shaped, r'decoder_blocks\.1\.attn\.tau: shape \(8,\), expected '
           r'\(16,\)')
  learned = {**sd, 'pos_embed': np.random.default_rng(0).normal(
      size=(1, 129, 32)).astype(np.float32)}
  _refused(learned, r"pos_embed is not AudioMAE's fixed sin-cos table")
  # Without --image_size: 128 mel bins assumed (a 4 x 32 grid), whose
  # table is not the file's.
  _refused(sd, r'4x32[\s\S]*--image_size', convert.Options())
  _refused(sd, 'use_custom_patch', convert.Options(
      checkpoint_args={'use_custom_patch': True}))
  _refused(sd, r'args\.decoder_mode=0', convert.Options(
      image_size=SIZE, checkpoint_args={'decoder_mode': 0}))
  rgb = {**sd, 'patch_embed.proj.weight': np.zeros((32, 3, 4, 4),
                                                   np.float32)}
  _refused(rgb, '3 input channels.*--from=mae')


def test_no_shift_and_official_sizes_from_the_checkpoint_args(official):
  fmt = convert.get_format('audiomae')
  converted = fmt.read(official['local'], convert.Options(
      image_size=SIZE, checkpoint_args={'no_shift': True, 'mask_ratio': 0.7,
                                        'norm_pix_loss': False}))
  c = converted.config
  assert (tuple(c.model.decoder_shift), c.masking.ratio, c.target) == (
      (0, 0), 0.7, 'pixels')
