"""Checkpoints: one orbax CheckpointManager under <workdir>/checkpoints.

Each step's checkpoint holds three items, saved together (asynchronously):
  state  the TrainState (step, fp32 params, optimizer state), sharded arrays;
  data   the data iterator state of every process (process_<i>-of-<n>.json);
  meta   JSON: the resolved config, so a resumed or loaded run knows its model.

Resume order (train.py): pick the step (latest, or config.resume_step) ->
verify its items -> refuse an incompatible model before anything is written
-> restore state onto the current mesh (any mesh shape: orbax reshards) ->
restore the data iterator -> continue at state.step.

Failures are one message each (mae_jax.errors): a damaged checkpoint names
the step and the item and what to do; a save that fails or stalls names the
directory and the cause, and the checkpoints already saved stay intact
(orbax writes a step into <step>.orbax-checkpoint-tmp* and renames it only
when complete, and deletes old steps only after a new one is complete).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import threading
from typing import Any, Callable

from absl import logging as absl_logging
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from mae_jax import config as config_lib
from mae_jax.errors import (CheckpointError, CheckpointSaveError,
                            describe_os_error)

# Keys that change the parameters' shapes or meaning: a checkpoint trained
# with other values cannot be continued or loaded as this model.
ARCHITECTURE_KEYS = ('model.variant', 'model.decoder', 'model.image_size',
                     'model.frames', 'model.channels', 'model.cls_token',
                     'model.pos_embed', 'model.decoder_attention')
# The keys of the encoder alone (init_from across tasks checks these).
ENCODER_KEYS = ('model.variant', 'model.image_size', 'model.frames',
                'model.channels', 'model.cls_token', 'model.pos_embed')
def encoder_diffs(saved, want, what: str) -> list[str]:
  """'key: checkpoint has A, <what> has B' for each ENCODER_KEYS entry where
  the config `saved` (a checkpoint's) and `want` differ."""
  return [f'{k}: checkpoint has {saved[a][b]!r}, {what} has {want[a][b]!r}'
          for k in ENCODER_KEYS for a, b in [k.split('.')]
          if normalize(saved[a][b]) != normalize(want[a][b])]


# Architecture keys added later, with the value older checkpoints were made with.
_BEFORE_KEY = {'model.frames': 0, 'model.pos_embed': 'sincos',
               'model.decoder_attention': 'global'}
ITEMS = ('state', 'data', 'meta')
UNFINISHED = '.orbax-checkpoint-tmp'  # orbax's suffix for saves in progress


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def remove_unfinished(directory: str) -> list[str]:
  """Deletes the directories of saves that were interrupted (a crash, kill -9
  during a save): incomplete by construction, never read. -> their paths."""
  found = sorted(glob.glob(os.path.join(directory, f'*{UNFINISHED}*')))
  for path in found:
    shutil.rmtree(path, ignore_errors=True)
  return found


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
    if k not in tree and dotted in _BEFORE_KEY:
      return _BEFORE_KEY[dotted]
    tree = tree[k]
  return tree


def _path(path) -> str:
  """'opt_state/0/mu/encoder/...', whether the tree came back from orbax
  (dicts, lists) or is ours (dataclasses, namedtuples)."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))
                  for k in path)


def normalize(v):
  return list(v) if isinstance(v, (list, tuple)) else v


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = normalize(v)
  return out


def config_diffs(saved: dict, want: dict) -> list[str]:
  """'key: checkpoint has A, config has B' for every key that differs."""
  a, b = _flat(saved), _flat(want)
  return [f'{k}: checkpoint has {a.get(k, "(absent)")!r}, config has '
          f'{b.get(k, "(absent)")!r}' for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)]


def _call_with_timeout(fn: Callable[[], Any], timeout: float | None):
  """fn() in a helper thread; TimeoutError if it has not returned in time
  (a stalled storage system must not hang the run forever)."""
  if not timeout:
    return fn()
  result: dict = {}

  def target():
    try:
      result['value'] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      result['error'] = e

  t = threading.Thread(target=target, daemon=True, name='checkpoint-wait')
  t.start()
  t.join(timeout)
  if t.is_alive():
    raise TimeoutError
  if 'error' in result:
    raise result['error']
  return result.get('value')


class Checkpointer:

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False, save_timeout_s: float = 0):
    self.directory = directory
    self.save_timeout_s = save_timeout_s
    self._pending: int | None = None  # step of a save that may be in flight
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        read_only=read_only, save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=async_save)
    # orbax warns that a read-only manager is read-only: not news to a user.
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(min(level, absl_logging.ERROR) if read_only
                               else level)
    try:
      self.manager = ocp.CheckpointManager(
          directory, options=options,
          item_handlers={'state': ocp.StandardCheckpointHandler(),
                         'data': grain.checkpoint.CheckpointHandler(),
                         'meta': ocp.JsonCheckpointHandler()})
    finally:
      absl_logging.set_verbosity(level)

  # ---------------------------------------------------------------- reading

  def steps(self) -> list[int]:
    """Completed checkpoints, oldest first."""
    return sorted(self.manager.all_steps())

  def _damaged(self, step: int, item: str, what: str,
               hint: Callable[[int], str]) -> CheckpointError:
    others = [s for s in self.steps() if s < step]
    where = os.path.join(self.directory, str(step))
    if others:
      todo = (f'Earlier checkpoints: {others}; {hint(others[-1])}, or move '
              f'{where} away')
    else:
      todo = (f'There is no earlier checkpoint: move {where} away to start '
              'over')
    return CheckpointError(f'checkpoint step {step} in {self.directory} is '
                           f'damaged: item {item!r} {what}. {todo}.')

  def verify(self, step: int, hint: Callable[[int], str]) -> dict:
    """Cheap checks of step's items (present, JSON readable) -> its meta.
    Raises CheckpointError naming the step and item; `hint(k)` says how to
    use an earlier step k instead."""
    if step not in self.steps():
      raise CheckpointError(f'{self.directory} has no checkpoint for step '
                            f'{step}; available: {self.steps()}')
    root = os.path.join(self.directory, str(step))
    for item in ITEMS:
      if not os.path.isdir(os.path.join(root, item)):
        raise self._damaged(step, item, 'is missing', hint)
    data = os.path.join(root, 'data', f'process_{jax.process_index()}-of-'
                        f'{jax.process_count()}.json')
    if not os.path.exists(data):
      saved = sorted(os.path.basename(p) for p in
                     glob.glob(os.path.join(root, 'data', 'process_*.json')))
      raise CheckpointError(
          f'checkpoint step {step} holds the data iterator state of '
          f'{saved or "no process"}, not of process {jax.process_index()} of '
          f'{jax.process_count()}: resume with as many processes as saved it')
    try:
      with open(data, encoding='utf-8') as f:
        json.load(f)
    except ValueError as e:
      raise self._damaged(step, 'data', f'is not valid JSON ({data}: {e})',
                          hint) from None
    meta = self._read(step, 'meta', hint, lambda: self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
    self._read(step, 'state', hint,
               lambda: self.manager.item_metadata(step)['state'])
    if not isinstance(meta, dict) or 'config' not in meta:
      raise self._damaged(step, 'meta', 'has no config', hint)
    return meta

  def _read(self, step: int, item: str, hint, read: Callable[[], Any]):
    try:
      return read()
    except Exception as e:  # pylint: disable=broad-except
      raise self._damaged(step, item, f'cannot be read ({describe_os_error(e)})',
                          hint) from e

  def check_compatible(self, step: int, config: ml_collections.ConfigDict,
                       abstract_state, saved_config: dict) -> None:
    """Raises CheckpointError, naming config keys, if the checkpoint at
    `step` cannot be continued with `config`. Reads only; writes nothing."""
    want = config.to_dict()
    saved_config = config_lib.upgrade(saved_config)
    diffs = [f'{k}: checkpoint has {_lookup(saved_config, k)!r}, config has '
             f'{_lookup(want, k)!r}' for k in ARCHITECTURE_KEYS
             if normalize(_lookup(saved_config, k)) != normalize(_lookup(want, k))]
    if diffs:
      raise CheckpointError(
          f'{self.directory} holds a checkpoint (step {step}) of a different '
          f'model than the config asks for:\n  ' + '\n  '.join(diffs) +
          '\nUse a new --workdir, or the config the checkpoint was trained '
          'with (its config.json). Nothing was changed.')
    shapes = self._shape_diffs(step, abstract_state)
    if shapes:
      changed = [d for d in config_diffs(saved_config, want)
                 if not d.startswith(('mesh.', 'sharding.'))]
      raise CheckpointError(
          f'the train state in {self.directory} (step {step}) does not match '
          f'this config ({shapes[0]}{", ..." if len(shapes) > 1 else ""}). '
          'Config keys that differ from the checkpoint\'s:\n  ' +
          ('\n  '.join(changed) or '(none: the checkpoint was written by '
           'another mae_jax version)') +
          '\nThe keys that shape the model or the optimizer state cannot '
          'change when resuming: set them back, or use a new --workdir. '
          'Nothing was changed.')

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

  def restore(self, step: int, abstract_state, data_iterator=None,
              hint: Callable[[int], str] = lambda k: f'use step {k}'):
    """abstract_state: ShapeDtypeStructs with the target shardings. Item by
    item, so that a failure names the item."""
    state = self._read(step, 'state', hint, lambda: self.manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state))).state)
    if data_iterator is not None:
      try:
        self.manager.restore(step, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
      except ValueError as e:  # the iterator refuses another stream
        raise CheckpointError(f'checkpoint step {step}: item \'data\': '
                              f'{e}') from e
    return state

  # ---------------------------------------------------------------- writing

  def _save_error(self, step: int, cause: str) -> CheckpointSaveError:
    saved = [s for s in self.steps() if s != step]
    intact = (f'The checkpoints already saved are intact (steps {saved}); '
              if saved else 'No checkpoint was saved before; ')
    again = f' from step {saved[-1]}' if saved else ''
    return CheckpointSaveError(
        f'cannot save checkpoint step {step} to {self.directory}: {cause}. '
        f'{intact}free space or fix the directory, then rerun the same '
        f'command to resume{again}.')

  def save(self, step: int, state, data_state: Any,
           config: ml_collections.ConfigDict) -> None:
    """Starts an async save, after the previous one has finished (or raised
    CheckpointSaveError)."""
    self.wait()
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(_SavedIteratorState(data_state)),
        meta=ocp.args.JsonSave({'step': step, 'config': config.to_dict()}))
    # Under the timeout too: orbax's save() itself first waits for storage.
    self._pending = step
    self._finish(lambda: self.manager.save(step, force=True, args=args))

  def wait(self) -> None:
    """Waits for the save in flight (at most save_timeout_s, if set)."""
    if self._pending is not None:
      self._finish(self.manager.wait_until_finished)
      self._pending = None

  def _finish(self, fn: Callable[[], Any]) -> None:
    """fn() under save_timeout_s; a failure is reported for the pending step
    and gives that save up."""
    try:
      _call_with_timeout(fn, self.save_timeout_s)
      return
    except TimeoutError:
      step, self._pending = self._pending, None
      raise self._save_error(
          step, f'the save did not finish within {self.save_timeout_s:g} s '
          '(config.checkpoint_timeout_s); the storage may be stalled') from None
    except Exception as e:  # pylint: disable=broad-except
      step, self._pending = self._pending, None
      raise self._save_error(step, describe_os_error(e)) from e

  def close(self) -> None:
    try:
      self.wait()
    finally:
      try:
        _call_with_timeout(self.manager.close, self.save_timeout_s)
      except Exception:  # pylint: disable=broad-except
        pass  # a failed save has been reported by wait()
