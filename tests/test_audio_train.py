"""Audio on the shared code path: audio files in a manifest (WAV and FLAC at
8, 16 and 44.1 kHz) -> log-mel spectrograms -> pretraining with spectrogram
pictures, the API on waveforms, and multi-label fine-tuning with mAP."""

import io
import json
import os

import numpy as np
import pytest
import soundfile

import mae_jax
from mae_jax import data, train
from conftest import load_config

RATES = (8000, 16000, 44100)


def _tone(rate: int, seconds: float, freq: float, seed: int) -> np.ndarray:
  t = np.arange(int(rate * seconds)) / rate
  noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
  return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


@pytest.fixture(scope='module')
def audio_dir(tmp_path_factory):
  """12 train + 6 test files; class sets of 3 classes: tone frequency bands
  (multi-label: a file may hold two tones)."""
  root = tmp_path_factory.mktemp('audio')
  freqs = (300.0, 900.0, 2500.0)
  for split, n in (('train', 12), ('test', 6)):
    rows = ['path,labels']
    for i in range(n):
      rate = RATES[i % 3]
      classes = [i % 3] + ([(i + 1) % 3] if i % 2 else [])
      wave = sum(_tone(rate, 0.5 + 0.05 * i, freqs[k], i) for k in classes)
      name = f'{split}{i}.{"flac" if i % 4 == 3 else "wav"}'
      soundfile.write(root / name, wave, rate,
                      subtype='PCM_16' if i % 2 else 'FLOAT'
                      if name.endswith('wav') else 'PCM_16')
      rows.append(f'{name},{";".join(map(str, classes))}')
    (root / f'{split}.csv').write_text('\n'.join(rows) + '\n')
  return root


def _audio_config(root, steps=2):
  c = load_config('test', f'steps={steps}')
  c.model.variant, c.model.decoder = 'mu/8', '32d1b'
  c.model.spectrogram, c.model.channels = True, 1
  c.model.image_size = (32, 16)  # 0.32 s x 16 mel bins: a (4, 2) grid
  c.masking.ratio = 0.5
  c.data.update(source='audio_files', path=str(root / '{split}.csv'),
                split='train', eval_split='test', mean=(-6.0,), std=(8.0,),
                multi_label=True, num_classes=3)
  return c


def test_audio_pipeline_batches_and_labels(audio_dir):
  c = _audio_config(audio_dir)
  it = data.build_train_iterator(c.data, image_size=(32, 16), channels=1,
                                 global_batch=4, seed=0)
  b = next(it)
  assert b['image'].shape == (4, 32, 16, 1) and b['image'].dtype == np.float32
  assert b['label'].shape == (4, 3) and set(np.unique(b['label'])) <= {0, 1}
  assert (b['label'].sum(1) >= 1).all()
  state = it.get_state()
  b2 = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)['image'], b2['image'])  # resume
  it.close()
  (e,) = list(data.eval_batches(c.data, 'test', image_size=(32, 16),
                                channels=1, batch_size=8))
  assert e['label'].shape == (8, 3) and e['valid'].sum() == 6
  assert not e['label'][~e['valid']].any()


def test_bad_audio_files_are_named_or_skipped_and_counted(audio_dir):
  (audio_dir / 'empty.wav').write_bytes(b'')
  soundfile.write(audio_dir / 'short.wav', np.zeros(100, np.float32), 16000)
  (audio_dir / 'bad.csv').write_text('train0.wav,0\nempty.wav,1\n'
                                     'short.wav,2\nmissing.flac,0\n')
  c = _audio_config(audio_dir)
  c.data.update(path=str(audio_dir / 'bad.csv'), split='train',
                multi_label=False, num_classes=0)
  it = data.build_train_iterator(c.data, image_size=(32, 16), channels=1,
                                 global_batch=8, seed=0)
  with pytest.raises(data.BadRecordError, match=r'(empty\.wav\): the audio '
                     r'file is empty|short\.wav\): the audio is too short: '
                     r'100 samples|missing\.flac\): cannot be read)'):
    next(it)
  it.close()
  c.data.skip_bad_records = True
  it = data.build_train_iterator(c.data, image_size=(32, 16), channels=1,
                                 global_batch=8, seed=0)
  b = next(it)
  it.close()
  assert (b['index'] == 0).all() and b['skipped'].sum() > 0
  assert b['skipped'].max() == 3  # record 1 passes over 1, 2 and 3


def test_audio_pretraining_pictures_api_and_multilabel_finetune(
    audio_dir, tmp_path):
  c = _audio_config(audio_dir)
  # AudioMAE's 2-D masking through the whole loop: 2 of 4 time rows x 1 of
  # 2 mel columns visible.
  c.masking.update(name='time_freq', time_ratio=0.5, freq_ratio=0.5)
  c.evals.reconstruction.enabled = True
  c.evals.reconstruction.every_steps = 2
  pre = tmp_path / 'pre'
  assert train.train(c, str(pre))['step'] == 2
  pictures = os.listdir(pre / 'images')
  assert pictures == ['reconstruction_0000002.png']

  mae = mae_jax.load(str(pre))
  wave = _tone(16000, 0.4, 900.0, 0)
  spec = mae.spectrogram(wave)
  assert spec.shape == (32, 16)
  # 44.1 kHz in: resampled to the model's rate first.
  spec44 = mae.spectrogram(_tone(44100, 0.4, 900.0, 0), sample_rate=44100)
  assert np.argmax(spec44.mean(0)) == np.argmax(spec.mean(0))
  np.testing.assert_allclose(mae.encode(wave), mae.encode(spec), rtol=1e-6)
  assert mae.encode([wave, wave[:5000]]).shape[0] == 2
  recon, mask = mae.reconstruct(spec, rng=0)
  assert recon.shape == (32, 16) and mask.shape == (32, 16)
  assert mask.mean() == 0.75  # 2 of the 8 tokens of 8x8 bins visible
  np.testing.assert_allclose(recon[mask == 0], spec[mask == 0], atol=1e-4)
  with pytest.raises(ValueError, match=r'waveforms \[n\] or \[N, n\] at '
                     r'16000 Hz, or log-mel spectrograms \[32, 16\]'):
    mae.encode(np.zeros((2, 3, 4, 5)))

  f = _audio_config(audio_dir)
  f.task = 'classify'
  f.init_from = str(pre)
  f.classify.update(num_classes=3, randaugment_ops=0, random_erase=0.0,
                    cutmix=0.0, mixup=0.5, masking='time_freq')
  f.masking.update(time_ratio=0.5, freq_ratio=0.5)
  f.evals.classification.enabled = True
  f.evals.classification.every_steps = 2
  out = tmp_path / 'ft'
  assert train.train(f, str(out))['step'] == 2
  records = [json.loads(l) for l in open(out / 'metrics.jsonl')]
  (ev,) = [r for r in records if 'classification/mAP' in r]
  assert 0 < ev['classification/mAP'] <= 1
  assert np.isfinite(ev['classification/loss'])
  logits = mae_jax.load(str(out)).classify(wave)
  assert logits.shape == (3,)


def test_dataset_stats_are_those_of_the_decoded_frames(audio_dir):
  from mae_jax.data import audio, audio_stats  # pylint: disable=g-import-not-at-top
  c = _audio_config(audio_dir)
  mean, std, files, skipped = audio_stats.dataset_stats(c, max_files=5)
  ops = audio.AudioOps((32, 16))
  rows = (audio_dir / 'train.csv').read_text().split()[1:]
  picked = [rows[i].split(',')[0] for i in (0, 3, 6, 8, 11)]  # evenly spaced
  feats = np.concatenate([ops.decode((audio_dir / p).read_bytes(), p)
                          for p in picked]).astype(np.float64)
  assert (files, skipped) == (5, 0)
  assert mean == pytest.approx(feats.mean(), rel=1e-9)
  assert std == pytest.approx(feats.std(), rel=1e-6)
