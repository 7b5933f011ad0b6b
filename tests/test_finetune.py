"""Fine-tuning (task='classify'): the classifier, drop path, init_from a
pretraining run, the same loop's exact resume, the classification
evaluator, and the config checks."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mae_jax
from mae_jax import config as config_lib
from mae_jax import init_from, optim, sharding, step as step_lib, train
from mae_jax.evaluators import classification
from mae_jax.models import classifier, vit
from conftest import load_config


def _classify_config(steps=4):
  c = load_config('test', f'steps={steps}')
  c.task = 'classify'
  c.classify.num_classes = 10
  c.classify.drop_path = 0.1
  c.classify.randaugment_ops = 2
  c.model.channels = 3
  c.optim.layer_decay = 0.75
  c.evals.classification.enabled = True
  c.evals.classification.max_examples = 32
  return c


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('pretrained')
  train.train(load_config('test', 'steps=2'), str(workdir))
  return str(workdir)


def test_drop_path_drops_whole_examples_and_rate_zero_is_identity():
  x = jnp.ones((64, 5, 3))
  y = vit.drop_path(x, jnp.float32(0.5), jax.random.key(0))
  per_example = np.asarray(y)[:, 0, 0]
  assert set(np.unique(per_example)) == {0.0, 2.0}  # dropped or x / keep
  assert np.all(np.asarray(y) == per_example[:, None, None])
  assert 16 < np.sum(per_example == 0) < 48
  np.testing.assert_array_equal(vit.drop_path(x, jnp.float32(0.0),
                                              jax.random.key(1)), x)


def test_classifier_pools_like_the_official_global_pool():
  c = _classify_config()
  model = classifier.build(c, nnx.Rngs(0))
  assert model.encoder_norm is None and model.fc_norm is not None
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  tokens = model.encode(model.patchify(x))
  want = model.head(model.fc_norm(tokens[:, 1:].mean(1)))
  np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)
  # The fixed sin-cos table becomes a parameter initialized to it.
  from mae_jax.models import tokenizers
  np.testing.assert_array_equal(model.pos_embed.table[...],
                                tokenizers.sincos_pos_embed((4, 4), 32))
  c.classify.pool = 'cls'
  model = classifier.build(c, nnx.Rngs(0))
  tokens = model.encode(model.patchify(x))
  np.testing.assert_allclose(model(x), model.head(tokens[:, 0]), rtol=1e-5,
                             atol=1e-6)


def test_drop_path_grows_linearly_over_the_blocks():
  """timm's rule: block i of n drops at rate * i / (n - 1); the first block
  never, so a 1-block model is unchanged; on only with an rng."""
  stack = vit.BlockStack(3, 8, 16, 2, dtype=jnp.float32, attention=None,
                         rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (256, 2, 8))
  np.testing.assert_array_equal(stack(x, 0.5), stack(x))
  dropped = stack(x, 0.5, jax.random.key(1))
  assert not np.allclose(dropped, stack(x))
  one = vit.BlockStack(1, 8, 16, 2, dtype=jnp.float32, attention=None,
                       rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(one(x, 0.5, jax.random.key(1)), one(x))


def test_init_from_a_pretraining_run_copies_the_encoder(pretrained):
  c = _classify_config()
  c.init_from = pretrained
  source = mae_jax.load(pretrained).params
  tx = optim.optimizer(c, lambda s: 0.0)
  mesh = sharding.make_mesh(c.mesh)
  with sharding.rules_context(mesh, c.sharding.rules):
    setup = step_lib.StateSetup(c, tx, mesh)
    init = init_from.InitFrom(c, setup)
    params = init.restore(tx, jax.random.key(3)).params
    fresh = setup.init_params(jax.random.key(3))
  for path in (('encoder',), ('patch_embed',), ('cls_token',)):
    pick = lambda t: t[path[0]]
    jax.tree.map(np.testing.assert_array_equal, pick(params), pick(source))
  jax.tree.map(np.testing.assert_array_equal, params['head'], fresh['head'])
  assert 'decoder' in init.notes[0] and 'head' in init.notes[0]


def test_init_from_refuses_another_encoder(pretrained):
  c = _classify_config()
  c.init_from, c.model.variant = pretrained, 'mu/8'
  tx = optim.optimizer(c, lambda s: 0.0)
  mesh = sharding.make_mesh(c.mesh)
  with sharding.rules_context(mesh, c.sharding.rules), pytest.raises(
      config_lib.ConfigError, match="model.variant: checkpoint has 'mu/4'"):
    init_from.InitFrom(c, step_lib.StateSetup(c, tx, mesh))


def test_finetuning_resumes_exactly_and_reports_top1(pretrained, tmp_path):
  c = _classify_config(steps=4)
  c.init_from = pretrained
  c.optim.ema_decay = 0.9  # the EMA lives in the optimizer state: resumed too
  straight, split = tmp_path / 'straight', tmp_path / 'split'
  result = train.train(c, str(straight))
  c.stop_at_step = 2
  train.train(c, str(split))
  c.stop_at_step = 0
  train.train(c, str(split))
  losses = lambda w: [json.loads(l).get('loss') for l in
                      open(os.path.join(w, 'metrics.jsonl'))]
  assert losses(split) == losses(straight)
  a, b = mae_jax.load(str(straight)), mae_jax.load(str(split))
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  assert 0.0 <= result['classification/top1'] <= result['classification/top5']
  assert 0.0 <= result['ema/classification/top1'] <= 1.0
  assert np.isfinite(result['loss/classification'])
  assert a.encode(np.zeros((2, 16, 16, 3), np.float32)).shape == (2, 32)
  assert a.classify(np.zeros((2, 16, 16, 3), np.float32)).shape == (2, 10)
  with pytest.raises(ValueError, match="reconstruct.. needs a model of task"):
    a.reconstruct(np.zeros((2, 16, 16, 3), np.float32))


def test_top_k_accuracy_counts_labels_among_the_k_best():
  logits = np.array([[3., 2., 1.], [1., 2., 3.], [2., 3., 1.]])
  labels = np.array([0, 0, 2])
  assert classification.top_k_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
  assert classification.top_k_accuracy(logits, labels, 2) == pytest.approx(1 / 3)
  assert classification.top_k_accuracy(logits, labels, 3) == 1.0


@pytest.mark.parametrize('key,value,match', [
    ('classify.num_classes', 0, 'classify.num_classes=0'),
    ('classify.pool', 'max', "classify.pool='max'"),
    ('classify.drop_path', 1.0, 'classify.drop_path=1.0'),
    ('optim.layer_decay', 0.0, 'optim.layer_decay=0.0'),
    ('evals.reconstruction.enabled', True, 'evals.reconstruction'),
])
def test_bad_classify_configs_are_refused(key, value, match):
  c = _classify_config()
  a, *rest = key.split('.')
  node = c[a]
  for k in rest[:-1]:
    node = node[k]
  node[rest[-1]] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)


def test_classifier_flops_are_the_full_encoder_plus_the_head():
  from mae_jax import flops
  c = _classify_config()
  f = flops.train_flops(c)
  assert f['decoder'] == 0 and f['encoder_tokens'] == 17  # 16 patches + cls
  assert f['forward'] == flops.encoder_full_sequence_flops(c) + 2 * 32 * 10
  assert f['per_step'] == 3 * f['forward'] * c.batch_size


def test_fine_tuning_needs_labels_below_the_heads_classes():
  import types
  c = _classify_config()
  with pytest.raises(config_lib.ConfigError, match='is unlabelled'):
    train._check_labels(c, types.SimpleNamespace(num_classes=0))
  with pytest.raises(config_lib.ConfigError, match='set it to at least 12'):
    train._check_labels(c, types.SimpleNamespace(num_classes=12))
  train._check_labels(c, types.SimpleNamespace(num_classes=10))
