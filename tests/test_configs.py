"""Every config file loads and validates; the ImageNet recipe holds the
paper's numbers; config-file arguments are checked."""


import pytest

from mae_jax import config as config_lib
from mae_jax import evaluate, optim, train
from conftest import ROOT, load_config

CONFIGS = sorted(p.stem for p in (ROOT / 'configs').glob('*.py'))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_validates(name):
  c = load_config(name)
  config_lib.validate(c, num_devices=1)  # (tfds data is only opened by runs)


@pytest.mark.parametrize('variant,patch', [('B/16', 16), ('L/16', 16),
                                           ('H/14', 14)])
def test_imagenet_recipe_matches_the_paper(variant, patch):
  c = load_config('mae_imagenet', f'variant={variant},epochs=1600')
  assert c.model.variant == variant and c.model.decoder == '512d8b'
  assert c.model.image_size == 224 and c.masking.ratio == 0.75
  assert c.target == 'norm_pixels' and c.batch_size == 4096
  assert optim.peak_lr(c) == pytest.approx(1.5e-4 * 4096 / 256)
  assert c.total_epochs == 1600 and c.optim.warmup_epochs == 40
  assert (c.optim.b1, c.optim.b2, c.optim.weight_decay) == (0.9, 0.95, 0.05)
  assert tuple(c.data.crop_scale) == (0.2, 1.0) and c.data.hflip
  # 1.28M images / 4096 = 312 steps per epoch
  assert optim.total_steps(c, 1_281_167) == 312 * 1600


def test_imagenet_runlocal_then_linprobe_and_finetune_recipes(tmp_path):
  """The recipes chained as in the README: pretrain, probe with the
  linear-probe recipe, fine-tune from the pretraining workdir."""
  c = load_config('mae_imagenet', 'runlocal=true')
  c.stop_at_step = 2
  c.evals.linear_probe.enabled = c.evals.knn.enabled = False
  pre = str(tmp_path / 'pre')
  assert train.train(c, pre)['step'] == 2
  recipe = load_config('mae_linprobe', 'runlocal=true')
  out = evaluate.evaluate(pre, ['linear_probe'], recipe=recipe)
  assert 0 <= out['linear_probe/accuracy'] <= 1
  recipe.model.variant = 'mu/8'
  with pytest.raises(config_lib.ConfigError, match="model.variant: checkpoint"):
    evaluate.evaluate(pre, ['linear_probe'], recipe=recipe)
  f = load_config('mae_finetune', 'runlocal=true')
  f.init_from = pre
  result = train.train(f, str(tmp_path / 'finetune'))
  assert result['step'] == 6 and 0 <= result['classification/top1'] <= 1


@pytest.mark.parametrize('variant,epochs,blr,decay,drop', [
    ('B/16', 100, 5e-4, 0.65, 0.1), ('L/16', 50, 1e-3, 0.75, 0.2),
    ('H/14', 50, 1e-3, 0.75, 0.3)])
def test_finetune_recipe_matches_the_official_commands(variant, epochs, blr,
                                                       decay, drop):
  c = load_config('mae_finetune', f'variant={variant}')
  assert (c.task, c.classify.num_classes, c.batch_size) == ('classify', 1000,
                                                            1024)
  assert (c.total_epochs, c.optim.base_lr, c.optim.layer_decay,
          c.classify.drop_path) == (epochs, blr, decay, drop)
  f = c.classify
  assert (f.mixup, f.cutmix, f.label_smoothing, f.random_erase) == (
      0.8, 1.0, 0.1, 0.25)
  assert (f.randaugment_ops, f.randaugment_magnitude, f.pool) == (2, 9, 'mean')
  assert (c.optim.b1, c.optim.b2, c.optim.weight_decay) == (0.9, 0.999, 0.05)
  assert c.optim.warmup_epochs == 5 and tuple(c.data.crop_scale) == (0.08, 1)
  lp = load_config('mae_linprobe', f'variant={variant}').evals.linear_probe
  assert (lp.epochs, lp.warmup_epochs, lp.base_lr, lp.batch_size,
          lp.weight_decay, lp.pool) == (90, 10, 0.1, 16384, 0.0, 'cls')


def test_config_arguments_are_checked():
  with pytest.raises(config_lib.ConfigError, match="'epoch=3'"):
    load_config('demo', 'epoch=3')
  with pytest.raises(config_lib.ConfigError, match='expected a value of type int'):
    load_config('demo', 'epochs=many')


def test_configs_saved_before_the_video_keys_still_build_their_model():
  from mae_jax import config as config_lib
  from mae_jax.models import mae
  saved = load_config('test').to_dict()
  for key in ('frames', 'pos_embed'):
    del saved['model'][key]
  saved['masking'] = {'name': 'random', 'ratio': 0.5}
  c = config_lib.with_defaults(saved)
  kw = mae.model_kwargs(c)
  assert kw['input_size'] == (16, 16) and kw['pos_embed'] == 'sincos'
  assert kw['masking_options'].ratio == 0.5
  assert c.model.variant == 'mu/4'  # saved values win over defaults


@pytest.mark.parametrize('dataset,classes,multi,frames,batch,epochs,blr', [
    ('as20k', 527, True, 1024, 32, 60, 1e-3),
    ('as2m', 527, True, 1024, 512, 100, 2e-4),
    ('esc50', 50, False, 512, 64, 50, 1e-3)])
def test_audiomae_finetune_recipes_match_the_official_scripts(
    dataset, classes, multi, frames, batch, epochs, blr):
  c = load_config('audiomae_finetune', f'set={dataset}')
  assert (c.classify.num_classes, c.data.multi_label, c.batch_size,
          c.total_epochs, c.optim.base_lr) == (classes, multi, batch, epochs,
                                               blr)
  assert tuple(c.model.image_size) == (frames, 128) and c.model.spectrogram
  assert (c.classify.masking, c.masking.time_ratio,
          c.masking.freq_ratio) == ('time_freq', 0.2, 0.2)
  assert (c.optim.layer_decay, c.classify.drop_path) == (0.75, 0.1)
  assert c.classify.mixup == (0.5 if multi else 0.0)


def test_audiomae_recipe_then_finetune_runlocal(tmp_path, monkeypatch):
  """AudioMAE's pretraining recipe (the paper's numbers), then its runlocal
  form (local decoder, spoken digits) chained into the fine-tuning recipe's
  (one step: fine-tuning audio runs in test_audio_train.py)."""
  c = load_config('audiomae')
  assert (c.model.variant, c.model.decoder, c.model.decoder_attention,
          tuple(c.model.decoder_window), tuple(c.model.decoder_shift)) == (
              'B/16', '512d16b16h', 'local', (4, 4), (2, 0))
  assert tuple(c.model.image_size) == (1024, 128) and c.masking.ratio == 0.8
  assert (c.batch_size, c.total_epochs, c.optim.base_lr, c.target) == (
      512, 32, 2e-4, 'norm_pixels')
  assert tuple(c.data.std) == (pytest.approx(2 * 4.5689974),)
  monkeypatch.setenv('MAE_JAX_DATA', str(tmp_path / 'data'))
  c = load_config('audiomae', 'runlocal=true')
  c.stop_at_step = 2
  pre = str(tmp_path / 'pre')
  assert train.train(c, pre)['step'] == 2
  f = load_config('audiomae_finetune', 'runlocal=true')
  f.init_from, f.total_steps, f.optim.warmup_steps = pre, 1, 0
  f.evals.classification.max_examples = 16
  result = train.train(f, str(tmp_path / 'finetune'))
  assert result['step'] == 1 and 0 <= result['classification/top1'] <= 1
