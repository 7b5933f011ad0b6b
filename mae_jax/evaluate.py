"""Run evaluators on a trained workdir, outside training.

  python -m mae_jax.evaluate --workdir=workdirs/demo --evals=linear_probe,knn

Prints the results as JSON and appends them to <workdir>/metrics.jsonl (at the
checkpoint's step). Evaluator settings come from the run's config
(config.evals.<name>); --evals picks which to run, enabled or not.
--label_key scores another label of the data (config.data.label_key, e.g.
`direction` for moving digits); its results are named `<evaluator>@<key>/...`.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from mae_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir (or checkpoint dir).')
_EVALS = flags.DEFINE_list('evals', None, 'Evaluators to run (default: those '
                           'enabled in the run\'s config).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
_LABEL_KEY = flags.DEFINE_string(
    'label_key', None, "Label to score (config.data.label_key; default: the "
    "run's), e.g. 'direction' for moving digits.")


def evaluate(path: str, names: list[str] | None = None,
             step: int | None = None, label_key: str | None = None) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from mae_jax import api, evaluators, metrics, sharding  # pylint: disable=g-import-not-at-top

  config, setup, params, step = api.restore(path, step)
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
                            _LABEL_KEY.value), indent=1))


if __name__ == '__main__':
  cli.run(main)  # failures are one line, as in training (cli.py)
