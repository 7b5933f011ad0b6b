"""Video files listed in a manifest (Kinetics-400 / Something-Something V2
lists made into CSV): the `video_files` source. Records are the files'
bytes, decoded in the pipeline (video.decode_video).
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from mae_jax.data.files import _FileList, _fail
from mae_jax.data.sources import Source


class VideoFileSource(_FileList):
  """Video files listed in a manifest; records are the files' bytes (decoded
  in the pipeline, video.decode_video)."""

  video = True

  def __init__(self, manifest: str, root: str, files: Sequence[str],
               labels: np.ndarray):
    self.name = f'video_files:{manifest}'
    self.manifest, self.root = manifest, root
    self._files = np.array([os.fsencode(f) for f in files], dtype=bytes)
    self._labels = labels.astype(np.int32)
    self.num_classes = int(labels.max()) + 1 if len(labels) else 0


def read_manifest(path: str) -> tuple[list[str], np.ndarray]:
  """A manifest CSV -> (video paths as written, int labels; -1 = none).

  One video per line: `path[,label]` (Kinetics / Something-Something lists
  made into CSV), label a class number >= 0 on every line or on none; an
  optional first line whose first field is `path` is a header; blank lines
  are ignored; quote paths holding commas. Anything else raises ValueError
  naming the file and line.
  """
  files, labels = [], []
  with open(path, newline='', encoding='utf-8') as f:
    for line, row in enumerate(csv.reader(f), start=1):
      row = [x.strip() for x in row]
      if not any(row):
        continue
      if not files and line == 1 and row[0].lower() == 'path':
        continue  # header
      expected = 'expected "path[,label]", label a class number >= 0'
      if len(row) > 2:
        raise ValueError(f'{path} line {line}: {len(row)} fields {row[:4]}; '
                         f'{expected}')
      if not row[0]:
        raise ValueError(f'{path} line {line}: empty path; {expected}')
      label = -1
      if len(row) == 2 and row[1]:
        try:
          label = int(row[1])
        except ValueError:
          label = -2
        if label < 0:
          raise ValueError(f'{path} line {line}: label {row[1]!r} is not a '
                           f'class number >= 0; {expected}')
      if not files:
        first = line
      elif (label < 0) != (labels[0] < 0):
        raise ValueError(f'{path} line {line}: '
                         f'{"no label" if label < 0 else "a label"}, unlike '
                         f'line {first}; label every line or none')
      files.append(row[0])
      labels.append(label)
  return files, np.asarray(labels, np.int64)


def open_video_files(data_cfg, split: str) -> Source:
  """The manifest `data.path` ('{split}' replaced by the split; without it
  the manifest is the train split only). Paths in it are relative to
  data.video_root ('' = the manifest's folder) unless absolute. Files are
  not opened here (a missing one is a bad record, named when read)."""
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
  files, labels = read_manifest(manifest)
  if not files:
    _fail('path', data_cfg.path, f'{manifest} lists no videos')
  root = os.path.expanduser(data_cfg.video_root) or os.path.dirname(manifest)
  return VideoFileSource(manifest, os.path.abspath(root), files, labels)
