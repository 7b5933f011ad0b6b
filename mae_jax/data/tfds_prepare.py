r"""Image folder -> TFDS dataset in array_record format, without TensorFlow.

  python -m mae_jax.data.tfds_prepare --folder=DIR --name=NAME --data_dir=OUT

DIR is laid out as for `data.source='folder'`: DIR/<split>/<class>/*.jpg when
DIR/train exists (every subdirectory is a split), else DIR/<class>/*.jpg is
the train split; class numbers are the sorted train class names, as there.
Writes OUT/NAME/1.0.0/ (NAME-<split>.array_record-*, dataset_info.json,
features.json) with features image, file_name and (with class folders)
label; read it with `tfds.data_source(NAME, split=..., data_dir=OUT)` or
`data.source='tfds'`.

Why not TFDS's own tools (4.9.x, without TensorFlow): the `tfds` CLI imports
TensorFlow at start-up; ImageFolder and store_as_tfds_dataset call tf.io /
tf.data; GeneratorBasedBuilder.download_and_prepare works only while a split's
examples fit its 1 GB in-memory shuffle buffer (beyond, it spills through
tf.io.gfile). This streams shards with TFDS's feature serializer and metadata
writer instead: bounded memory, any size. Files are kept as they are when they
are JPEG/PNG in the wanted mode (RGB, or L for --channels=1), else re-encoded
as PNG (e.g. CMYK JPEGs, palette PNGs, grayscale photos in an RGB dataset).
"""

from __future__ import annotations

from concurrent import futures
import io
import os
import re
import shutil
import sys
import types

from absl import app
from absl import flags
from array_record.python import array_record_module
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mae_jax.data.files import open_folder

_MODES = {1: 'L', 3: 'RGB'}
_KEEP_FORMATS = ('JPEG', 'PNG')
_NAME = re.compile(r'^[a-z][a-z0-9_]*$')  # what tfds.data_source(NAME) parses
_SPLIT = re.compile(r'^[A-Za-z0-9_]+$')   # what split='NAME[:10%]' parses


def _splits(folder: str) -> list[str]:
  """Subdirectories of `folder` when it has a 'train' one, else ['train']."""
  if not os.path.isdir(os.path.join(folder, 'train')):
    return ['train']
  with os.scandir(folder) as entries:
    names = sorted(e.name for e in entries
                   if e.is_dir() and not e.name.startswith('.'))
  bad = [n for n in names if not _SPLIT.match(n)]
  if bad:
    raise ValueError(f'--folder={folder!r}: split directory {bad[0]!r} is not '
                     'a valid TFDS split name (letters, digits, _)')
  return names


def _encoded(path: str, mode: str) -> bytes:
  """The file's bytes if JPEG/PNG in `mode`, else the image as `mode` PNG."""
  try:
    with Image.open(path) as im:  # reads the header only
      if im.format in _KEEP_FORMATS and im.mode == mode:
        with open(path, 'rb') as f:
          return f.read()
      buf = io.BytesIO()
      im.convert(mode).save(buf, format='PNG')
      return buf.getvalue()
  except OSError as e:  # PIL's UnidentifiedImageError, truncated files, ...
    raise ValueError(f'{path}: not a readable image ({e})') from e


def _write_split(src, split: str, name: str, out: str, features, mode: str,
                 shard_bytes: int, seed: int, workers: int):
  """Writes one split's shards in a seeded random order; -> SplitInfo."""
  order = np.random.default_rng(seed).permutation(len(src))
  tmp_paths, lengths, total, size, writer = [], [], 0, 0, None
  with futures.ThreadPoolExecutor(workers) as pool:  # file reads overlap
    for start in range(0, len(order), 256):
      chunk = [int(i) for i in order[start:start + 256]]
      images = pool.map(lambda i: _encoded(src.path(i), mode), chunk)
      for i, image in zip(chunk, images):
        if writer is None or size >= shard_bytes:
          if writer is not None:
            writer.close()
          tmp_paths.append(os.path.join(out, f'{split}.{len(tmp_paths)}.tmp'))
          # group_size:1 = random access, as TFDS writes array_record.
          writer = array_record_module.ArrayRecordWriter(tmp_paths[-1],
                                                         'group_size:1')
          lengths.append(0)
          size = 0
        example = {'image': image, 'file_name': os.path.relpath(
            src.path(i), src.root)}
        if 'label' in features:
          example['label'] = src.label(i)
        record = features.serialize_example(example)
        writer.write(record)
        lengths[-1] += 1
        size += len(record)
        total += len(record)
  writer.close()
  template = tfds.core.ShardedFileTemplate(
      data_dir=out, dataset_name=name, split=split,
      filetype_suffix='array_record')
  for tmp, final in zip(tmp_paths, template.sharded_filepaths(len(tmp_paths))):
    os.rename(tmp, final)
  return tfds.core.SplitInfo(name=split, shard_lengths=lengths,
                             num_bytes=total, filename_template=template)


def prepare(folder: str, name: str, data_dir: str, *, channels: int = 3,
            version: str = '1.0.0', shard_mb: int = 512, seed: int = 0,
            workers: int = 16) -> dict[str, int]:
  """Writes `data_dir/name/version/` from `folder`; -> examples per split."""
  folder, data_dir = os.path.expanduser(folder), os.path.expanduser(data_dir)
  if not _NAME.match(name):
    raise ValueError(f'--name={name!r}: a TFDS name is lower_snake_case '
                     '(a-z, 0-9, _; starts with a letter)')
  try:
    tfds.builder_cls(name)  # the class tfds.data_source(name) would read with
  except tfds.core.DatasetNotFoundError:
    pass
  else:
    raise ValueError(f'--name={name!r} is a TFDS catalog dataset, whose own '
                     'builder would be used to read it; choose another name '
                     f'(e.g. {name}_folder)')
  try:
    tfds.core.Version(version)
  except ValueError as e:
    raise ValueError(f'--version={version!r}: {e}') from e
  if channels not in _MODES:
    raise ValueError(f'--channels={channels}: allowed 1 (grayscale), 3 (RGB)')
  if not os.path.isdir(folder):
    raise ValueError(f'--folder={folder!r}: not a directory')
  final = os.path.join(data_dir, name, version)
  if os.path.exists(final):
    raise ValueError(f'{final} already exists; delete it to prepare it again')
  splits = {}
  for split in _splits(folder):
    try:
      splits[split] = open_folder(types.SimpleNamespace(path=folder), split)
    except ValueError as e:  # its messages name config.data.path
      raise ValueError(str(e).replace('config.data.path=', '--folder=')) from e
  classes = splits['train'].classes  # every split numbers labels as train
  feats = {'image': tfds.features.Image(shape=(None, None, channels)),
           'file_name': tfds.features.Text()}
  if classes:
    feats['label'] = tfds.features.ClassLabel(names=classes)
  features = tfds.features.FeaturesDict(feats)
  out = os.path.join(data_dir, name, f'incomplete.{version}.{os.getpid()}')
  os.makedirs(out)
  try:  # in `out` first: a half-written dataset is never found by TFDS
    infos = [_write_split(src, split, name, out, features, _MODES[channels],
                          shard_mb << 20, seed, workers)
             for split, src in splits.items()]
    tfds.folder_dataset.write_metadata(
        data_dir=out, features=features, split_infos=infos, version=version,
        check_data=False,  # True would read it back with TensorFlow
        description=f'Images of {os.path.abspath(folder)} '
                    '(python -m mae_jax.data.tfds_prepare).',
        supervised_keys=('image', 'label') if classes else None)
    os.rename(out, final)
  except BaseException:
    shutil.rmtree(out, ignore_errors=True)
    if not os.listdir(os.path.dirname(out)):
      os.rmdir(os.path.dirname(out))
    raise
  return {i.name: i.num_examples for i in infos}


_FOLDER = flags.DEFINE_string('folder', None, 'image folder (see above)')
_NAME_FLAG = flags.DEFINE_string('name', None, 'TFDS dataset name to write')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data directory')
_CHANNELS = flags.DEFINE_integer('channels', 3, '3: RGB images, 1: grayscale')
_VERSION = flags.DEFINE_string('version', '1.0.0', 'dataset version')
_SHARD_MB = flags.DEFINE_integer('shard_mb', 512, 'shard file size, MiB')
_SEED = flags.DEFINE_integer('seed', 0, 'seed of the stored example order')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  try:
    counts = prepare(_FOLDER.value, _NAME_FLAG.value, _DATA_DIR.value,
                     channels=_CHANNELS.value, version=_VERSION.value,
                     shard_mb=_SHARD_MB.value, seed=_SEED.value)
  except ValueError as e:
    sys.exit(f'tfds_prepare: {e}')
  print(f'{_NAME_FLAG.value}: ' + ', '.join(
      f'{k} {v}' for k, v in counts.items()) + ' examples in ' +
        os.path.join(_DATA_DIR.value, _NAME_FLAG.value, _VERSION.value))


if __name__ == '__main__':
  flags.mark_flags_as_required(['folder', 'name', 'data_dir'])
  app.run(main)
