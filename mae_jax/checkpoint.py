"""Checkpoints: one orbax CheckpointManager under <workdir>/checkpoints.

Each step's checkpoint holds three items, saved together (asynchronously):
  state  the TrainState (step, fp32 params, optimizer state), sharded arrays;
  data   the grain iterator state of every process (process_<i>-of-<n>.json);
  meta   JSON: the resolved config, so a resumed or loaded run knows its model.

Resume order (train.py): read meta -> refuse an incompatible model before
anything is written -> restore state onto the current mesh (any mesh shape:
orbax reshards) -> restore the data iterator -> continue at state.step.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from mae_jax import config as config_lib

# Keys that change the parameters' shapes or meaning: a checkpoint trained
# with other values cannot be continued or loaded as this model.
ARCHITECTURE_KEYS = ('model.variant', 'model.decoder', 'model.image_size',
                     'model.channels', 'model.cls_token')


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


class _SavedIteratorState:
  """Hands grain's checkpoint handler a state recorded earlier.

  The loop prefetches batches, so the live iterator is ahead of the step being
  saved; we save the state recorded right after the last batch the step used.
  """

  def __init__(self, state):
    self._state = state

  def get_state(self) -> bytes:  # grain's handler wants JSON bytes here
    return json.dumps(self._state, indent=1).encode()


def _lookup(tree: dict, dotted: str):
  for k in dotted.split('.'):
    tree = tree[k]
  return tree


def _path(path) -> str:
  """'opt_state/0/mu/encoder/...', whether the tree came back from orbax
  (dicts, lists) or is ours (dataclasses, namedtuples)."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))
                  for k in path)


def _normalize(v):
  return list(v) if isinstance(v, (list, tuple)) else v


class Checkpointer:

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = directory
    self.manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, read_only=read_only,
            enable_async_checkpointing=async_save),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta

  def check_compatible(self, step: int, config: ml_collections.ConfigDict,
                       abstract_state) -> None:
    """Raises ConfigError, naming keys or parameters, if the checkpoint at
    `step` cannot be continued with `config`. Reads only; writes nothing."""
    saved = self.meta(step)['config']
    want = config.to_dict()
    diffs = [f'{k}: checkpoint has {_lookup(saved, k)!r}, config has '
             f'{_lookup(want, k)!r}' for k in ARCHITECTURE_KEYS
             if _normalize(_lookup(saved, k)) != _normalize(_lookup(want, k))]
    if not diffs:
      diffs = self._shape_diffs(step, abstract_state)
    if diffs:
      raise config_lib.ConfigError(
          f'{self.directory} holds a checkpoint (step {step}) of a different '
          f'model than the config asks for:\n  ' + '\n  '.join(diffs) +
          '\nUse a new --workdir, or the config the checkpoint was trained '
          'with (its config.json). Nothing was changed.')

  def _shape_diffs(self, step: int, abstract_state) -> list[str]:
    saved = self.manager.item_metadata(step)['state']
    if saved is None:
      return []
    saved_flat = {_path(p): x for p, x in
                  jax.tree_util.tree_flatten_with_path(saved)[0]}
    want_flat = {_path(p): x for p, x in
                 jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    diffs = [f'{k}: missing in the checkpoint' for k in want_flat
             if k not in saved_flat]
    diffs += [f'{k}: checkpoint shape {tuple(saved_flat[k].shape)}, config '
              f'shape {tuple(x.shape)}' for k, x in want_flat.items()
              if k in saved_flat and hasattr(saved_flat[k], 'shape')
              and tuple(saved_flat[k].shape) != tuple(x.shape)]
    diffs += [f'{k}: in the checkpoint, not in this config' for k in saved_flat
              if k not in want_flat]
    return diffs[:10]

  def save(self, step: int, state, data_state: Any,
           config: ml_collections.ConfigDict) -> None:
    """Starts an async save; a previous one still in flight is finished first."""
    self.manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(_SavedIteratorState(data_state)),
        meta=ocp.args.JsonSave({'step': step, 'config': config.to_dict()})))

  def restore(self, step: int, abstract_state, data_iterator=None):
    """abstract_state: ShapeDtypeStructs with the target shardings."""
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items)).state

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
