"""Reading `torch.save` checkpoints without PyTorch, and without running code.

A `torch.save` file (PyTorch >= 1.6) is a zip archive:

    <name>/data.pkl        a pickle of the saved object; each tensor in it is
                           torch._utils._rebuild_tensor_v2(storage, offset,
                           size, stride, ...) with the storage a "persistent
                           id" ('storage', torch.FloatStorage, key, device, numel)
    <name>/data/<key>      the raw bytes of storage <key>
    <name>/byteorder       'little' or 'big' (absent in old files: little)

A pickle can call any importable function, so a checkpoint from an unknown
source must never go through plain `pickle.load` (or `torch.load` with
weights_only=False). Here the unpickler resolves only the names a checkpoint
of tensors and plain containers needs, each mapped to a function of this
module that builds data (never to the real torch or builtins function); any
other global (os.system, builtins.eval, ...) stops the load with an error
naming it, before anything is called. Tensors come back as `Tensor` objects
that read their bytes from the zip only when asked (`.numpy()`), so an
optimizer state saved beside the weights costs nothing.

Files this cannot read (the legacy pre-1.6 format, or a pickle that needs
other names) are read with PyTorch when it is installed (`torch.load` with
weights_only=True, its own restricted unpickler), else the error says to
`pip install torch`.

    from mae_jax.convert import torch_pickle
    sd = torch_pickle.load('checkpoint.pth')            # numpy arrays
    lazy = torch_pickle.load('checkpoint.pth', lazy=True)  # Tensor objects
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pickle
import zipfile
from typing import Any

import numpy as np

from mae_jax.convert import ConvertError


class CheckpointFileError(ConvertError):
  """A file that is not a readable torch checkpoint (damaged, truncated,
  another format) or that references code outside the allowed names."""


class ForbiddenGlobal(CheckpointFileError, pickle.UnpicklingError):
  """The pickle references a global that is not on the allowlist."""


# torch storage class -> numpy dtype (bfloat16 through ml_dtypes, jax's).
def _bfloat16():
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32,
    'HalfStorage': np.float16, 'BFloat16Storage': 'bfloat16',
    'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8,
    'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'ComplexFloatStorage': np.complex64, 'ComplexDoubleStorage': np.complex128,
    'UntypedStorage': np.uint8,
}
_TORCH_DTYPES = ('float64', 'float32', 'float16', 'bfloat16', 'int64',
                 'int32', 'int16', 'int8', 'uint8', 'bool', 'complex64',
                 'complex128', 'double', 'float', 'half', 'long', 'int',
                 'short')
_HALF = ('float16', 'bfloat16')


def _np_dtype(name) -> np.dtype:
  return _bfloat16() if name == 'bfloat16' else np.dtype(name)


class _Sealed:
  """Objects of this module that a pickle may put on its stack but must not
  change: the pickle's BUILD opcode (which sets attributes of the object on
  the stack) is refused for them."""

  def __setstate__(self, state):
    raise ForbiddenGlobal('the checkpoint\'s pickle tries to set attributes '
                          f'of a {type(self).__name__}: refused')


@dataclasses.dataclass(frozen=True)
class _StorageType(_Sealed):
  """What `torch.FloatStorage` & co. unpickle to: just their dtype."""
  name: str

  @property
  def dtype(self) -> np.dtype:
    return _np_dtype(_STORAGE_DTYPES[self.name])


@dataclasses.dataclass(frozen=True)
class _Marker(_Sealed):
  """What torch.Tensor / nn.Parameter unpickle to (never called)."""
  name: str


@dataclasses.dataclass
class _Storage(_Sealed):
  reader: '_ZipReader'
  key: str
  dtype: np.dtype
  numel: int


class Tensor(_Sealed):
  """A tensor of the checkpoint, read on demand.

  .shape, .dtype (numpy; bfloat16 is ml_dtypes.bfloat16), .numpy() -> a
  numpy array (float16 and bfloat16 -> float32 unless upcast=False).
  """

  def __init__(self, storage: _Storage, offset: int, shape, stride):
    self._storage = storage
    self.offset = int(offset)
    self.shape = tuple(int(s) for s in shape)
    self.stride = tuple(int(s) for s in stride)
    self.dtype = storage.dtype
    self._check()

  def _check(self) -> None:
    """The tensor lies inside its storage (else reading it would read
    memory outside the storage's bytes)."""
    storage = self._storage
    if len(self.stride) != len(self.shape) or self.offset < 0 or any(
        s < 0 for s in self.shape + self.stride):
      raise CheckpointFileError(
          f'{storage.reader.path}: a tensor of storage {storage.key} has '
          f'shape {self.shape}, stride {self.stride}, offset {self.offset}: '
          'the file is damaged')
    if math.prod(self.shape):
      last = self.offset + sum((n - 1) * s for n, s in zip(self.shape,
                                                           self.stride))
      if last >= storage.numel:
        raise CheckpointFileError(
            f'{storage.reader.path}: a tensor of shape {self.shape} reaches '
            f'element {last} of storage {storage.key}, which holds '
            f'{storage.numel}: the file is damaged')

  def __repr__(self) -> str:
    return f'Tensor(shape={self.shape}, dtype={self.dtype})'

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  def numpy(self, upcast: bool = True) -> np.ndarray:
    self._check()
    data = self._storage.reader.storage_array(self._storage)
    if self.size:
      assert data.size == self._storage.numel and not data.dtype.hasobject
      out = np.lib.stride_tricks.as_strided(
          data[self.offset:], shape=self.shape,
          strides=tuple(s * data.itemsize for s in self.stride),
          writeable=False)
    else:
      out = np.zeros(self.shape, data.dtype)
    out = np.array(out)  # a contiguous copy, independent of the storage
    if upcast and out.dtype.name in _HALF:
      out = out.astype(np.float32)
    return out


# ------------------------------------------------- what the pickle may name


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride,
  requires_grad, backward_hooks[, metadata]) -> Tensor."""
  del unused  # requires_grad, hooks, metadata: nothing to read
  if not isinstance(storage, _Storage):
    raise CheckpointFileError('a tensor without a storage record: the '
                              'checkpoint is damaged or not from torch.save')
  return Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
  """torch._utils._rebuild_parameter(_with_state): the tensor itself."""
  del unused
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  """torch._tensor._rebuild_from_type_v2: a Tensor (or Parameter) built by
  an allowed function `func`."""
  del state
  if not (callable(func) and func in _REBUILDERS) or not isinstance(
      new_type, _Marker):
    raise ForbiddenGlobal('the checkpoint rebuilds a tensor of a custom type; '
                          'only torch.Tensor and nn.Parameter are read')
  return func(*args)


_REBUILDERS = (_rebuild_tensor, _rebuild_parameter)


class Record:
  """What argparse.Namespace unpickles to (VideoMAE's checkpoints keep the
  training arguments in 'args'): a plain attribute holder, nothing runs."""

  def __init__(self, **kwargs):
    self.__dict__.update(kwargs)

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.__dict__.update(state)

  def __repr__(self) -> str:
    return f'Record({self.__dict__!r})'


def _codecs_encode(text, encoding='utf-8'):
  """_codecs.encode, as protocol 2 pickles use it for bytes (latin1)."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1',
                                                   'utf-8', 'utf8'):
    raise ForbiddenGlobal('_codecs.encode with arguments a checkpoint does '
                          'not use')
  return text.encode(encoding)


def _np_scalar(dtype, data=b''):
  """numpy.core.multiarray.scalar for numeric dtypes (no object arrays)."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(
      data, bytes):
    raise ForbiddenGlobal('a numpy scalar of a non-numeric type')
  return np.frombuffer(data, dtype)[0]


def _np_dtype_ctor(name, align=False, copy=False):
  del align, copy
  if not isinstance(name, str):
    raise ForbiddenGlobal('numpy.dtype of a non-string')
  dt = np.dtype(name)
  if dt.hasobject:
    raise ForbiddenGlobal('numpy.dtype of Python objects')
  return dt


def _ordered_dict(*args):
  return collections.OrderedDict(*args)


def _allowed() -> dict[tuple[str, str], Any]:
  allowed = {
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
      ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
      ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
      ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
      ('torch', 'Tensor'): _Marker('torch.Tensor'),
      ('torch.nn.parameter', 'Parameter'): _Marker('torch.nn.Parameter'),
      ('torch', 'Size'): tuple,
      ('collections', 'OrderedDict'): _ordered_dict,
      ('builtins', 'set'): set,
      ('builtins', 'frozenset'): frozenset,
      ('builtins', 'complex'): complex,
      ('builtins', 'slice'): slice,
      ('_codecs', 'encode'): _codecs_encode,
      ('argparse', 'Namespace'): Record,
      ('numpy', 'dtype'): _np_dtype_ctor,
      ('numpy.core.multiarray', 'scalar'): _np_scalar,
      ('numpy._core.multiarray', 'scalar'): _np_scalar,
  }
  for name in _STORAGE_DTYPES:
    allowed[('torch', name)] = _StorageType(name)
  allowed[('torch.storage', 'UntypedStorage')] = _StorageType('UntypedStorage')
  for name in _TORCH_DTYPES:  # dtypes, e.g. in an optimizer's state
    allowed[('torch', name)] = f'torch.{name}'
  return allowed


_ALLOWED = _allowed()


class _Unpickler(pickle.Unpickler):

  def __init__(self, data: bytes, reader: '_ZipReader'):
    super().__init__(io.BytesIO(data))
    self._reader = reader

  def find_class(self, module: str, name: str):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise ForbiddenGlobal(
          f'{self._reader.path}: the checkpoint\'s pickle references '
          f'{module}.{name}, which a checkpoint of tensors does not need and '
          'which could run code; refused, nothing was executed. Only tensors, '
          'plain containers, numbers and strings are read (and '
          'argparse.Namespace as plain data). If you trust the file, load it '
          'with PyTorch and re-save only the weights: torch.save(torch.load('
          'path, weights_only=False)["model"], "weights.pth")') from None

  def persistent_load(self, pid):
    if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != 'storage'
        or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
        or not isinstance(pid[4], int)):
      raise CheckpointFileError(
          f'{self._reader.path}: unexpected persistent id {pid!r:.100} in the '
          'pickle: not a torch.save checkpoint, or a damaged one')
    _, storage_type, key, _, numel = pid
    return self._reader.storage(key, storage_type.dtype, numel)


# ------------------------------------------------------------- the zip file

_LEGACY_MAGIC = b'\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19'


class _ZipReader:

  def __init__(self, path: str):
    self.path = path
    try:
      self.zip = zipfile.ZipFile(path)
    except FileNotFoundError:
      raise CheckpointFileError(f'{path}: no such file') from None
    except IsADirectoryError:
      raise CheckpointFileError(f'{path} is a directory; give the .pth '
                                'file') from None
    except zipfile.BadZipFile:
      raise _not_zip(path) from None
    pickles = [n for n in self.zip.namelist()
               if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
      self.zip.close()
      raise CheckpointFileError(
          f'{path} is a zip file but not a torch.save checkpoint (expected '
          f'one <name>/data.pkl record, found {len(pickles)})')
    self.prefix = pickles[0][:-len('data.pkl')]
    self.byteorder = 'little'
    if self.prefix + 'byteorder' in self.zip.namelist():
      self.byteorder = self._read(self.prefix + 'byteorder').decode().strip()
      if self.byteorder not in ('little', 'big'):
        raise CheckpointFileError(f'{path}: unknown byte order '
                                  f'{self.byteorder!r}')
    self._storages: dict[str, _Storage] = {}

  def _read(self, name: str) -> bytes:
    try:
      return self.zip.read(name)
    except KeyError:
      raise CheckpointFileError(
          f'{self.path}: record {name} is missing: the file is truncated or '
          'damaged') from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
      raise CheckpointFileError(
          f'{self.path}: record {name} cannot be read ({e}): the file is '
          'truncated or damaged') from None

  def unpickle(self) -> Any:
    data = self._read(self.prefix + 'data.pkl')
    try:
      return _Unpickler(data, self).load()
    except CheckpointFileError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointFileError(
          f'{self.path}: its pickle cannot be read ({type(e).__name__}: '
          f'{e}): the file is damaged or not a torch.save checkpoint') from None

  def storage(self, key: str, dtype: np.dtype, numel: int) -> _Storage:
    if key not in self._storages:
      self._storages[key] = _Storage(self, key, dtype, numel)
    return self._storages[key]

  def storage_array(self, storage: _Storage) -> np.ndarray:
    """The storage's elements, read now (not kept: a large checkpoint is
    read one tensor at a time)."""
    name = f'{self.prefix}data/{storage.key}'
    raw = self._read(name)
    dtype = storage.dtype
    need = storage.numel * dtype.itemsize
    if len(raw) < need:
      raise CheckpointFileError(
          f'{self.path}: record {name} holds {len(raw)} bytes, its tensors '
          f'need {need}: the file is truncated or damaged')
    if self.byteorder == 'big' and dtype.itemsize > 1:
      return np.frombuffer(raw, dtype.newbyteorder('>'), storage.numel
                           ).astype(dtype)
    return np.frombuffer(raw, dtype, storage.numel)


def _not_zip(path: str) -> CheckpointFileError:
  try:
    with open(path, 'rb') as f:
      head = f.read(len(_LEGACY_MAGIC))
  except OSError as e:
    return CheckpointFileError(f'{path}: cannot be read ({e})')
  if head == _LEGACY_MAGIC:
    return _Unsupported(f'{path} is in the legacy torch.save format of '
                        'PyTorch < 1.6, which is read only through PyTorch')
  if head.startswith(b'PK'):
    return CheckpointFileError(
        f'{path}: a zip file whose directory is missing or damaged: the file '
        'is truncated (an interrupted download or copy?)')
  return CheckpointFileError(
      f'{path} is not a torch.save checkpoint (a zip archive with '
      '<name>/data.pkl); if it is truncated, download or copy it again')


class _Unsupported(CheckpointFileError):
  """Readable only with PyTorch."""


def _materialize(obj):
  if isinstance(obj, Tensor):
    return obj.numpy()
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v)) for k, v in obj.items())
  if isinstance(obj, list):
    return [_materialize(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_materialize(v) for v in obj)
  return obj


def _torch_load(path: str, why: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise CheckpointFileError(
        f'{why}. Install PyTorch to read it (`pip install torch`; only the '
        'CPU build is needed), or re-save it with a PyTorch >= 1.6: '
        'torch.save(torch.load(path), "new.pth")') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointFileError(f'{why}; PyTorch could not read it either '
                              f'(weights_only=True): {e}') from None

  def to_numpy(x):
    if isinstance(x, torch.Tensor):
      x = x.detach().cpu()
      if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
      return x.numpy()
    if isinstance(x, dict):
      return type(x)((k, to_numpy(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
      return type(x)(to_numpy(v) for v in x)
    return x
  return to_numpy(obj)


def load(path: str | os.PathLike, *, lazy: bool = False) -> Any:
  """The object saved by torch.save at `path`, with every tensor a numpy
  array (lazy=False) or a `Tensor` read on demand (lazy=True).

  Raises CheckpointFileError naming the file (and the record or global) for
  a missing, truncated or damaged file, or one whose pickle references code.
  The legacy (PyTorch < 1.6) format is read with PyTorch if it is installed.
  """
  path = os.fspath(path)
  try:
    reader = _ZipReader(path)
  except _Unsupported as e:
    obj = _torch_load(path, str(e))
    return obj
  obj = reader.unpickle()
  return obj if lazy else _materialize(obj)
