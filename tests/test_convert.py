"""The converter (python -m mae_jax.convert) and the torch checkpoint reader.

The equivalence fixture (tests/fixtures/make_videomae_fixture.py, run once
with PyTorch and Hugging Face transformers; neither is needed here): a tiny
VideoMAE pretraining checkpoint in the official key layout with random
weights, and transformers' VideoMAEForPreTraining outputs for one clip and
tube mask. The converted mae_jax model must give the same encoder features,
predictions and loss within float32 tolerance.
"""

import collections
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mae_jax
from mae_jax import convert, evaluate, step
from mae_jax.convert import torch_pickle, videomae
from mae_jax.evaluators.features import pooled_features
from mae_jax.models import tokenizers

from conftest import ROOT, subprocess_env

FIXTURES = ROOT / 'tests' / 'fixtures'
PTH = FIXTURES / 'videomae_tiny.pth'
REF = FIXTURES / 'videomae_tiny.npz'
# The tiny model's clip (not stored in the weights) and decoder heads (not an
# official VideoMAE size, so not in the converter's table).
TINY = ['--frames=4', '--image_size=16', '--decoder_heads=2']
TINY_OPTIONS = convert.Options(frames=4, image_size=16, decoder_heads=2)
TOL = 1e-5
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet's, as
STD = np.array([0.229, 0.224, 0.225], np.float32)   # transformers uses


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'mae_jax.convert', *args],
                        env=subprocess_env(), capture_output=True, text=True,
                        cwd=ROOT, timeout=120)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """The fixture checkpoint converted by the command."""
  out = tmp_path_factory.mktemp('convert') / 'videomae_tiny'
  run = _cli('--from=videomae', f'--in={PTH}', f'--out={out}', *TINY)
  assert run.returncode == 0, run.stderr
  assert 'k bias = 0' in run.stdout
  return out


@pytest.fixture(scope='module')
def ref():
  return dict(np.load(REF))


def _worst(ours, theirs) -> float:
  """max |ours - theirs| / max |theirs|: the worst difference relative to
  the output's scale (element-wise ratios blow up near zero)."""
  theirs = np.asarray(theirs, np.float64)
  return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs))
               / np.max(np.abs(theirs)))


# ------------------------------------------------------------- equivalence


@pytest.fixture(scope='module')
def loaded(converted):
  return mae_jax.load(str(converted))


def test_converted_model_matches_transformers_videomae(loaded, ref):
  x = jnp.asarray(ref['clip'])  # [B, T, H, W, C]; transformers' is [B, T, C, H, W]
  bool_masked = ref['bool_masked_pos']
  mask = videomae.mask_from_videomae(bool_masked)
  n_masked = int(bool_masked[0].sum())
  masked_ids = np.argsort(~bool_masked, axis=1, kind='stable')[:, :n_masked]

  @jax.jit
  def outputs(params, x, mask, masked_ids):
    model = nnx.merge(loaded.graphdef, params)
    patches = model.patchify(x)
    pred, _ = model(x, mask)  # every token
    return dict(
        features=model.encode(patches, mask.ids_keep),  # visible, ascending
        features_full=model.encode(patches),
        pooled=pooled_features(loaded.graphdef, params, x, 'mean'),
        pred_masked=tokenizers.gather_tokens(pred, masked_ids),
        loss=step.loss_terms(model, x, mask, 'norm_pixels_channel')[
            'reconstruction'],
        patches=patches, unnormalized=model.patchify(x * STD + MEAN))

  out = jax.device_get(outputs(loaded.params, x, mask,
                               jnp.asarray(masked_ids)))
  features, features_full, pooled, pred_masked, loss, patches = (
      out[k] for k in ('features', 'features_full', 'pooled', 'pred_masked',
                       'loss', 'patches'))

  # transformers' target: the clip un-normalized with ImageNet's mean/std,
  # then per tubelet and channel (x - mean) / (unbiased std + 1e-6). On the
  # same predictions it must give transformers' loss up to rounding, which
  # isolates the eps difference of the normalized-pixel target (see below).
  raw = out['unnormalized'].reshape(*patches.shape[:2], -1, 3)
  target = ((raw - raw.mean(axis=2, keepdims=True))
            / (raw.std(axis=2, ddof=1, keepdims=True) + 1e-6))
  target = np.take_along_axis(target.reshape(patches.shape),
                              masked_ids[..., None], axis=1)
  loss_their_target = np.mean((np.asarray(pred_masked) - target) ** 2)

  worst = {
      'encoder features (visible tokens)': _worst(features,
                                                  ref['encoder_features']),
      'encoder features (no mask)': _worst(features_full,
                                           ref['encoder_features_full']),
      'mean-pooled features (no mask)': _worst(
          pooled, ref['encoder_features_full'].mean(axis=1)),
      'predictions (masked tokens)': _worst(pred_masked, ref['predictions']),
      'loss (mae_jax target)': _worst(loss, ref['loss']),
      'loss (transformers target)': _worst(loss_their_target, ref['loss']),
  }
  print('\nworst relative difference to transformers '
        f'({ref["versions"]}), max|ours - theirs| / max|theirs|:')
  for name, value in worst.items():
    print(f'  {name:36s} {value:.2e}')
  assert features.shape == ref['encoder_features'].shape
  assert pred_masked.shape == ref['predictions'].shape
  # mae_jax normalizes the clip it is given, transformers the un-normalized
  # one: (x - m) / (s + 1e-6) vs (x - m) / (s + 1e-6 / 0.225); on this
  # clip (per-tubelet std about 1) about 3e-6 apart.
  assert all(v < TOL for v in worst.values()), worst
  assert worst['loss (transformers target)'] < 1e-6


def test_api_conversion_equals_the_command(loaded, tmp_path):
  out = tmp_path / 'api'
  result = convert.convert('videomae', str(PTH), str(out), TINY_OPTIONS)
  assert loaded.step == 0
  for x, y in zip(jax.tree.leaves(result.params),
                  jax.tree.leaves(loaded.params)):
    np.testing.assert_array_equal(x, np.asarray(y))
  c = loaded.config
  as_json = lambda config: json.loads(json.dumps(config.to_dict()))
  assert as_json(c) == as_json(result.config)
  assert (c.model.variant, c.model.decoder) == ('mu/2x4x4', '24d2b2h')
  assert (c.model.frames, c.model.image_size, c.model.pos_embed,
          c.model.cls_token, c.masking.name, c.target) == (
              4, 16, 'sincos_flat', False, 'tube', 'norm_pixels_channel')
  # Exactly VideoMAE's (q_bias, 0, v_bias); no decoder_embed bias.
  qkv_bias = result.params['encoder']['layers']['attn']['qkv']['bias']
  assert not qkv_bias[:, 1].any() and qkv_bias[:, 0].any()
  assert not result.params['decoder_embed']['bias'].any()
  # A workdir like training's: config.json is the checkpoint's config.
  assert json.loads((out / 'config.json').read_text()) == as_json(c)
  record = json.loads((out / 'converted.json').read_text())
  assert record['format'] == 'videomae' and record['notes'] == result.notes
  assert sorted(os.listdir(out)) == ['checkpoints', 'config.json',
                                     'converted.json']


def test_evaluate_accepts_the_converted_workdir(converted, tmp_path):
  work = tmp_path / 'w'
  shutil.copytree(converted, work)
  results = evaluate.evaluate(str(work), ['reconstruction'])
  assert results['step'] == 0
  assert np.isfinite(results['reconstruction/loss'])


# ------------------------------------------------------------ torch reader


def test_reader_reads_what_torch_wrote(ref):
  obj = torch_pickle.load(FIXTURES / 'torch_dtypes.pth')
  tensors = obj['tensors']
  assert isinstance(tensors, collections.OrderedDict)
  assert list(tensors) == ['half', 'bfloat16', 'int64', 'bool', 'shared',
                           'offset_view', 'transposed', 'scalar']
  for name, value in tensors.items():
    want = ref[f'torch_dtypes/{name}']
    assert value.dtype == want.dtype, name  # float16 / bfloat16 -> float32
    np.testing.assert_array_equal(value, want, err_msg=name)
  assert obj['epoch'] == 7
  assert obj['args'].model == 'pretrain_videomae_tiny'  # Namespace as data


def test_lazy_reading_reads_nothing_until_asked():
  obj = torch_pickle.load(PTH, lazy=True)
  w = obj['model']['encoder.patch_embed.proj.weight']
  assert isinstance(w, torch_pickle.Tensor)
  assert w.shape == (32, 3, 2, 4, 4) and w.dtype == np.float32
  assert w.numpy().shape == w.shape


class _Global:
  """Pickles as a reference to module.name (torch's functions, without
  torch)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):
    raise AssertionError('never called')


class _Storage:

  def __init__(self, key, array):
    self.key, self.array = key, array


class _Tensor:

  def __init__(self, storage, shape):
    self.storage, self.shape = storage, shape

  def __reduce__(self):
    strides = np.cumprod((1,) + self.shape[::-1])[:-1][::-1]
    return (_Global('torch._utils', '_rebuild_tensor_v2'),
            (self.storage, 0, self.shape, tuple(int(s) for s in strides),
             False, collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler: dispatch table
  dispatch = dict(pickle._Pickler.dispatch)

  def _save_global_ref(self, obj):
    self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode())

  dispatch[_Global] = _save_global_ref

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ('storage', _Global('torch', 'FloatStorage'), obj.key, 'cpu',
              obj.array.size)
    return None


def save_like_torch(obj, path) -> None:
  """torch.save of (dicts of) float32 numpy arrays, without torch: a zip
  torch's own loader reads (for files with missing keys or wrong shapes)."""
  storages = {}

  def tensors(x):
    if isinstance(x, dict):
      return {k: tensors(v) for k, v in x.items()}
    value = np.ascontiguousarray(x, np.float32)
    key = str(len(storages))
    storages[key] = _Storage(key, value)
    return _Tensor(storages[key], tuple(value.shape))

  buf = io.BytesIO()
  _TorchPickler(buf, protocol=2).dump(tensors(obj))
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', buf.getvalue())
    z.writestr('archive/byteorder', 'little')
    for key, s in storages.items():
      z.writestr(f'archive/data/{key}', s.array.tobytes())
    z.writestr('archive/version', '3\n')


@pytest.fixture(scope='module')
def state_dict():
  return torch_pickle.load(PTH)['model']


def test_reader_round_trip_of_a_bare_state_dict(state_dict, tmp_path):
  path = tmp_path / 'bare.pth'
  save_like_torch(state_dict, path)
  again = torch_pickle.load(path)
  assert list(again) == list(state_dict)
  for k in state_dict:
    np.testing.assert_array_equal(again[k], state_dict[k])


# ------------------------------------------------------------- bad files


def _refused(path, match, tmp_path, **kwargs):
  with pytest.raises(convert.ConvertError, match=match) as e:
    convert.convert('videomae', str(path), str(tmp_path / 'out'),
                    TINY_OPTIONS, **kwargs)
  assert not (tmp_path / 'out').exists()  # nothing written
  return str(e.value)


def test_not_a_zip_is_named(tmp_path):
  bad = tmp_path / 'notes.pth'
  bad.write_text('not a checkpoint')
  msg = _refused(bad, 'not a torch.save checkpoint', tmp_path)
  assert str(bad) in msg


def test_truncated_files_are_named(tmp_path):
  data = PTH.read_bytes()
  cut = tmp_path / 'cut.pth'
  cut.write_bytes(data[:len(data) // 2])
  assert str(cut) in _refused(cut, 'truncated', tmp_path)
  # A complete zip directory, but a tensor record shorter than its tensor.
  short = tmp_path / 'short.pth'
  with zipfile.ZipFile(PTH) as src, zipfile.ZipFile(short, 'w') as dst:
    for info in src.infolist():
      body = src.read(info)
      if info.filename.endswith('/data/0'):
        body = body[:len(body) // 2]
      dst.writestr(info.filename, body)
  msg = _refused(short, 'truncated or damaged', tmp_path)
  assert 'data/0' in msg


class _Evil:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
  marker = tmp_path / 'pwned'
  bad = tmp_path / 'evil.pth'
  with zipfile.ZipFile(bad, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps({'model': _Evil(marker)},
                                                protocol=2))
  with pytest.raises(torch_pickle.ForbiddenGlobal, match=r'\.system') as e:
    torch_pickle.load(bad)
  assert 'nothing was executed' in str(e.value)
  _refused(bad, 'refused', tmp_path)
  assert not marker.exists()
  # builtins.eval and friends too, by whatever route.
  code = pickle.dumps(eval, protocol=4)
  bad2 = tmp_path / 'eval.pth'
  with zipfile.ZipFile(bad2, 'w') as z:
    z.writestr('archive/data.pkl', code)
  with pytest.raises(torch_pickle.ForbiddenGlobal, match='builtins.eval'):
    torch_pickle.load(bad2)


class _TamperedTensor(_Tensor):

  def __reduce__(self):  # BUILD afterwards: move the tensor off its storage
    return (*super().__reduce__(), {'offset': 10**9})


def test_a_pickle_cannot_move_a_tensor_off_its_storage(tmp_path):
  storage = _Storage('0', np.zeros(4, np.float32))
  buf = io.BytesIO()
  _TorchPickler(buf, protocol=2).dump({'w': _TamperedTensor(storage, (4,))})
  bad = tmp_path / 'tampered.pth'
  with zipfile.ZipFile(bad, 'w') as z:
    z.writestr('archive/data.pkl', buf.getvalue())
    z.writestr('archive/data/0', storage.array.tobytes())
  with pytest.raises(torch_pickle.ForbiddenGlobal, match='set attributes'):
    torch_pickle.load(bad)


def test_legacy_format_needs_pytorch(tmp_path):
  legacy = tmp_path / 'legacy.pth'  # PyTorch < 1.6: a pickled magic number
  legacy.write_bytes(pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2) + b'.')
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    pytest.skip('PyTorch is installed: it reads the legacy format')
  except ImportError:
    pass
  msg = _refused(legacy, 'legacy', tmp_path)
  assert 'pip install torch' in msg


def test_state_dict_is_found_inside_the_checkpoint():
  w = np.zeros(2, np.float32)
  assert convert.state_dict_of({'model': {'a': w}, 'epoch': 1}, 'f') == {
      'a': w}
  assert convert.state_dict_of({'module.a': w, 'module.b': w}, 'f') == {
      'a': w, 'b': w}  # saved from a DistributedDataParallel wrapper
  assert convert.state_dict_of({'model': {'a': w}, 'model_ema': {'e': w}},
                               'f', key='model_ema') == {'e': w}
  with pytest.raises(convert.ConvertError, match=r"entries: \['epoch'"):
    convert.state_dict_of({'epoch': 3}, 'f')
  with pytest.raises(convert.ConvertError, match="no entry 'ema'"):
    convert.state_dict_of({'model': {'a': w}}, 'f', key='ema')


def test_videomae_v2_giant_decoder_mlp():
  # VideoMAE V2's ViT-g uses mlp_ratio 48/11 in its 512-wide decoder too:
  # 2234, not 4 x 512. Either the decoder spec can say so, or it is refused.
  try:
    assert videomae._decoder_spec(512, 4, 8, 2234) == '512d4b8h2234m'
  except convert.ConvertError as e:
    assert '48/11' in str(e)
  assert videomae._decoder_spec(384, 4, 6, 1536) == '384d4b6h'


def test_missing_unexpected_and_misshaped_keys_are_named(state_dict,
                                                         tmp_path):
  sd = dict(state_dict)
  del sd['decoder.norm.weight']
  sd['encoder.blocks.0.mlp.fc2.weight'] = np.zeros((32, 100), np.float32)
  sd['encoder.blocks.0.gamma_1'] = np.ones(32, np.float32)
  path = tmp_path / 'bad_keys.pth'
  save_like_torch({'model': sd}, path)
  msg = _refused(path, 'missing key', tmp_path)
  assert 'decoder.norm.weight' in msg
  assert ('encoder.blocks.0.mlp.fc2.weight: shape (32, 100), expected '
          '(32, 128)') in msg
  assert 'encoder.blocks.0.gamma_1' in msg and 'layer scale' in msg


def test_a_fine_tuned_checkpoint_is_named(state_dict, tmp_path):
  sd = {k.replace('encoder.', '', 1): v for k, v in state_dict.items()
        if k.startswith('encoder.')}
  path = tmp_path / 'finetuned.pth'
  save_like_torch(sd, path)
  _refused(path, 'fine-tuned', tmp_path)


def test_options_that_do_not_fit_the_weights():
  with pytest.raises(convert.ConvertError, match='tubelet length 2'):
    convert.read('videomae', str(PTH), convert.Options(
        frames=5, image_size=16, decoder_heads=2))
  with pytest.raises(convert.ConvertError, match='has 2 heads'):
    convert.read('videomae', str(PTH), convert.Options(
        frames=4, image_size=16, decoder_heads=2, num_heads=4))
  with pytest.raises(convert.ConvertError, match='--decoder_heads'):
    convert.read('videomae', str(PTH), convert.Options(frames=4,
                                                       image_size=16))
  with pytest.raises(convert.ConvertError, match='unknown format'):
    convert.read('no_such_format', str(PTH))
  with pytest.raises(convert.ConvertError, match='no such config key'):
    convert.read('videomae', str(PTH), convert.Options(
        frames=4, image_size=16, decoder_heads=2,
        overrides={'data.sorce': 'folder'}))


def test_out_must_be_new_or_empty(tmp_path):
  out = tmp_path / 'taken'
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  run = _cli('--from=videomae', f'--in={PTH}', f'--out={out}', *TINY)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1].startswith(
      f'error: --out={out}: exists and is not an empty directory')
  assert os.listdir(out) == ['keep.txt']
  # An empty directory is fine (e.g. made by a job scheduler).
  empty = tmp_path / 'empty'
  empty.mkdir()
  convert.convert('videomae', str(PTH), str(empty), TINY_OPTIONS)
  assert (empty / 'checkpoints' / '0').is_dir()
