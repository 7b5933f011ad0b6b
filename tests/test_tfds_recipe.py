"""The README's recipe "Preparing a TFDS dataset without TensorFlow", run as
written (shell commands in a subprocess) on tiny generated data, then read
back with tfds.data_source and with the project's 'tfds' source."""

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image
import pytest

from mae_jax import config
from mae_jax import data
from conftest import ROOT

# The README's commands, verbatim (DIR and the data dir filled in).
# pylint: disable=line-too-long
FOLDER_RECIPE = """
python -m mae_jax.data.tfds_prepare --folder=images --name=my_images --data_dir=tfds_data
"""
IMAGENET_RECIPE = """
mkdir -p imagenet/train imagenet/validation
tar -xf ILSVRC2012_img_train.tar -C imagenet/train
for f in imagenet/train/*.tar; do mkdir "${f%.tar}" && tar -xf "$f" -C "${f%.tar}" && rm "$f"; done
tar -xf ILSVRC2012_img_val.tar -C imagenet/validation
python -c "import os,tensorflow_datasets as t;d='imagenet/validation';l=t.core.tfds_path('datasets/imagenet2012/validation_labels.txt').read_text().split();[os.renames(f'{d}/{f}',f'{d}/{l[int(f[15:23])-1]}/{f}') for f in os.listdir(d) if f.endswith('.JPEG')]"
python -m mae_jax.data.tfds_prepare --folder=imagenet --name=imagenet2012_folder --data_dir=tfds_data
"""
# pylint: enable=line-too-long


def _run(script: str, cwd) -> str:
  """Runs `script` with bash as a user would: `python` is this interpreter."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu',
             PATH=os.path.dirname(sys.executable) + os.pathsep +
             os.environ.get('PATH', ''))
  r = subprocess.run(['bash', '-euo', 'pipefail', '-c', script], cwd=cwd,
                     env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stdout + r.stderr
  # "Without TensorFlow": it cannot even be imported where the recipe ran.
  tf = subprocess.run(['bash', '-c', 'python -c "import tensorflow"'],
                      cwd=cwd, env=env, capture_output=True, text=True)
  assert tf.returncode != 0 and 'No module named' in tf.stderr, (
      'TensorFlow is importable here; this test proves the recipe without it')
  return r.stdout


def _tfds_records(name, split, data_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.data_source(name, split=split, data_dir=str(data_dir),
                        download=False)
  return {r['file_name'].decode(): r for r in ds}, ds


def _project_source(name, split, data_dir, size, channels):
  d = config.base_config().data
  d.update(source='tfds', tfds_name=name, tfds_data_dir=str(data_dir))
  return data.open_source(d, split, image_size=size, channels=channels)


def test_image_folder_recipe(tmp_path):
  rng = np.random.default_rng(0)
  originals = {}  # (split, 'class/file') -> pixels
  for split, n in (('train', 10), ('test', 3)):
    for c in ('cat', 'dog'):
      os.makedirs(tmp_path / 'images' / split / c)
      for i in range(n):
        pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / 'images' / split / c /
                                     f'{i}.png')
        originals[split, f'{c}/{i}.png'] = pixels
  out = _run(FOLDER_RECIPE, tmp_path)
  assert 'test 6, train 20 examples' in out, out

  for split, n in (('train', 20), ('test', 6)):
    records, ds = _tfds_records('my_images', split, tmp_path / 'tfds_data')
    assert len(ds) == n and ds.dataset_info.features['label'].names == [
        'cat', 'dog']
    for (s, f), pixels in originals.items():
      if s == split:  # right label, pixel-exact image
        assert records[f]['label'] == ('cat', 'dog').index(f.split('/')[0])
        np.testing.assert_array_equal(records[f]['image'], pixels)
  src = _project_source('my_images', 'train', tmp_path / 'tfds_data',
                        (12, 10), 3)
  assert len(src) == 20 and src.num_classes == 2
  r = src[0]
  assert r['image'].shape == (12, 10, 3) and r['label'] in (0, 1)
  assert any(np.array_equal(r['image'], p) for p in originals.values())
  assert 'tensorflow' not in sys.modules


def _jpeg(pixels, mode='RGB') -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def _tar(path, members: dict):
  with tarfile.open(path, 'w') as tar:
    for name, blob in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))


def test_imagenet_manual_download_recipe(tmp_path):
  """Fake ILSVRC2012 archives: 3 validation images (numbers 1, 2, 5: labeled
  by TFDS's own label file) and 2 train images (one CMYK JPEG, as ImageNet
  has some) of each of their synsets."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  val_labels = tfds.core.tfds_path(
      'datasets/imagenet2012/validation_labels.txt').read_text().split()
  val_ids = (1, 2, 5)
  synsets = sorted({val_labels[i - 1] for i in val_ids})
  rng = np.random.default_rng(1)
  blobs, inner = {}, {}
  for s in synsets:
    files = {f'{s}_{i}.JPEG': _jpeg(rng.integers(0, 256, (9, 11, 3),
                                                 dtype=np.uint8),
                                    'CMYK' if i else 'RGB') for i in range(2)}
    blobs.update(files)
    _tar(tmp_path / f'{s}.tar', files)
    inner[f'{s}.tar'] = (tmp_path / f'{s}.tar').read_bytes()
  _tar(tmp_path / 'ILSVRC2012_img_train.tar', inner)
  val = {f'ILSVRC2012_val_{i:08d}.JPEG': _jpeg(
      rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)) for i in val_ids}
  blobs.update(val)
  _tar(tmp_path / 'ILSVRC2012_img_val.tar', val)

  out = _run(IMAGENET_RECIPE, tmp_path)
  assert 'train 6, validation 3 examples' in out, out
  data_dir = tmp_path / 'tfds_data'
  for split, n in (('train', 6), ('validation', 3)):
    records, ds = _tfds_records('imagenet2012_folder', split, data_dir)
    assert len(ds) == n
    for f, r in records.items():
      synset, base = f.split('/')
      expected = val_labels[int(base[15:23]) - 1] if split == 'validation' \
          else base.split('_')[0]
      assert synset == expected and r['label'] == synsets.index(expected)
      with Image.open(io.BytesIO(blobs[base])) as im:  # CMYK -> RGB, exactly
        np.testing.assert_array_equal(r['image'],
                                      np.asarray(im.convert('RGB')))
  src = _project_source('imagenet2012_folder', 'validation', data_dir,
                        (10, 8), 3)
  assert len(src) == 3 and src.num_classes == 3
  assert src[0]['image'].shape == (10, 8, 3)


def test_prepare_errors(tmp_path):
  from mae_jax.data import tfds_prepare  # pylint: disable=g-import-not-at-top
  os.makedirs(tmp_path / 'images' / 'a')
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
      tmp_path / 'images' / 'a' / 'x.png')
  with pytest.raises(ValueError, match='catalog dataset.*mnist_folder'):
    tfds_prepare.prepare(str(tmp_path / 'images'), 'mnist', str(tmp_path))
  tfds_prepare.prepare(str(tmp_path / 'images'), 'tiny_set', str(tmp_path))
  with pytest.raises(ValueError, match='already exists'):
    tfds_prepare.prepare(str(tmp_path / 'images'), 'tiny_set', str(tmp_path))
  (tmp_path / 'images' / 'a' / 'y.png').write_bytes(b'not an image')
  with pytest.raises(ValueError, match=r'y\.png: not a readable image'):
    tfds_prepare.prepare(str(tmp_path / 'images'), 'other', str(tmp_path))
  assert not (tmp_path / 'other').exists()  # nothing half-written is left
