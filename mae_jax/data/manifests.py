"""Files listed in a manifest CSV: the `video_files` and `audio_files`
sources (Kinetics / Something-Something lists, AudioSet / ESC-50 lists made
into CSV). Records are the files' bytes, decoded in the pipeline
(video.decode_video, audio.AudioOps).

A manifest has one file per line, `path[,labels]`. Single-label sets
(data.multi_label=False) give one class number per line; multi-label sets
(data.multi_label=True, e.g. AudioSet) give the class numbers of each file
separated by ';' (`clip.flac,0;137;301`), each below data.num_classes, and a
label is then a multi-hot vector float32 [data.num_classes].
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from mae_jax.data.files import _FileList, _fail
from mae_jax.data.sources import Source


class LabelSets:
  """The class sets of a multi-label manifest, stored flat (AudioSet-2M as
  multi-hot bytes would be 1 GB per process): classes of file i are
  values[offsets[i]:offsets[i + 1]]. [i] -> multi-hot float32 [num_classes]."""

  def __init__(self, sets: Sequence[Sequence[int]], num_classes: int):
    self.num_classes = num_classes
    self.offsets = np.cumsum([0] + [len(s) for s in sets], dtype=np.int64)
    self.values = np.fromiter((c for s in sets for c in s), np.int32,
                              int(self.offsets[-1]))

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, i: int) -> np.ndarray:
    hot = np.zeros((self.num_classes,), np.float32)
    hot[self.values[self.offsets[i]:self.offsets[i + 1]]] = 1.0
    return hot


class ManifestSource(_FileList):
  """Files listed in a manifest; records are the files' bytes. labels: int
  [N] (-1: unlabelled) or LabelSets (multi-label)."""

  def __init__(self, kind: str, manifest: str, root: str,
               files: Sequence[str], labels):
    self.name = f'{kind}:{manifest}'
    self.video, self.audio = kind == 'video_files', kind == 'audio_files'
    self.manifest, self.root = manifest, root
    self._files = np.array([os.fsencode(f) for f in files], dtype=bytes)
    self.multi_label = isinstance(labels, LabelSets)
    if self.multi_label:
      self._sets = labels
      self.num_classes = labels.num_classes
      self.label_shape = (labels.num_classes,)
    else:
      self._labels = labels.astype(np.int32)
      self.num_classes = int(labels.max()) + 1 if len(labels) else 0

  def label(self, index: int):
    if self.multi_label:
      return self._sets[index]
    return int(self._labels[index])


def _classes(field: str, num_classes: int) -> list[int] | None:
  """'3;17' -> [3, 17]; None if a number is not a class of the set."""
  out = []
  for part in field.split(';'):
    try:
      c = int(part.strip())
    except ValueError:
      return None
    if not 0 <= c < num_classes:
      return None
    out.append(c)
  return out


def read_manifest(path: str, num_classes: int = 0):
  """A manifest CSV -> (paths as written, labels).

  num_classes = 0: single-label; labels int64 [N], a class number >= 0 per
  line, or -1 everywhere for an unlabelled list. num_classes = K > 0:
  multi-label; labels a LabelSets of the ';'-separated class numbers
  (each < K), or None for an unlabelled list. Label every line or none; an
  optional first line whose first field is `path` is a header; blank lines
  are ignored; quote paths holding commas. Anything else raises ValueError
  naming the file and line.
  """
  multi = num_classes > 0
  expected = ('expected "path[,labels]", labels class numbers in [0, '
              f'{num_classes}) separated by ";" (config.data.num_classes)'
              if multi else
              'expected "path[,label]", label a class number >= 0 '
              '(several labels per file: config.data.multi_label=True)')
  files, labels, first = [], [], 0
  with open(path, newline='', encoding='utf-8') as f:
    for line, row in enumerate(csv.reader(f), start=1):
      row = [x.strip() for x in row]
      if not any(row):
        continue
      if not files and line == 1 and row[0].lower() == 'path':
        continue  # header
      if len(row) > 2:
        raise ValueError(f'{path} line {line}: {len(row)} fields {row[:4]}; '
                         f'{expected}')
      if not row[0]:
        raise ValueError(f'{path} line {line}: empty path; {expected}')
      label = None
      if len(row) == 2 and row[1]:
        label = (_classes(row[1], num_classes) if multi
                 else _classes(row[1], 2**31 - 1))
        if label is None or (not multi and len(label) != 1):
          what = 'a set of class numbers' if multi else 'a class number >= 0'
          raise ValueError(f'{path} line {line}: label {row[1]!r} is not '
                           f'{what}; {expected}')
      if not files:
        first = line
      elif (label is None) != (labels[0] is None):
        raise ValueError(f'{path} line {line}: '
                         f'{"no label" if label is None else "a label"}, '
                         f'unlike line {first}; label every line or none')
      files.append(row[0])
      labels.append(label)
  if multi:
    return files, (LabelSets(labels, num_classes)
                   if labels and labels[0] is not None else None)
  return files, np.asarray([-1 if x is None else x[0] for x in labels],
                           np.int64)


def open_manifest(kind: str, data_cfg, split: str) -> Source:
  """The manifest `data.path` ('{split}' replaced by the split; without it
  the manifest is the train split only) for source `kind`. Paths in it are
  relative to data.video_root ('' = the manifest's folder) unless absolute.
  Files are not opened here (a missing one is a bad record, named when
  read)."""
  pattern = os.path.expanduser(data_cfg.path)
  if '{split}' not in pattern and split != 'train':
    _fail('path', data_cfg.path,
          f"has no '{{split}}' to select split {split!r}; without it the "
          'manifest is the train split only')
  manifest = os.path.abspath(pattern.replace('{split}', split))
  if not os.path.isfile(manifest):
    _fail('path', data_cfg.path,
          f'no manifest {manifest} for split {split!r} (a CSV of '
          '"path[,label]" lines)')
  num_classes = data_cfg.num_classes if data_cfg.multi_label else 0
  files, labels = read_manifest(manifest, num_classes)
  if not files:
    _fail('path', data_cfg.path, f'{manifest} lists no files')
  if labels is None:
    labels = np.full((len(files),), -1, np.int64)
  root = os.path.expanduser(data_cfg.video_root) or os.path.dirname(manifest)
  return ManifestSource(kind, manifest, os.path.abspath(root), files, labels)
