"""Multi-label sets (AudioSet-style): mAP against sklearn, multi-hot targets,
the sigmoid loss, and the checks that keep single-label tools off them
(with the check of classify.masking, token masking while fine-tuning)."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics

from mae_jax import augment, config as config_lib, tasks
from mae_jax.evaluators import classification
from conftest import load_config


def test_average_precision_equals_sklearn_with_ties():
  rng = np.random.default_rng(0)
  for n in (5, 40, 200):
    positive = rng.random(n) < 0.3
    positive[0] = True
    # Rounded scores: many ties, which sklearn counts as one threshold.
    scores = np.round(rng.normal(size=n) + positive, 1)
    assert classification.average_precision(scores, positive) == (
        pytest.approx(metrics.average_precision_score(positive, scores),
                      abs=1e-12))
  # Perfect and worst rankings.
  assert classification.average_precision(np.array([3., 2, 1]),
                                          np.array([1, 1, 0], bool)) == 1.0
  assert classification.average_precision(
      np.array([3., 2, 1]), np.array([0, 0, 1], bool)) == pytest.approx(1 / 3)


def test_mean_average_precision_skips_classes_without_positives():
  rng = np.random.default_rng(1)
  labels = (rng.random((50, 6)) < 0.3).astype(np.float32)
  labels[:, 4] = 0  # no positive: not averaged
  scores = rng.normal(size=(50, 6)) + 2 * labels
  present = [k for k in range(6) if k != 4]
  want = np.mean([metrics.average_precision_score(labels[:, k], scores[:, k])
                  for k in present])
  assert classification.mean_average_precision(scores, labels) == (
      pytest.approx(want, abs=1e-12))
  with pytest.raises(ValueError, match='no class has a positive'):
    classification.mean_average_precision(scores, np.zeros_like(labels))


def test_multi_hot_targets_are_smoothed_per_class():
  hot = jnp.array([[1., 0, 1, 0], [0, 0, 0, 0]])
  t = np.asarray(augment.smooth_one_hot(hot, 4, 0.2))
  np.testing.assert_allclose(t, [[0.85, 0.05, 0.85, 0.05], [0.05] * 4])
  # A class id gives the same row as its one-hot vector.
  np.testing.assert_array_equal(
      augment.smooth_one_hot(jnp.array([2]), 4, 0.2),
      augment.smooth_one_hot(jnp.array([[0., 0, 1, 0]]), 4, 0.2))


def _multi_config():
  c = load_config('test')
  c.task = 'classify'
  c.data.update(source='audio_files', path='x/{split}.csv', multi_label=True,
                num_classes=5)
  c.classify.num_classes = 5
  return c


def test_multi_label_config_checks():
  c = _multi_config()
  c.classify.num_classes = 4
  with pytest.raises(ValueError, match=r'classify\.num_classes=4: must equal '
                     r'config\.data\.num_classes=5'):
    tasks.check(c)
  c = _multi_config()
  c.classify.masking = 'adaptive'  # needs the model's sampler: not here
  with pytest.raises(ValueError, match=r"classify\.masking='adaptive': needs "
                     r'a strategy that is a function of the key alone'):
    tasks.check(c)
  c = _multi_config()
  c.task = 'pretrain'  # the data checks alone
  c.data.num_classes = 0
  with pytest.raises(ValueError, match=r'data\.num_classes=0: .*527'):
    config_lib.validate(c, check_files=False)
  c = _multi_config()
  c.task = 'pretrain'
  c.data.source = 'mnist'
  with pytest.raises(ValueError, match=r"data\.multi_label=True: label sets "
                     r"are read from manifests"):
    config_lib.validate(c, check_files=False)


def test_sigmoid_loss_for_multi_label():
  c = _multi_config()
  c.classify.update(randaugment_ops=0, random_erase=0.0, mixup=0.0, cutmix=0.0,
                    label_smoothing=0.0)
  task = tasks.get(c)
  logits = jnp.array([[2., -1, 0, 0, 3]])

  class Fixed:
    def __call__(self, images, rng):
      return logits

  targets = jnp.array([[1., 0, 0, 1, 1]])
  got = task.loss(Fixed(), (None, targets), None)['classification']
  p = 1 / (1 + np.exp(-np.asarray(logits)))
  t = np.asarray(targets)
  want = float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))
  assert float(got) == pytest.approx(want, rel=1e-6)
