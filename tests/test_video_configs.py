"""The video paper-recipe configs: every variant / dataset argument builds and
validates (without the data on disk), the recipes hold the papers' numbers,
and each config's runlocal variant trains two steps on moving_digits."""

import pytest

from mae_jax import config as config_lib
from mae_jax import flops, optim, train
from conftest import load_config

ARGS = {
    'videomae': [f'variant={s}/2x16x16,dataset={d}'
                 for s in ('S', 'B', 'L', 'H') for d in ('k400', 'ssv2')],
    'mae_st': ['variant=B/2x16x16', 'variant=L/2x16x16',
               'variant=H/2x14x14'],
    'videomae_v2': [f'variant={v},dataset={d}'
                    for v in ('B/2x16x16', 'L/2x16x16', 'H/2x16x16',
                              'g/2x14x14')
                    for d in ('hybrid', 'k400', 'ssv2')],
    'video_4ds': [f'variant={v},dataset={d}'
                  for v in ('e/2x16x16', '22B/2x16x16')
                  for d in ('k400', 'ssv2')],
}
CASES = [(name, arg) for name, args in ARGS.items() for arg in args]


@pytest.mark.parametrize('name,arg', CASES)
def test_video_config_validates(name, arg):
  c = load_config(name, arg)
  config_lib.validate(c, check_files=False)
  assert c.data.source == 'video_files' and '{split}' in c.data.path
  assert c.model.frames == 16 and c.model.image_size == 224
  assert c.model.dtype == 'bfloat16'


def test_videomae_recipe():
  c = load_config('videomae', 'variant=B/2x16x16,dataset=k400')
  assert c.model.decoder == '384d4b6h' and c.masking.name == 'tube'
  assert c.masking.ratio == 0.9 and c.target == 'norm_pixels_channel'
  assert c.model.pos_embed == 'sincos_flat' and not c.model.cls_token
  assert c.data.frame_stride == 4 and c.batch_size == 2048
  assert optim.peak_lr(c) == pytest.approx(1.5e-4 * 2048 / 256)
  assert c.total_epochs == 1600 and c.optim.warmup_epochs == 40
  assert load_config('videomae', 'dataset=ssv2').data.frame_stride == 2
  assert load_config('videomae', 'dataset=ssv2').total_epochs == 2400
  assert load_config('videomae', 'variant=L/2x16x16').model.decoder == (
      '512d12b8h')
  # 16x224 in 2x16x16 tubelets: 8 x 14 x 14 tokens, 10% of each frame seen.
  f = flops.train_flops(c)
  assert f['encoder_tokens'] == 8 * (196 - int(0.9 * 196)) == 160


def test_mae_st_recipe():
  c = load_config('mae_st')
  assert c.model.variant == 'L/2x16x16' and c.model.decoder == '512d4b'
  assert c.masking.name == 'random' and c.masking.ratio == 0.9
  assert c.model.pos_embed == 'learned_separable' and c.model.cls_token
  assert c.data.clips_per_video == 4 and c.data.frame_stride == 4
  # The official lr = blr x videos / 256, with 4 clips per video.
  assert optim.peak_lr(c) == pytest.approx(1.6e-3 * (512 // 4) / 256)
  assert c.optim.clip_norm == 0.02 and c.total_epochs == 800
  with pytest.raises(config_lib.ConfigError, match='dataset'):
    load_config('mae_st', 'dataset=ssv2')


def test_videomae_v2_recipe():
  c = load_config('videomae_v2')
  assert c.model.variant == 'g/2x14x14' and c.model.decoder == '512d4b8h2234m'
  assert c.masking.name == 'dual' and c.masking.decoder_ratio == 0.5
  assert c.batch_size == 8192 and c.data.clips_per_video == 4
  # --lr 6e-4 x 2048 videos / 256 (32 per GPU x 64 GPUs).
  assert optim.peak_lr(c) == pytest.approx(6e-4 * 2048 / 256)
  assert c.total_epochs == 1200 and c.optim.warmup_epochs == 120
  assert c.optim.clip_norm == 0.02 and c.model.remat == 'full'
  f = flops.train_flops(c)
  assert f['encoder_tokens'] == 8 * (256 - int(0.9 * 256))
  assert f['decoder_tokens'] == f['encoder_tokens'] + 2048 // 2


def test_video_4ds_recipe():
  for variant in ('e/2x16x16', '22B/2x16x16'):
    c = load_config('video_4ds', f'variant={variant}')
    assert c.masking.ratio == 0.95 and c.model.remat == 'full'
    assert c.model.frames == 16 and not c.model.cls_token
    assert (c.mesh.data, c.mesh.fsdp) == (1, -1)  # the state is sharded


@pytest.mark.parametrize('name', sorted(ARGS))
def test_video_runlocal_trains(name, tmp_path):
  c = load_config(name, 'runlocal=true')
  assert c.data.source == 'moving_digits'
  config_lib.validate(c)
  c.stop_at_step = 2
  c.progress = False
  c.evals.linear_probe.enabled = c.evals.knn.enabled = False
  c.evals.reconstruction.enabled = False
  assert train.train(c, str(tmp_path))['step'] == 2
