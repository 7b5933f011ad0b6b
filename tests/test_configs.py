"""Every config file loads and validates; the ImageNet recipe holds the
paper's numbers; config-file arguments are checked."""


import pytest

from mae_jax import config as config_lib
from mae_jax import optim, train
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


def test_imagenet_runlocal_trains(tmp_path):
  c = load_config('mae_imagenet', 'runlocal=true')
  c.stop_at_step = 2
  c.evals.linear_probe.enabled = c.evals.knn.enabled = False
  assert train.train(c, str(tmp_path))['step'] == 2


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
