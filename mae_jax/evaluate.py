"""Run evaluators on a trained workdir, outside training.

  python -m mae_jax.evaluate --workdir=workdirs/demo --evals=linear_probe,knn

Prints the results as JSON and appends them to <workdir>/metrics.jsonl (at the
checkpoint's step). Evaluator settings come from the run's config
(config.evals.<name>); --evals picks which to run, enabled or not.
--label_key scores another label of the data (config.data.label_key, e.g.
`direction` for moving digits); its results are named `<evaluator>@<key>/...`.

--config=FILE[:ARG] takes the evaluation from a recipe instead (e.g.
configs/mae_linprobe.py, MAE's linear probe on ImageNet): its `evals`,
`data` and `eval_batch_size` replace the run's, and `--config.KEY=VALUE`
changes them further; its encoder keys must be the checkpoint's.

  python -m mae_jax.evaluate --workdir=$PRETRAINED \
      --config=configs/mae_linprobe.py:variant=B/16 --evals=linear_probe
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from mae_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir (or checkpoint dir).')
_EVALS = flags.DEFINE_list('evals', None, 'Evaluators to run (default: those '
                           'enabled in the run\'s config).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
_LABEL_KEY = flags.DEFINE_string(
    'label_key', None, "Label to score (config.data.label_key; default: the "
    "run's), e.g. 'direction' for moving digits.")


def _apply_recipe(config, recipe) -> None:
  """The recipe's evals, data and eval_batch_size into the run's config;
  ConfigError if its encoder is not the checkpoint's."""
  from mae_jax import checkpoint, config as config_lib  # pylint: disable=g-import-not-at-top
  diffs = checkpoint.encoder_diffs(config, recipe, 'recipe')
  if diffs:
    raise config_lib.ConfigError(
        'the evaluation recipe (--config) describes another encoder than '
        'the checkpoint:\n  ' + '\n  '.join(diffs) + '\nPick the recipe\'s '
        'variant of the checkpoint (e.g. :variant=...), or set these keys.')
  with config.unlocked():
    config.evals = recipe.evals
    config.data = recipe.data
    config.eval_batch_size = recipe.eval_batch_size
  config_lib.validate(config, check_files=False)


def evaluate(path: str, names: list[str] | None = None,
             step: int | None = None, label_key: str | None = None,
             recipe=None) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from mae_jax import api, evaluators, metrics, sharding  # pylint: disable=g-import-not-at-top

  config, setup, params, step = api.restore(path, step)
  if recipe is not None:
    _apply_recipe(config, recipe)
  renamed = label_key is not None and label_key != config.data.label_key
  if label_key is not None:
    config.data.label_key = label_key
  workdir = os.path.dirname(api.resolve(path, step)[0])
  evaluators.check_data(config, names)  # before anything is written
  writer = metrics.MetricWriter(workdir, enabled=jax.process_index() == 0,
                                progress=False)
  init_key, _ = jax.random.split(jax.random.key(config.seed))
  results = {}
  with sharding.rules_context(setup.mesh, config.sharding.rules):
    ctx = evaluators.EvalContext(
        config=config, graphdef=setup.graphdef, mesh=setup.mesh,
        init_params=setup.init_params, baseline_key=init_key, writer=writer,
        workdir=workdir)
    for ev in evaluators.build(ctx, names):
      results.update(ev.run(params, step))
  if renamed:  # beside, not over, the results for the run's own label
    results = {f'{k.split("/")[0]}@{label_key}/{k.partition("/")[2]}': v
               for k, v in results.items()}
  writer.write(step, results)
  writer.close()
  return {'step': step, **results}


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  print(json.dumps(evaluate(_WORKDIR.value, _EVALS.value, _STEP.value,
                            _LABEL_KEY.value, flags.FLAGS.config), indent=1))


if __name__ == '__main__':
  # Defined here, not on import: mae_jax.main and mae_jax.bench (which the
  # tests import beside this module) define their own --config.
  config_flags.DEFINE_config_file(
      'config', None, 'Optional evaluation recipe (configs/NAME.py[:ARG]): '
      'its evals, data and eval_batch_size replace the run\'s.',
      lock_config=True)
  cli.run(main)  # failures are one line, as in training (cli.py)
