"""The official MAE format both ways: --from=mae (pretraining with and
without the decoder, fine-tuned classifiers) and --to=mae / --to=safetensors.

The fixtures (tests/fixtures/make_mae_fixture.py, run once with PyTorch,
transformers and timm; none of them is needed here): a tiny MAE pretraining
checkpoint in the official key layout with random weights and transformers'
ViTMAEForPreTraining outputs for two images and a `noise=` (MAE's masking:
ids_shuffle = argsort(noise), the first K kept), and two tiny fine-tuned
classifiers (global pool + fc_norm; cls token + norm) with timm's logits.
The converted mae_jax models must give the same features, predictions, loss
and logits within float32 tolerance; exporting must give back the official
tensors exactly.
"""

import collections
import json
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import numpy as st

import mae_jax
from mae_jax import config as config_lib
from mae_jax import convert, evaluate, init_from, masking, optim, sharding
from mae_jax import step as step_lib
from mae_jax.convert import export, torch_pickle, torch_save
from mae_jax.convert import mae as mae_format

from conftest import ROOT, subprocess_env

FIXTURES = ROOT / 'tests' / 'fixtures'
PTH = FIXTURES / 'mae_tiny.pth'
REF = FIXTURES / 'mae_tiny.npz'
FINETUNED = {'mean': FIXTURES / 'mae_finetuned_tiny.pth',
             'cls': FIXTURES / 'mae_finetuned_cls_tiny.pth'}
FINETUNED_REF = FIXTURES / 'mae_finetuned_tiny.npz'
# The tiny decoder (24 wide) is not the official one: its heads are not in
# the converter's table.
TINY = convert.Options(decoder_heads=2)
TOL = 1e-5
DECODER_KEYS = ('mask_token', 'decoder_pos_embed', 'decoder_embed.',
                'decoder_blocks.', 'decoder_norm.', 'decoder_pred.')


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'mae_jax.convert', *args],
                        env=subprocess_env(), capture_output=True, text=True,
                        cwd=ROOT, timeout=120)


def _worst(ours, theirs) -> float:
  """max |ours - theirs| / max |theirs|: the worst difference relative to
  the output's scale."""
  theirs = np.asarray(theirs, np.float64)
  return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs))
               / np.max(np.abs(theirs)))


def _flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f'{prefix}{k}/') if isinstance(v, dict) else
               {f'{prefix}{k}': np.asarray(v)})
  return out


def _assert_same_params(a, b):
  a, b = _flat(a), _flat(b)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope='module')
def ref():
  return dict(np.load(REF))


@pytest.fixture(scope='module')
def official():
  """The fixture's state dict (numpy), in its key order."""
  return torch_pickle.load(PTH)['model']


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  """The fixtures converted: the pretraining one by the command."""
  base = tmp_path_factory.mktemp('convert_mae')
  run = _cli('--from=mae', f'--in={PTH}', f'--out={base / "pre"}',
             '--decoder_heads=2')
  assert run.returncode == 0, run.stderr
  assert 'decoder 24d2b2h' in run.stdout and 'sincos' in run.stdout
  out = {'pre': base / 'pre', 'base': base}
  for pool, path in FINETUNED.items():
    out[pool] = base / f'finetuned_{pool}'
    convert.convert('mae', str(path), str(out[pool]))
  return out


@pytest.fixture(scope='module')
def pre(dirs):
  return mae_jax.load(str(dirs['pre']))


def _mask(noise) -> masking.Mask:
  """MAE's random masking for a given noise: argsort, keep the first K."""
  noise = jnp.asarray(noise)
  keep = masking.num_kept(noise.shape[1], 0.75)
  return masking.from_shuffle(jnp.argsort(noise, axis=1).astype(jnp.int32),
                              keep)


# ------------------------------------------------------------- equivalence


def test_pretraining_checkpoint_matches_transformers_vitmae(pre, ref):
  c = pre.config
  assert (c.task, c.model.variant, c.model.decoder, c.model.image_size,
          c.model.pos_embed, c.model.cls_token, c.target, c.masking.name,
          c.masking.ratio) == ('pretrain', 'mu/8', '24d2b2h', 32, 'sincos',
                               True, 'norm_pixels', 'random', 0.75)
  images = jnp.asarray(ref['images'])
  mask = _mask(ref['noise'])

  @jax.jit
  def outputs(params, images, mask):
    model = nnx.merge(pre.graphdef, params)
    patches = model.patchify(images)
    latent = model.encode(patches, mask.ids_keep)
    return dict(features=latent, features_full=model.encode(patches),
                predictions=model.decode(latent, mask),
                loss=step_lib.loss_terms(model, images, mask,
                                         c.target)['reconstruction'])

  out = jax.device_get(outputs(pre.params, images, mask))
  np.testing.assert_array_equal(mask.mask, ref['mask'])
  np.testing.assert_array_equal(mask.ids_restore, ref['ids_restore'])
  worst = {
      'encoder features (cls + visible)': _worst(out['features'],
                                                 ref['encoder_features']),
      'encoder features (no mask)': _worst(out['features_full'],
                                           ref['encoder_features_full']),
      'predictions (every token)': _worst(out['predictions'],
                                          ref['predictions']),
      'loss (norm_pix_loss)': _worst(out['loss'], ref['loss']),
  }
  print(f'\nworst relative difference to transformers ({ref["versions"]}), '
        'max|ours - theirs| / max|theirs|:')
  for name, value in worst.items():
    print(f'  {name:34s} {value:.2e}')
  assert out['features'].shape == ref['encoder_features'].shape
  assert out['predictions'].shape == ref['predictions'].shape
  assert all(v < TOL for v in worst.values()), worst


def test_api_encode_of_a_converted_dir(pre, ref):
  feats = pre.encode(ref['images'])  # mean of the patch tokens, no mask
  want = ref['encoder_features_full'][:, 1:].mean(axis=1)
  assert feats.shape == (2, 32) and _worst(feats, want) < TOL
  cls = pre.encode(ref['images'], pool='cls')
  assert _worst(cls, ref['encoder_features_full'][:, 0]) < TOL
  recon, m = pre.reconstruct(ref['images'][0], rng=1)
  assert recon.shape == (32, 32, 3) and m.shape == (32, 32)


@pytest.mark.parametrize('pool', ['mean', 'cls'])
def test_finetuned_checkpoint_matches_timm(dirs, pool):
  ref = np.load(FINETUNED_REF)
  model = mae_jax.load(str(dirs[pool]))
  c = model.config
  assert (c.task, c.classify.num_classes, c.classify.pool,
          c.classify.trainable_pos_embed, c.model.variant) == (
              'classify', 10, pool, True, 'mu/8')
  assert not c.evals.reconstruction.enabled
  logits = model.classify(ref['images'])
  worst = _worst(logits, ref[f'logits_{pool}'])
  print(f'\nworst relative difference to timm ({ref["versions"]}), logits '
        f'({pool} pool): {worst:.2e}')
  assert logits.shape == (2, 10) and worst < TOL
  # The learned table: row 0 is the cls token's.
  sd = torch_pickle.load(FINETUNED[pool])['model']
  np.testing.assert_array_equal(model.params['pos_embed']['cls_embed'],
                                sd['pos_embed'][0, :1])
  np.testing.assert_array_equal(model.params['pos_embed']['table'],
                                sd['pos_embed'][0, 1:])


def test_evaluate_accepts_the_converted_workdirs(dirs, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  work = tmp_path / 'w'
  shutil.copytree(dirs['pre'], work)
  results = evaluate.evaluate(str(work), ['reconstruction'])
  assert results['step'] == 0 and np.isfinite(results['reconstruction/loss'])
  work = tmp_path / 'classifier'
  shutil.copytree(dirs['mean'], work)
  results = evaluate.evaluate(str(work), ['classification'])
  assert 0 <= results['classification/top1'] <= results['classification/top5']


# ----------------------------------------------------- encoder-only files


@pytest.fixture(scope='module')
def encoder_only(dirs, official):
  """The fixture without its decoder: mae_pretrain_vit_*.pth's keys."""
  sd = collections.OrderedDict((k, v) for k, v in official.items()
                               if not k.startswith(DECODER_KEYS))
  path = dirs['base'] / 'encoder_only.pth'
  torch_save.save({'model': sd}, path)
  out = dirs['base'] / 'encoder_only'
  converted = convert.convert('mae', str(path), str(out), convert.Options(
      overrides={'model.decoder': '32d1b2h'}))
  return out, converted


def test_encoder_only_checkpoint_gets_a_fresh_decoder(encoder_only, pre,
                                                      ref):
  out, converted = encoder_only
  c = converted.config
  assert (c.task, c.model.decoder) == ('pretrain', '32d1b2h')
  assert not c.evals.reconstruction.enabled
  notes = '\n'.join(converted.notes)
  assert 'encoder-only' in notes and 'freshly initialized' in notes
  assert 'decoder_pred' in notes and 'mask_token' in notes
  model = mae_jax.load(str(out))
  for name in ('encoder', 'patch_embed', 'cls_token', 'encoder_norm'):
    jax.tree.map(np.testing.assert_array_equal, model.params[name],
                 pre.params[name])
  feats = model.encode(ref['images'])
  assert _worst(feats, ref['encoder_features_full'][:, 1:].mean(1)) < TOL
  # The decoder is mae_jax's initialization: finite, mask token ~ N(0, .02).
  assert 0 < float(np.std(model.params['mask_token'])) < 0.1
  # Without an override: the official decoder.
  again = convert.read('mae', str(out.parent / 'encoder_only.pth'))
  assert again.config.model.decoder == mae_format.OFFICIAL_DECODER


def test_fine_tuning_starts_from_an_encoder_only_conversion(encoder_only):
  out, _ = encoder_only
  c = config_lib.base_config()
  c.task = 'classify'
  c.model.variant, c.model.image_size, c.total_steps = 'mu/8', 32, 1
  c.classify.num_classes = 10
  c.evals.reconstruction.enabled = False
  c.init_from = str(out)
  source = mae_jax.load(str(out)).params
  tx = optim.optimizer(c, lambda s: 0.0)
  mesh = sharding.make_mesh(c.mesh)
  with sharding.rules_context(mesh, c.sharding.rules):
    setup = step_lib.StateSetup(c, tx, mesh)
    init = init_from.InitFrom(c, setup)
    params = init.restore(tx, jax.random.key(0)).params
  for name in ('encoder', 'patch_embed', 'cls_token'):
    jax.tree.map(np.testing.assert_array_equal, params[name], source[name])


# ---------------------------------------------------------------- export


def test_export_to_the_official_pth_gives_the_file_back(dirs, official,
                                                        pre, tmp_path):
  out = tmp_path / 'mae.pth'
  run = _cli('--to=mae', f'--in={dirs["pre"]}', f'--out={out}')
  assert run.returncode == 0, run.stderr
  back = torch_pickle.load(out)
  assert list(back) == ['model']
  assert list(back['model']) == list(official)  # models_mae's key order
  for k, v in official.items():
    np.testing.assert_array_equal(back['model'][k], v, err_msg=k)
  # Storages start at multiples of 64 bytes (torch.load(mmap=True)).
  with zipfile.ZipFile(out) as z:
    for info in z.infolist():
      if '/data/' in info.filename:
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        assert start % 64 == 0, info.filename
  # And in again: the same parameters.
  again = convert.read('mae', str(out), TINY)
  _assert_same_params(again.params, pre.params)


@pytest.mark.parametrize('pool', ['mean', 'cls'])
def test_classifier_round_trip(dirs, pool, tmp_path):
  official = torch_pickle.load(FINETUNED[pool])['model']
  out = tmp_path / f'{pool}.pth'
  export.export('mae', str(dirs[pool]), str(out))
  back = torch_pickle.load(out)['model']
  assert list(back) == list(official)
  for k, v in official.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  again = convert.read('mae', str(out))
  _assert_same_params(again.params, mae_jax.load(str(dirs[pool])).params)


def test_official_safetensors_in_and_out(dirs, official, pre, tmp_path):
  out = tmp_path / 'mae.safetensors'
  export.export('mae', str(dirs['pre']), str(out))
  tensors = st.load_file(str(out))
  assert sorted(tensors) == sorted(official)
  for k, v in official.items():
    np.testing.assert_array_equal(tensors[k], v, err_msg=k)
  again = convert.read('mae', str(out), TINY)  # a .safetensors input
  _assert_same_params(again.params, pre.params)


def test_safetensors_export_holds_every_parameter_and_the_config(
    dirs, pre, tmp_path):
  out = tmp_path / 'params.safetensors'
  exported = export.export('safetensors', str(dirs['pre'] / 'checkpoints'),
                           str(out), step=0)
  assert exported.path == str(out) and 'step 0' in exported.notes[0]
  tensors = st.load_file(str(out))
  flat = _flat(pre.params)
  assert sorted(tensors) == sorted(flat)
  assert tensors['encoder/layers/attn/qkv/kernel'].shape == (1, 32, 3, 2, 16)
  for k, v in flat.items():
    np.testing.assert_array_equal(tensors[k], v, err_msg=k)
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  with safe_open(str(out), framework='numpy') as f:
    meta = f.metadata()
  assert meta['format'] == 'mae_jax' and meta['mae_jax_step'] == '0'
  saved = json.loads((dirs['pre'] / 'config.json').read_text())
  assert json.loads(meta['mae_jax_config']) == saved


def test_export_refusals(dirs, tmp_path):
  taken = tmp_path / 'taken.pth'
  taken.write_text('mine')
  with pytest.raises(convert.ConvertError, match='exists'):
    export.export('mae', str(dirs['pre']), str(taken))
  assert taken.read_text() == 'mine'
  with pytest.raises(convert.ConvertError, match='must end in'):
    export.export('mae', str(dirs['pre']), str(tmp_path / 'x.npz'))
  with pytest.raises(convert.ConvertError, match='unknown format'):
    export.export('onnx', str(dirs['pre']), str(tmp_path / 'x.onnx'))
  with pytest.raises(convert.ConvertError, match='no checkpoint'):
    export.export('mae', str(tmp_path), str(tmp_path / 'y.pth'))
  c = config_lib.base_config()
  c.model.frames, c.model.variant = 4, 'mu/2x4x4'
  with pytest.raises(convert.ConvertError, match='video'):
    export.official_state_dict(c, {})
  c = config_lib.base_config()
  c.model.cls_token = False
  with pytest.raises(convert.ConvertError, match='cls token'):
    export.official_state_dict(c, {})
  c.model.cls_token, c.model.pos_embed = True, 'learned_separable'
  with pytest.raises(convert.ConvertError, match='learned_separable'):
    export.official_state_dict(c, {'cls_token': np.zeros((1, 1, 32))})
  run = _cli('--to=mae', '--from=mae', f'--in={dirs["pre"]}',
             f'--out={tmp_path / "z.pth"}')
  assert run.returncode != 0 and '--from' in run.stderr


# ------------------------------------------------------------ torch files


def test_torch_save_writes_what_the_reader_reads(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  obj = {'model': collections.OrderedDict([
      ('w', np.arange(6, dtype=np.float32).reshape(2, 3)),
      ('empty', np.zeros((0, 4), np.float32)),
      ('big_endian', np.arange(3, dtype='>f4')),
      ('ids', np.arange(4, dtype=np.int64)), ('flags', np.array([True, False])),
      ('half', np.ones(2, ml_dtypes.bfloat16))]),
         'epoch': 7, 'lr': 1.5e-4, 'misc': [None, True, 'é', (1, 2, 3, 4),
                                            2**40, -5, 70000]}
  path = tmp_path / 'x.pth'
  torch_save.save(obj, path)
  back = torch_pickle.load(path)
  assert isinstance(back['model'], collections.OrderedDict)
  assert list(back['model']) == list(obj['model'])
  for k, v in obj['model'].items():
    np.testing.assert_array_equal(back['model'][k], np.asarray(v, back[
        'model'][k].dtype), err_msg=k)
  assert back['model']['ids'].dtype == np.int64
  assert (back['epoch'], back['lr'], back['misc']) == (7, 1.5e-4,
                                                       obj['misc'])
  with pytest.raises(TypeError, match='complex'):
    torch_save.save({'z': np.zeros(2, np.complex64)}, tmp_path / 'z.pth')
  assert not (tmp_path / 'z.pth').exists()


# ------------------------------------------------------------- bad files


def _refused(path, match, tmp_path, options=TINY):
  with pytest.raises(convert.ConvertError, match=match) as e:
    convert.convert('mae', str(path), str(tmp_path / 'out'), options)
  assert not (tmp_path / 'out').exists()  # nothing written
  return str(e.value)


def test_a_truncated_file_is_named(tmp_path):
  data = PTH.read_bytes()
  cut = tmp_path / 'cut.pth'
  cut.write_bytes(data[:len(data) // 2])
  assert str(cut) in _refused(cut, 'truncated', tmp_path)
  st_cut = tmp_path / 'cut.safetensors'
  st.save_file({'a': np.zeros(1000, np.float32)}, str(st_cut))
  st_cut.write_bytes(st_cut.read_bytes()[:-100])
  assert str(st_cut) in _refused(st_cut, 'safetensors', tmp_path)


def test_missing_unexpected_and_misshaped_keys_are_named(official, tmp_path):
  sd = collections.OrderedDict(official)
  del sd['decoder_norm.weight']
  sd['blocks.0.mlp.fc2.weight'] = np.zeros((32, 100), np.float32)
  sd['blocks.0.ls1.gamma'] = np.ones(32, np.float32)
  path = tmp_path / 'bad_keys.pth'
  torch_save.save({'model': sd}, path)
  msg = _refused(path, 'missing key', tmp_path)
  assert 'decoder_norm.weight' in msg
  assert ('blocks.0.mlp.fc2.weight: shape (32, 100), expected (32, 128)'
          in msg)
  assert 'blocks.0.ls1.gamma' in msg and 'layer scale' in msg
  assert str(path) in msg


def test_a_learned_table_in_a_pretraining_checkpoint_is_refused(official,
                                                                tmp_path):
  sd = collections.OrderedDict(official)
  sd['pos_embed'] = sd['pos_embed'] + 1e-3
  path = tmp_path / 'learned.pth'
  torch_save.save({'model': sd}, path)
  msg = _refused(path, 'pos_embed is not the fixed 2-D sin-cos table',
                 tmp_path)
  assert '0.001' in msg
  # mae_jax's former channel order (rows first) is read as sincos_yx.
  from mae_jax.models import tokenizers  # pylint: disable=g-import-not-at-top
  for key, width in (('pos_embed', 32), ('decoder_pos_embed', 24)):
    table = tokenizers.sincos_pos_embed((4, 4), width, last_axis_first=False)
    sd[key] = np.concatenate([np.zeros((1, width), np.float32), table])[None]
  torch_save.save({'model': sd}, path)
  assert convert.read('mae', str(path), TINY).config.model.pos_embed == (
      'sincos_yx')


def test_options_and_other_formats(official, tmp_path):
  with pytest.raises(convert.ConvertError, match='--decoder_heads'):
    convert.read('mae', str(PTH))
  with pytest.raises(convert.ConvertError, match='has 2 heads'):
    convert.read('mae', str(PTH), convert.Options(decoder_heads=2,
                                                  num_heads=4))
  with pytest.raises(convert.ConvertError, match='16 patch rows'):
    convert.read('mae', str(PTH), convert.Options(decoder_heads=2,
                                                  image_size=64))
  # A VideoMAE checkpoint, or a fine-tuned one given to videomae.
  with pytest.raises(convert.ConvertError, match='--from=videomae'):
    convert.read('mae', str(FIXTURES / 'videomae_tiny.pth'))
  with pytest.raises(convert.ConvertError, match='fine-tuned'):
    convert.read('videomae', str(FINETUNED['mean']), convert.Options(
        frames=4, image_size=32, decoder_heads=2))
  # A linear probe's head (BatchNorm + Linear) is named.
  sd = collections.OrderedDict((k, v) for k, v in torch_pickle.load(
      FINETUNED['cls'])['model'].items() if not k.startswith('head.'))
  sd['head.1.weight'] = np.zeros((10, 32), np.float32)
  path = tmp_path / 'linprobe.pth'
  torch_save.save({'model': sd}, path)
  with pytest.raises(convert.ConvertError, match='linear-probe'):
    convert.read('mae', str(path))


def test_a_classifier_with_a_fixed_table_exports_it():
  from mae_jax.models import classifier, tokenizers  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.task = 'classify'
  c.model.variant, c.model.image_size = 'mu/8', 32
  c.classify.num_classes, c.classify.trainable_pos_embed = 10, False
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(
      classifier.build(c, nnx.Rngs(0)))))
  assert 'pos_embed' not in params or not params['pos_embed']
  sd, _ = export.official_state_dict(c, params)
  assert list(sd)[:4] == ['cls_token', 'pos_embed', 'patch_embed.proj.weight',
                          'patch_embed.proj.bias']
  assert list(sd)[-4:] == ['fc_norm.weight', 'fc_norm.bias', 'head.weight',
                           'head.bias']
  np.testing.assert_array_equal(sd['pos_embed'][0, 0], 0)
  np.testing.assert_array_equal(sd['pos_embed'][0, 1:],
                                tokenizers.sincos_pos_embed((4, 4), 32))
  np.testing.assert_array_equal(sd['head.weight'],
                                params['head']['kernel'].T)
