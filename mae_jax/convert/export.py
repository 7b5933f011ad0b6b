"""mae_jax checkpoints -> files other code reads (python -m mae_jax.convert
--to=FORMAT --in=WORKDIR_OR_CHECKPOINT [--step=N] --out=FILE).

--to=safetensors: every parameter of the checkpoint, nothing renamed.

    key     the '/'-joined path of the parameter in nnx.to_pure_dict(
            nnx.state(model)), e.g. 'patch_embed/kernel' [P, D],
            'encoder/layers/attn/qkv/kernel' [depth, D, 3, H, K] (a block
            stack's parameters are stacked on a leading layers axis:
            norm1/scale [depth, D], attn/qkv/bias [depth, 3, H, K],
            attn/out/kernel [depth, H, K, D], mlp/fc1/kernel [depth, D, M],
            ...), 'cls_token' [1, 1, D], 'decoder_pred/kernel' [E, P] (P
            values per patch in (row, column, channel) order), a
            classifier's 'head/kernel' [D, K] and 'pos_embed/table' [L, D].
            float32, the values as trained (fixed position tables are not
            parameters, so not in the file).
    __metadata__  {'format': 'mae_jax', 'mae_jax_config': the checkpoint's
            config as JSON (as config.json), 'mae_jax_step': the training
            step, 'mae_jax_task': 'pretrain' | 'classify'}.

    safetensors.numpy.load_file(path) -> {key: array}; the tree again:
    nnx.replace_by_pure_dict on the unflattened keys.

--to=mae: the official PyTorch layout (facebookresearch/mae), the inverse of
--from=mae: a pretraining checkpoint -> models_mae.py's state dict (with the
fixed `pos_embed` / `decoder_pos_embed` tables [1, 1 + L, width] as the
official code stores them: the sin-cos table below a zero cls row); a
classifier -> models_vit.py's (timm's VisionTransformer): `fc_norm` for
pool 'mean', `norm` for 'cls', `head`, the position table with its cls row.
FILE ending in .pth: a torch.save file {'model': state dict} written without
PyTorch (torch_save.py; torch.load(weights_only=True) reads it); in
.safetensors: the same keys, metadata {'format': 'pt'}. Images only, with a
cls token and the sin-cos position embedding (the official architecture).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Callable

import numpy as np

from mae_jax.convert import ConvertError, vit_layout


@dataclasses.dataclass
class Exported:
  path: str
  notes: list[str]


EXPORTS: dict[str, Callable[[Any, dict, int, str], list[str]]] = {}


def _register(name: str):
  def wrap(fn):
    EXPORTS[name] = fn
    return fn
  return wrap


def load(path: str, step: int | None = None) -> tuple[Any, dict, int]:
  """A workdir, its checkpoints/ or one step dir -> (config, parameters as a
  nested dict of numpy arrays, step)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mae_jax import api  # pylint: disable=g-import-not-at-top
  try:
    config, _, params, step = api.restore(path, step)
  except FileNotFoundError as e:
    raise ConvertError(f'--in={path}: {e}') from None
  return config, jax.tree.map(np.asarray, jax.device_get(params)), step


def flatten(params: dict, prefix: str = '') -> dict[str, np.ndarray]:
  """The nested pure dict -> {'a/b/c': array} (the safetensors keys)."""
  out = {}
  for k, v in params.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = np.ascontiguousarray(v)
  return out


def _check_out(out: str, suffixes: tuple[str, ...]) -> None:
  if not out.endswith(suffixes):
    raise ConvertError(f'--out={out}: the file name must end in '
                       + ' or '.join(suffixes))
  if os.path.exists(out):
    raise ConvertError(f'--out={out}: exists; give a new file name (nothing '
                       'is overwritten)')
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise ConvertError(f'--out={out}: the directory {parent} does not exist')


def _save_safetensors(tensors: dict[str, np.ndarray], out: str,
                      metadata: dict[str, str]) -> None:
  from safetensors import numpy as st  # pylint: disable=g-import-not-at-top
  tmp = f'{out}.tmp-{os.getpid()}'
  try:
    st.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                 tmp, metadata=metadata)
    os.replace(tmp, out)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


@_register('safetensors')
def _to_safetensors(config, params: dict, step: int, out: str) -> list[str]:
  _check_out(out, ('.safetensors',))
  tensors = flatten(params)
  _save_safetensors(tensors, out, {
      'format': 'mae_jax',
      'mae_jax_config': json.dumps(config.to_dict(), sort_keys=True),
      'mae_jax_step': str(step), 'mae_jax_task': str(config.task)})
  return [f'{len(tensors)} parameters under their nnx paths, config and '
          'step in the metadata']


# ------------------------------------------------------ the official layout


def _fixed_table(kind: str, grid, width: int, key: str) -> np.ndarray:
  """[1, 1 + L, width]: the sin-cos table of `kind` below a zero cls row."""
  from mae_jax.models import tokenizers  # pylint: disable=g-import-not-at-top
  if kind not in ('sincos', 'sincos_yx'):
    raise ConvertError(
        f'model.pos_embed={kind!r}: the official layout has a fixed 2-D '
        f'sin-cos {key} (mae_jax\'s sincos), or a learned one in fine-tuned '
        'models; this position embedding has no place in it')
  table = tokenizers.sincos_pos_embed(grid, width,
                                      last_axis_first=kind == 'sincos')
  return np.concatenate([np.zeros((1, width), np.float32), table])[None]


def official_state_dict(config, params: dict
                        ) -> tuple['collections.OrderedDict[str, np.ndarray]',
                                   list[str]]:
  """A mae_jax checkpoint's parameters -> (the official state dict, in the
  official modules' key order; notes)."""
  from mae_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mae_jax.models import tokenizers, vit  # pylint: disable=g-import-not-at-top
  m = config.model
  size = vit.decode_variant(m.variant)
  if m.frames or len(size.patch) != 2:
    raise ConvertError(
        f'model.frames={m.frames}, variant {m.variant!r}: a video model; the '
        'official MAE layout is for images')
  if not m.cls_token:
    raise ConvertError('model.cls_token=False: the official models always '
                       'have a cls token')
  if config.task != 'classify' and m.decoder_attention != 'global':
    raise ConvertError(
        f'model.decoder_attention={m.decoder_attention!r}: the official MAE '
        'decoder has global-attention ViT blocks; this decoder has no place '
        'in its layout (export with --to=safetensors)')
  grid = tokenizers.grid_shape(config_lib.spatial_shape(config), size.patch)
  a = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
  notes = []
  sd = collections.OrderedDict()
  sd['cls_token'] = a(params['cls_token'])
  if config.task == 'classify':
    pos = params.get('pos_embed')  # none: a fixed table (not trainable)
    if isinstance(pos, dict) and set(pos) == {'table', 'cls_embed'}:
      sd['pos_embed'] = a(np.concatenate([pos['cls_embed'], pos['table']]
                                         )[None])
    elif isinstance(pos, dict) and pos:
      raise ConvertError(f'the position embedding has parameters '
                         f'{sorted(pos)}: not the official layout\'s one table')
    else:
      sd['pos_embed'] = _fixed_table(m.pos_embed, grid, size.width,
                                     'pos_embed')
  else:
    sd['pos_embed'] = _fixed_table(m.pos_embed, grid, size.width, 'pos_embed')
    sd['mask_token'] = a(params['mask_token'])
    dec_width = sd['mask_token'].shape[-1]
    sd['decoder_pos_embed'] = _fixed_table(m.pos_embed, grid, dec_width,
                                           'decoder_pos_embed')
  sd['patch_embed.proj.weight'] = vit_layout.conv_from_patch_kernel(
      params['patch_embed']['kernel'], size.patch, m.channels)
  sd['patch_embed.proj.bias'] = a(params['patch_embed']['bias'])
  sd.update(vit_layout.blocks_to_torch(params['encoder']['layers'],
                                       'blocks.'))

  def norm(src: str, dst: str):
    sd[f'{dst}.weight'] = a(params[src]['scale'])
    sd[f'{dst}.bias'] = a(params[src]['bias'])

  def linear(src: str, dst: str):
    sd[f'{dst}.weight'] = a(np.asarray(params[src]['kernel']).T)
    sd[f'{dst}.bias'] = a(params[src]['bias'])

  if config.task == 'classify':
    if config.classify.pool == 'mean':
      norm('fc_norm', 'fc_norm')
    else:
      norm('encoder_norm', 'norm')
    linear('head', 'head')
    notes.append('a fine-tuned classifier (models_vit.py, timm\'s '
                 'VisionTransformer with global_pool='
                 + ("'avg', fc_norm=True" if config.classify.pool == 'mean'
                    else "'token'") + f'), {sd["head.bias"].shape[0]} '
                 'classes')
  else:
    norm('encoder_norm', 'norm')
    linear('decoder_embed', 'decoder_embed')
    sd.update(vit_layout.blocks_to_torch(params['decoder']['layers'],
                                         'decoder_blocks.'))
    norm('decoder_norm', 'decoder_norm')
    linear('decoder_pred', 'decoder_pred')
    notes.append('a pretraining model (models_mae.py), pos_embed and '
                 f'decoder_pos_embed the fixed {m.pos_embed} tables')
    if m.pos_embed == 'sincos_yx':
      notes.append('sincos_yx: rows first in the channels, unlike the '
                   'official code\'s table; the stored tables are the ones '
                   'this model was trained with, which the official code '
                   'loads as they are')
    if 'sampler' in params:
      notes.append('the adaptive masking sampler is not part of the official '
                   'model: left out')
  return sd, notes


@_register('mae')
def _to_mae(config, params: dict, step: int, out: str) -> list[str]:
  del step
  _check_out(out, ('.pth', '.safetensors'))
  sd, notes = official_state_dict(config, params)
  if out.endswith('.pth'):
    from mae_jax.convert import torch_save  # pylint: disable=g-import-not-at-top
    torch_save.save({'model': sd}, out)
    notes.append(f'{len(sd)} tensors as {{"model": state dict}} (torch.save '
                 'format)')
  else:
    _save_safetensors(sd, out, {'format': 'pt'})
    notes.append(f'{len(sd)} tensors under the official keys (safetensors)')
  return notes


def export(fmt: str, path: str, out: str, step: int | None = None
           ) -> Exported:
  """Writes the checkpoint at `path` (a workdir, its checkpoints/ or a step
  dir; the latest step unless `step`) as `fmt` to the new file `out`."""
  if fmt not in EXPORTS:
    raise ConvertError(f'--to={fmt!r}: unknown format; allowed: '
                       + ', '.join(sorted(EXPORTS)))
  _check_out(out, ('.pth', '.safetensors') if fmt == 'mae' else
             ('.safetensors',))  # before reading a large checkpoint
  config, params, step = load(path, step)
  notes = [f'step {step} of {os.path.abspath(path)} (task {config.task})']
  notes += EXPORTS[fmt](config, params, step, out)
  return Exported(os.path.abspath(out), notes)
