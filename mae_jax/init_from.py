"""config.init_from: a run that starts from the parameters of another
checkpoint (a pretraining workdir, a converted official checkpoint, or a run
of another task), with its own step, optimizer and data."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mae_jax import checkpoint, config as config_lib, errors, optim
from mae_jax import step as step_lib


class InitFrom:
  """config.init_from: a checkpoint whose parameters start a new run.
  Checked when made (phase 1), restored by restore() (phase 2).

  A checkpoint of the same task gives all its parameters. One of another
  task (a pretrained MAE for fine-tuning) gives the parameters that both
  models have, by path and shape: the encoder; the others (the head, or a
  decoder) keep their initialization, and `notes` says which were copied.
  """

  def __init__(self, config, setup: step_lib.StateSetup):
    from mae_jax import api  # pylint: disable=g-import-not-at-top
    try:
      root, self.step = api.resolve(config.init_from)
    except FileNotFoundError as e:
      raise errors.ConfigError(f'config.init_from={config.init_from!r}: '
                               f'{e}') from None
    self.setup, self.notes = setup, []
    self.reader = checkpoint.Checkpointer(root, read_only=True)
    hint = lambda k: f'point config.init_from at step {k}: {root}/{k}'
    self.hint = hint
    try:
      meta = self.reader.verify(self.step, hint)
      saved = config_lib.with_defaults(meta['config'])
      self.transfer = saved.task != config.task
      if self.transfer:
        self.source = self._source_abstract(config, saved, root)
      else:
        self.reader.check_compatible(self.step, config, setup.abstract,
                                     meta['config'])
        self.source = setup.abstract
    except BaseException:
      self.reader.close()
      raise

  def _source_abstract(self, config, saved, root: str):
    """The abstract train state of the checkpoint's own task; its encoder
    must be the one the config asks for."""
    diffs = checkpoint.encoder_diffs(saved, config, 'config')
    if diffs:
      raise errors.CheckpointError(
          f'config.init_from={root} (task {saved.task!r}) has another '
          'encoder than this config:\n  ' + '\n  '.join(diffs) +
          '\nSet these keys as the checkpoint has them (its config.json).')
    saved.mesh, saved.sharding = config.mesh, config.sharding
    return step_lib.StateSetup(saved, optim.optimizer(saved, lambda _: 0.0),
                               self.setup.mesh).abstract

  def restore(self, tx, init_key: jax.Array) -> step_lib.TrainState:
    """Its parameters, step 0 and a fresh optimizer state."""
    try:
      params = self.reader.restore(self.step, self.source,
                                   hint=self.hint).params
    finally:
      self.reader.close()
    if self.transfer:
      params = self._copy_shared(params, self.setup.init_params(init_key))
    fresh = jax.jit(lambda p: step_lib.TrainState(
        jnp.zeros((), jnp.int32), p, tx.init(p)),
                    out_shardings=self.setup.shardings)
    return fresh(params)

  def _copy_shared(self, source: dict, init: dict) -> dict:
    """`init` with every parameter that `source` has at the same path and
    shape replaced by the source's."""
    src = dict(jax.tree_util.tree_flatten_with_path(source)[0])
    copied, fresh = [], []

    def take(path, leaf):
      name = '/'.join(str(getattr(k, 'key', k)) for k in path)
      other = src.get(path)
      if other is not None and other.shape == leaf.shape:
        copied.append(name)
        return other
      fresh.append(name)
      return leaf

    out = jax.tree_util.tree_map_with_path(take, init)
    group = lambda names: sorted({n.split('/')[0] for n in names})
    dropped = sorted({'/'.join(str(getattr(k, 'key', k)) for k in p).split(
        '/')[0] for p in src} - set(group(copied)))
    self.notes = [
        f'init_from: copied {len(copied)} parameters ({", ".join(group(copied))})'
        f'; initialized {len(fresh)} ({", ".join(group(fresh)) or "none"}); '
        f'not used: {", ".join(dropped) or "none"}']
    return out
