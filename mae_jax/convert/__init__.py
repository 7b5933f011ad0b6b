"""Checkpoints of other MAE implementations <-> mae_jax checkpoints.

    python -m mae_jax.convert --from=mae --in=checkpoint.pth --out=DIR
    python -m mae_jax.convert --to=mae --in=WORKDIR --out=model.pth

This module reads (--from); mae_jax/convert/export.py writes (--to: the
official PyTorch layout, or every parameter as safetensors).

A format is one function, registered by name, that reads the other
implementation's state dict (its key names and tensor layouts) and returns
a mae_jax config and parameters:

    @register('name', summary='...')
    def read(state_dict: dict[str, array-like], options: Options) -> Converted

It infers what the tensor shapes tell (width, depth, patch, decoder, ...) and
takes the rest from `options` (what the user passed, and the training
arguments the checkpoint saved, if any) or its own table of the official
models; wrong, missing or unexpected keys and shapes are collected and
raised as one ConvertError naming them. A format may leave parameters the
file does not have to a fresh initialization (Converted.fresh: e.g. the
decoder of an encoder-only checkpoint); everything else must come from the
file.

`convert()` then checks the config, fills every parameter of the mae_jax
model (the model of config.task: the MAE, or the fine-tuning classifier)
with the converted values (checking their shapes against the model),
and writes DIR like a training workdir at step 0: DIR/config.json and
DIR/checkpoints/0/ (the train state: parameters and a fresh optimizer state;
the data iterator at its start; the config), plus DIR/converted.json (what
was converted, from where). `mae_jax.load(DIR)` and `python -m
mae_jax.evaluate --workdir=DIR` accept it, and so does a new training run
that starts from its parameters. DIR must be
absent or empty; it is written under a temporary name and renamed when
complete, so a failed conversion leaves nothing behind.

Input files: torch.save checkpoints (.pth, read without PyTorch and without
running code from the file: torch_pickle.py) or safetensors files.

Formats: mae (facebookresearch/mae: pretraining checkpoints with or without
their decoder, fine-tuned classifiers; also timm's ViT layout), videomae
(MCG-NJU/VideoMAE and OpenGVLab/VideoMAEv2 pretraining checkpoints),
audiomae (facebookresearch/AudioMAE: pretraining checkpoints with either
decoder, global or local attention, or without one; fine-tuned
classifiers).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mae_jax.errors import ConfigError


class ConvertError(ConfigError):
  """A checkpoint that cannot be converted: unreadable, of another format,
  with missing / unexpected keys or wrong shapes, or options that do not fit."""


@dataclasses.dataclass(frozen=True)
class Options:
  """What the user may tell a format (None / empty: infer or use the
  official default).

  frames, image_size: the clip the model was trained on (not stored in the
    weights); num_heads / decoder_heads: attention heads (not visible in the
    shapes); masking, mask_ratio: the masking of further training;
  overrides: {'dotted.config.key': value} applied to the written config
    last (e.g. the data to evaluate or train on);
  checkpoint_args: filled by read(): the training arguments saved beside the
    weights (an argparse.Namespace 'args', as the official training scripts
    save it) as a dict, {} if none; what the user passed comes first.
  """
  frames: int | None = None
  image_size: int | tuple[int, int] | None = None
  num_heads: int | None = None
  decoder_heads: int | None = None
  masking: str | None = None
  mask_ratio: float | None = None
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  checkpoint_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Converted:
  """config: the mae_jax ConfigDict; params: from a format, {'a/b/c':
  array} with the '/'-joined paths of nnx.to_pure_dict(nnx.state(model));
  from read(), that nested pure dict itself (float32); notes: what the
  conversion decided (printed, and saved in DIR/converted.json); fresh:
  path prefixes ('decoder', 'mask_token', ...) of parameters the file does
  not have, which read() initializes as a new model of the final config
  would be (seed config.seed)."""
  config: Any
  params: dict[str, np.ndarray]
  notes: list[str] = dataclasses.field(default_factory=list)
  fresh: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Format:
  name: str
  read: Callable[[Mapping[str, Any], Options], Converted]
  summary: str


FORMATS: dict[str, Format] = {}


def register(name: str, *, summary: str, aliases: tuple[str, ...] = ()):
  def wrap(fn):
    for n in (name, *aliases):
      FORMATS[n] = Format(name, fn, summary)
    return fn
  return wrap


def get_format(name: str) -> Format:
  if name not in FORMATS:
    raise ConvertError(f'--from={name!r}: unknown format; allowed: '
                       + ', '.join(sorted(FORMATS)))
  return FORMATS[name]


def as_array(x) -> np.ndarray:
  """A numpy array from a checkpoint value (a lazy torch_pickle.Tensor is
  read now; float16 / bfloat16 become float32)."""
  if hasattr(x, 'numpy') and not isinstance(x, np.ndarray):
    return x.numpy()
  return np.asarray(x)


def _is_tensor(x) -> bool:
  return hasattr(x, 'shape') and hasattr(x, 'dtype') and not isinstance(
      x, (dict, list, tuple))


def state_dict_of(obj, path: str, key: str | None = None) -> dict[str, Any]:
  """The state dict inside a loaded checkpoint: obj[key], or the first of
  'model', 'module', 'state_dict' holding tensors, or obj itself."""
  if not isinstance(obj, dict):
    raise ConvertError(f'{path} holds a {type(obj).__name__}, not a state '
                       'dict (a dict of tensors)')
  if key:
    if key not in obj:
      raise ConvertError(f'--key={key}: {path} has no entry {key!r}; its '
                         f'entries: {sorted(map(str, obj))[:20]}')
    found = obj[key]
  else:
    found = next((obj[k] for k in ('model', 'module', 'state_dict')
                  if isinstance(obj.get(k), dict)), obj)
  if not isinstance(found, dict) or not found or not all(
      _is_tensor(v) for v in found.values()):
    tops = sorted(map(str, obj))[:20]
    raise ConvertError(f'{path}: no state dict of tensors found (top-level '
                       f'entries: {tops}); name the entry with --key')
  keys = [str(k) for k in found]
  if all(k.startswith('module.') for k in keys):  # saved from a DDP wrapper
    return {str(k)[len('module.'):]: v for k, v in found.items()}
  return {str(k): v for k, v in found.items()}


def is_safetensors(path: str) -> bool:
  """A safetensors file: an 8-byte little-endian header length, then the
  JSON header."""
  try:
    with open(path, 'rb') as f:
      head = f.read(9)
  except OSError:
    return False
  return len(head) == 9 and head[8:9] == b'{' and int.from_bytes(
      head[:8], 'little') <= max(os.path.getsize(path) - 8, 0)


class _SafeTensor:
  """A tensor of a safetensors file, read on demand (.shape, .dtype,
  .numpy(); float16 / bfloat16 -> float32)."""

  def __init__(self, path: str, name: str, shape, dtype: str):
    self.path, self.name = path, name
    self.shape, self.dtype = tuple(shape), dtype

  def numpy(self) -> np.ndarray:
    import safetensors  # pylint: disable=g-import-not-at-top
    try:
      with safetensors.safe_open(self.path, framework='numpy') as f:
        x = f.get_tensor(self.name)
    except Exception as e:  # pylint: disable=broad-except
      raise ConvertError(f'{self.path}: tensor {self.name} cannot be read '
                         f'({e}): the file is truncated or damaged') from None
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _load_safetensors(path: str) -> dict[str, Any]:
  import safetensors  # pylint: disable=g-import-not-at-top
  try:
    with safetensors.safe_open(path, framework='numpy') as f:
      out = {}
      for name in f.keys():
        s = f.get_slice(name)
        out[name] = _SafeTensor(path, name, s.get_shape(), s.get_dtype())
  except Exception as e:  # pylint: disable=broad-except
    raise ConvertError(f'{path}: not a readable safetensors file ({e}): '
                       'truncated or damaged?') from None
  return out


def load_checkpoint(path: str, key: str | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
  """path (a torch.save or safetensors file) -> ({name: lazy tensor}, the
  training arguments saved beside it as a dict, or {})."""
  if is_safetensors(path):
    if key:
      raise ConvertError(f'--key={key}: {path} is a safetensors file, a '
                         'flat state dict without entries')
    return _load_safetensors(path), {}
  from mae_jax.convert import torch_pickle  # pylint: disable=g-import-not-at-top
  obj = torch_pickle.load(path, lazy=True)
  args = obj.get('args') if isinstance(obj, dict) else None
  args = dict(vars(args)) if isinstance(args, torch_pickle.Record) else (
      dict(args) if isinstance(args, dict) else {})
  return state_dict_of(obj, path, key), args


def load_state_dict(path: str, key: str | None = None) -> dict[str, Any]:
  """path (a torch.save or safetensors file) -> {name: lazy tensor}."""
  return load_checkpoint(path, key)[0]


def read(fmt: str, path: str, options: Options | None = None,
         key: str | None = None) -> Converted:
  """Reads and converts `path` (nothing is written): -> Converted with a
  validated config and parameters that fit its model."""
  format_ = get_format(fmt)
  state_dict, args = load_checkpoint(path, key)
  options = dataclasses.replace(options or Options(), checkpoint_args=args)
  try:
    converted = format_.read(state_dict, options)
  except ConvertError as e:
    raise ConvertError(f'{path}: {e}') from None
  _finish_config(converted, options)
  converted.params, fresh = fit_params(converted.config, converted.params,
                                       converted.fresh)
  if fresh:
    converted.notes.append(
        f'freshly initialized (not in the file; seed {converted.config.seed}'
        f'): {", ".join(fresh)}')
  return converted


def _finish_config(converted: Converted, options: Options) -> None:
  from mae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = converted.config
  c.lock()  # an override names an existing key
  for dotted, value in dict(options.overrides).items():
    try:
      c.update_from_flattened_dict({dotted: value})
    except (AttributeError, KeyError) as e:
      raise ConvertError(f'--set={dotted}=...: no such config key ({e}); '
                         'every key and its default: mae_jax/config.py'
                         ) from None
    except (TypeError, ValueError) as e:
      raise ConvertError(f'--set={dotted}={value!r}: {e}') from None
  try:
    config_lib.validate(c, check_files=False)
  except ConfigError as e:
    raise ConvertError(f'the converted config is not valid: {e}') from None


def _flat_paths(tree) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  return {'/'.join(str(getattr(k, 'key', k)) for k in p): x for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def fit_params(config, flat: Mapping[str, np.ndarray],
               fresh: Sequence[str] = ()) -> tuple[dict, list[str]]:
  """{'a/b': array} -> (the nested pure dict of config.task's model,
  float32; the parameters initialized fresh), after checking that the keys
  and shapes are exactly those of the model. A parameter the model has and
  `flat` lacks is initialized (seed config.seed) if its path starts with
  one of `fresh`, else it is an error."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from mae_jax import tasks  # pylint: disable=g-import-not-at-top
  build = tasks.get(config).build
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: build(config, nnx.Rngs(0)))))
  want = _flat_paths(abstract)
  under = lambda k, prefixes: any(k == p or k.startswith(p + '/')
                                  for p in prefixes)
  new = sorted(k for k in set(want) - set(flat) if under(k, fresh))
  if new:
    def init():
      model = build(config, nnx.Rngs(params=config.seed))
      made = _flat_paths(nnx.to_pure_dict(nnx.state(model)))
      return {k: made[k] for k in new}
    flat = {**flat, **jax.device_get(jax.jit(init)())}
  problems = [f'{k}: not produced' for k in sorted(set(want) - set(flat))]
  problems += [f'{k}: produced, but the model has no such parameter'
               for k in sorted(set(flat) - set(want))]
  problems += [f'{k}: shape {tuple(np.shape(flat[k]))}, the model wants '
               f'{tuple(want[k].shape)}' for k in sorted(set(want) & set(flat))
               if tuple(np.shape(flat[k])) != tuple(want[k].shape)]
  if problems:  # a bug of the format's reader, not of the file
    raise ConvertError('the converted parameters do not fit the mae_jax '
                       'model:\n  ' + '\n  '.join(problems))

  def fill(tree, prefix=''):
    return {k: (fill(v, f'{prefix}{k}/') if isinstance(v, dict) else
                np.ascontiguousarray(flat[f'{prefix}{k}'], np.float32))
            for k, v in tree.items()}
  return fill(abstract), new


def _check_out(out: str) -> None:
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ConvertError(f'--out={out}: exists and is not an empty directory; '
                       'give a new directory (nothing is overwritten)')
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise ConvertError(f'--out={out}: the parent directory {parent} does not '
                       'exist')


def write(converted: Converted, out: str, source: dict | None = None) -> str:
  """Writes `converted` as a workdir at step 0 (see the module docstring);
  -> the absolute path of `out`. converted.params become jax arrays (one
  copy of a large model in memory, not two)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mae_jax import checkpoint, optim, step as step_lib  # pylint: disable=g-import-not-at-top
  from mae_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  out = os.path.abspath(out)
  _check_out(out)
  config = converted.config

  def to_device(tree):
    for k, v in tree.items():
      tree[k] = to_device(v) if isinstance(v, dict) else jnp.asarray(v)
    return tree
  params = to_device(converted.params)
  # The schedule's values are not saved, only the optimizer's structure.
  tx = optim.optimizer(config, lambda count: 0.0)
  state = step_lib.TrainState(jnp.zeros((), jnp.int32), params,
                              tx.init(params))
  tmp = f'{out}.converting-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    workdir_lib.History(tmp, 0).write_config(config.to_dict())
    ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(tmp),
                                   async_save=False)
    try:
      # The data iterator at its start: batch 0 of the stream.
      ckpt.save(0, state, {'batches': 0}, config)
    finally:
      ckpt.close()
    del state
    record = {'converted_at': datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec='seconds'),
              **(source or {}), 'notes': converted.notes}
    workdir_lib.write_atomic(os.path.join(tmp, 'converted.json'),
                             json.dumps(record, indent=1) + '\n')
    _check_out(out)  # nothing appeared there meanwhile
    if os.path.isdir(out):
      os.rmdir(out)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def convert(fmt: str, path: str, out: str, options: Options | None = None,
            key: str | None = None) -> Converted:
  """Reads `path` in format `fmt` and writes the mae_jax workdir `out`
  (absent or empty). -> what was converted (config, params, notes)."""
  _check_out(os.path.abspath(out))  # before reading a large file
  converted = read(fmt, path, options, key)
  write(converted, out, {'format': get_format(fmt).name,
                         'input': os.path.abspath(path),
                         'input_bytes': os.path.getsize(path)})
  return converted


# Formats register themselves on import.
from mae_jax.convert import audiomae, mae, videomae  # pylint: disable=wrong-import-position,unused-import
