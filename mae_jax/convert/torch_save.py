"""Writing `torch.save` checkpoints without PyTorch.

The file is what torch.save (PyTorch >= 1.6) writes, so that
`torch.load(path, weights_only=True)` (and mmap=True) reads it:

    archive/data.pkl            a protocol-2 pickle of the object; each tensor
                                is torch._utils._rebuild_tensor_v2(storage,
                                0, size, stride, False, OrderedDict()), its
                                storage the persistent id ('storage',
                                torch.FloatStorage, '<key>', 'cpu', numel)
    archive/.format_version     '1'
    archive/.storage_alignment  '64': each storage's bytes start at a
                                multiple of 64 in the file (as torch aligns
                                them, for mmap)
    archive/byteorder           'little'
    archive/data/<key>          the storage's raw bytes, C order
    archive/version             '3'

The pickle is written opcode by opcode here (the pickle module would have
to import torch to name torch's functions): it references only the globals
above and collections.OrderedDict, all on torch's weights_only allowlist.
Objects: dicts (kept as OrderedDict when they are one), lists, tuples,
str, int, float, bool, None, and numpy arrays (float32/64/16, bfloat16,
int8-64, uint8, bool), each array its own storage.

    from mae_jax.convert import torch_save
    torch_save.save({'model': state_dict}, 'model.pth')
"""

from __future__ import annotations

import collections
import io
import os
import struct
import zipfile
from typing import Any

import numpy as np

ALIGNMENT = 64
ARCHIVE = 'archive'
# numpy dtype name -> torch storage class.
_STORAGES = {
    'float32': 'FloatStorage', 'float64': 'DoubleStorage',
    'float16': 'HalfStorage', 'bfloat16': 'BFloat16Storage',
    'int64': 'LongStorage', 'int32': 'IntStorage', 'int16': 'ShortStorage',
    'int8': 'CharStorage', 'uint8': 'ByteStorage', 'bool': 'BoolStorage',
}


class _Pickle:
  """Protocol-2 opcodes for the objects a checkpoint holds."""

  def __init__(self):
    self.out = io.BytesIO()
    self.storages: list[tuple[str, np.ndarray]] = []
    self.out.write(b'\x80\x02')  # PROTO 2

  def write(self, data: bytes) -> None:
    self.out.write(data)

  def global_(self, module: str, name: str) -> None:
    self.write(b'c' + f'{module}\n{name}\n'.encode('ascii'))

  def tuple_(self, items) -> None:
    items = tuple(items)
    if not items:
      self.write(b')')  # EMPTY_TUPLE
      return
    if len(items) <= 3:
      for x in items:
        self.obj(x)
      self.write(b'\x85\x86\x87'[len(items) - 1:len(items)])  # TUPLE1-3
      return
    self.write(b'(')  # MARK
    for x in items:
      self.obj(x)
    self.write(b't')  # TUPLE

  def int_(self, x: int) -> None:
    if 0 <= x < 256:
      self.write(b'K' + bytes([x]))  # BININT1
    elif 0 <= x < 65536:
      self.write(b'M' + struct.pack('<H', x))  # BININT2
    elif -2**31 <= x < 2**31:
      self.write(b'J' + struct.pack('<i', x))  # BININT
    else:
      n = (x.bit_length() + 8) // 8
      self.write(b'\x8a' + bytes([n]) + x.to_bytes(n, 'little', signed=True))

  def str_(self, s: str) -> None:
    data = s.encode('utf-8')
    self.write(b'X' + struct.pack('<I', len(data)) + data)  # BINUNICODE

  def tensor(self, x: np.ndarray) -> None:
    x = np.ascontiguousarray(x)
    if x.dtype.name not in _STORAGES:
      raise TypeError(f'cannot save an array of dtype {x.dtype} as a torch '
                      f'tensor; allowed: {sorted(_STORAGES)}')
    key = str(len(self.storages))
    self.storages.append((key, x))
    # C order (the bytes written), whatever numpy reports for size-1 axes.
    strides = tuple(int(np.prod(x.shape[i + 1:], dtype=np.int64))
                    for i in range(x.ndim))
    self.global_('torch._utils', '_rebuild_tensor_v2')
    self.write(b'(')  # MARK: the arguments
    self.write(b'(')  # MARK: the storage's persistent id
    self.str_('storage')
    self.global_('torch', _STORAGES[x.dtype.name])
    self.str_(key)
    self.str_('cpu')
    self.int_(int(x.size))
    self.write(b't')  # TUPLE
    self.write(b'Q')  # BINPERSID
    self.int_(0)  # storage offset
    self.tuple_(int(d) for d in x.shape)
    self.tuple_(int(s) for s in strides)
    self.write(b'\x89')  # NEWFALSE: requires_grad
    self.global_('collections', 'OrderedDict')  # backward hooks: empty
    self.write(b')R')  # EMPTY_TUPLE, REDUCE
    self.write(b't')  # TUPLE
    self.write(b'R')  # REDUCE

  def obj(self, x: Any) -> None:
    if isinstance(x, np.ndarray) or (hasattr(x, '__array__') and hasattr(
        x, 'dtype') and hasattr(x, 'shape') and not np.isscalar(x)):
      self.tensor(np.asarray(x))
    elif isinstance(x, dict):
      if isinstance(x, collections.OrderedDict):
        self.global_('collections', 'OrderedDict')
        self.write(b')R')
      else:
        self.write(b'}')  # EMPTY_DICT
      if x:
        self.write(b'(')
        for k, v in x.items():
          self.obj(k)
          self.obj(v)
        self.write(b'u')  # SETITEMS
    elif isinstance(x, list):
      self.write(b']')  # EMPTY_LIST
      if x:
        self.write(b'(')
        for v in x:
          self.obj(v)
        self.write(b'e')  # APPENDS
    elif isinstance(x, tuple):
      self.tuple_(x)
    elif x is None:
      self.write(b'N')
    elif isinstance(x, (bool, np.bool_)):
      self.write(b'\x88' if x else b'\x89')  # NEWTRUE / NEWFALSE
    elif isinstance(x, (int, np.integer)):
      self.int_(int(x))
    elif isinstance(x, (float, np.floating)):
      self.write(b'G' + struct.pack('>d', float(x)))  # BINFLOAT
    elif isinstance(x, str):
      self.str_(x)
    else:
      raise TypeError(f'cannot save a {type(x).__name__} in a torch '
                      'checkpoint without torch (allowed: dict, list, tuple, '
                      'str, int, float, bool, None, numpy arrays)')

  def finish(self) -> bytes:
    self.write(b'.')  # STOP
    return self.out.getvalue()


def _aligned_info(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
  """A ZipInfo whose data starts at a multiple of ALIGNMENT: the local
  header (30 bytes + name + extra) is padded with an extra field, as torch
  does."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  start = zf.fp.tell() + 30 + len(name.encode('utf-8')) + 4
  pad = -start % ALIGNMENT
  info.extra = b'FB' + struct.pack('<H', pad) + b'Z' * pad
  return info


def save(obj: Any, path: str | os.PathLike) -> None:
  """Writes `obj` (see the module docstring) as a torch.save file at `path`,
  replacing it only when complete."""
  path = os.fspath(path)
  pickle = _Pickle()
  pickle.obj(obj)
  data = pickle.finish()
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_STORED) as zf:
      def record(name: str, payload: bytes, align: bool = False) -> None:
        name = f'{ARCHIVE}/{name}'
        info = (_aligned_info(zf, name) if align else zipfile.ZipInfo(
            name, date_time=(1980, 1, 1, 0, 0, 0)))
        zf.writestr(info, payload)
      record('data.pkl', data)
      record('.format_version', b'1')
      record('.storage_alignment', str(ALIGNMENT).encode())
      record('byteorder', b'little')
      for key, array in pickle.storages:
        if array.dtype.byteorder == '>':  # little-endian, as byteorder says
          array = array.byteswap().view(array.dtype.newbyteorder('<'))
        record(f'data/{key}', array.tobytes(), align=True)
      record('version', b'3\n')
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
