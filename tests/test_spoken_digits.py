"""Tests of the spoken-digits set (mae_jax/data/spoken_digits.py): eSpeak NG
synthesis, layout and manifests, the split by speaker, the cache, byte-level
determinism and the command. Tiny sets (2 train voices + 1 test voice, one
repeat: 30 words, ~0.1 s each generation)."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from mae_jax.data import spoken_digits as sd
from conftest import ROOT, subprocess_env

TINY = {'train_voices': 2, 'test_voices': 1, 'per_voice_repeats': 1}


def _manifest(out, split):
  with open(os.path.join(out, f'{split}.csv'), encoding='utf-8') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['path', 'label']
  return [(path, int(label)) for path, label in rows[1:]]


def _wavs(out):
  """-> {path relative to out: bytes} of every WAV file under out/wav."""
  found = {}
  for folder, _, files in os.walk(os.path.join(out, 'wav')):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, out)] = f.read()
  return found


def _variant(voice):
  return voice.split('+')[1]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  return sd.ensure(str(tmp_path_factory.mktemp('sd') / 'set'), **TINY)


def test_manifests_list_every_file_with_every_digit(tiny):
  info = sd.read_info(tiny)
  listed = set()
  for split in sd.SPLITS:
    rows = _manifest(tiny, split)
    assert len(rows) == info['counts'][split] == 10 * len(
        info['voices'][split])
    assert sorted(label for _, label in rows) == sorted(
        list(range(10)) * len(info['voices'][split]))
    for path, label in rows:
      # wav/<split>/<voice>/<digit>_<repeat>.wav, the voice one of the split's.
      _, s, voice, name = path.split('/')
      assert s == split and voice in info['voices'][split]
      assert name.startswith(f'{label}_')
    listed |= {path for path, _ in rows}
  assert listed == set(_wavs(tiny))  # nothing unlisted, nothing missing


def test_train_and_test_speakers_are_disjoint(tiny):
  voices = sd.read_info(tiny)['voices']
  assert len(voices['train']) == 2 and len(voices['test']) == 1
  assert not {_variant(v) for v in voices['train']} & {
      _variant(v) for v in voices['test']}
  # The default set: held-out variants never occur in train, with any
  # accent, and every train variant is used before any is used twice.
  accents, variants = sd.list_voices()
  assert 'en-US' in accents and 'm1' in variants and 'fast' not in variants
  full = sd.choose_voices(accents, variants, seed=0, train_voices=100,
                          test_voices=25, test_variants=20)
  train, test = ({_variant(v) for v in full[s]} for s in sd.SPLITS)
  assert len(full['train']) == len(set(full['train'])) == 100
  assert len(test) == 20 and len(train) == len(variants) - 20
  assert not train & test


def test_more_voices_only_add_voices():
  accents, variants = sd.list_voices()
  kw = {'seed': 3, 'test_variants': 5}
  small = sd.choose_voices(accents, variants, train_voices=4, test_voices=2,
                           **kw)
  big = sd.choose_voices(accents, variants, train_voices=40, test_voices=9,
                         **kw)
  assert big['train'][:4] == small['train']
  assert big['test'][:2] == small['test']
  other = sd.choose_voices(accents, variants, train_voices=4, test_voices=2,
                           seed=4, test_variants=5)
  assert other != small
  with pytest.raises(ValueError, match='test_voices=41'):
    sd.choose_voices(accents, variants, train_voices=1, test_voices=41, **kw)


def test_wavs_are_short_trimmed_speech_at_22050(tiny):
  for path, _ in _manifest(tiny, 'train') + _manifest(tiny, 'test'):
    x, rate = soundfile.read(os.path.join(tiny, path), dtype='int16')
    assert rate == 22050 and x.ndim == 1
    assert soundfile.info(os.path.join(tiny, path)).subtype == 'PCM_16'
    assert 0.1 * rate < len(x) < 2 * rate, path
    assert np.abs(x.astype(np.int32)).max() > 2000, path  # not silent
    # eSpeak starts with 15 ms of zeros (330 samples); trimmed to the 10 ms
    # margin at most.
    assert np.flatnonzero(x)[0] <= 221, path


def test_different_digits_and_voices_differ(tiny):
  rows = dict((label, path) for path, label in _manifest(tiny, 'train')
              if path.split('/')[2] == sd.read_info(tiny)['voices']['train'][0])
  wavs = _wavs(tiny)
  assert sorted(rows) == list(range(10))
  assert len({wavs[rows[d]] for d in range(10)}) == 10
  seven = [p for p, label in _manifest(tiny, 'train') if label == 7]
  assert len(seven) == 2 and wavs[seven[0]] != wavs[seven[1]]


def test_cache_hit_keeps_files_and_force_rewrites_the_same_bytes(tmp_path):
  out = sd.ensure(str(tmp_path / 'set'), **TINY)
  before = _wavs(out)
  mtimes = {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in before}
  marker = os.path.join(out, 'marker')
  open(marker, 'w').close()
  assert sd.ensure(str(tmp_path / 'set'), **TINY) == out
  assert os.path.exists(marker)  # the same folder, not a regenerated one
  assert {p: os.stat(os.path.join(out, p)).st_mtime_ns
          for p in before} == mtimes
  assert sd.ensure(out, force=True, **TINY) == out
  assert not os.path.exists(marker)  # regenerated ...
  assert _wavs(out) == before       # ... byte for byte
  assert sorted(os.listdir(tmp_path)) == ['set']  # no temporary folders left


def test_other_parameters_regenerate(tmp_path):
  out = sd.ensure(str(tmp_path / 'set'), **TINY)
  before = _wavs(out)
  open(os.path.join(out, 'marker'), 'w').close()
  sd.ensure(out, **dict(TINY, rate=(100, 110)))
  assert not os.path.exists(os.path.join(out, 'marker'))
  assert sd.read_info(out)['params']['rate'] == [100, 110]
  after = _wavs(out)
  assert after.keys() == before.keys()  # same voices: only the rate changed
  assert all(len(after[p]) > len(before[p]) for p in before)  # slower speech
  sd.ensure(out, **dict(TINY, seed=1))
  assert sd.read_info(out)['params']['seed'] == 1
  assert _wavs(out).keys() != before.keys()  # other voices


def test_a_voice_does_not_depend_on_the_rest_of_the_set(tmp_path, tiny):
  # eSpeak carries state from one utterance to the next: without a fresh
  # engine per voice, the second voice's words would change with the
  # number of words of the first.
  big = sd.ensure(str(tmp_path / 'big'), train_voices=3, test_voices=2,
                  per_voice_repeats=2)
  small, large = _wavs(tiny), _wavs(big)
  assert set(small) < set(large)
  assert all(large[p] == small[p] for p in small)
  # And synthesize() (a fresh engine per call) gives the same samples twice.
  a = sd.synthesize('seven', 'en-GB-x-rp+whisper', rate=150, noise_seed=5)
  assert np.array_equal(a, sd.synthesize('seven', 'en-GB-x-rp+whisper',
                                         rate=150, noise_seed=5))
  assert not np.array_equal(a, sd.synthesize('seven', 'en-GB-x-rp+whisper',
                                             rate=150, noise_seed=6))


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
  written = []

  def write_then_fail(path, samples, rate):
    if len(written) == 5:
      raise KeyboardInterrupt
    written.append(path)

  monkeypatch.setattr(sd, '_write_wav', write_then_fail)
  with pytest.raises(KeyboardInterrupt):
    sd.ensure(str(tmp_path / 'set'), **TINY)
  assert os.listdir(tmp_path) == []


def test_refuses_to_replace_a_folder_that_is_not_a_set(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(ValueError, match='not a spoken_digits directory'):
    sd.ensure(str(tmp_path), **TINY)
  assert os.listdir(tmp_path) == ['notes.txt']


def test_bad_parameters_name_the_key():
  with pytest.raises(ValueError, match=r"\['speed'\].*allowed"):
    sd.ensure('/nonexistent', speed=3)
  with pytest.raises(ValueError, match='rate=.*80 <= min'):
    sd.ensure('/nonexistent', rate=(20, 100))
  with pytest.raises(ValueError, match='per_voice_repeats'):
    sd.ensure('/nonexistent', per_voice_repeats=0)
  with pytest.raises(ValueError, match='en-US\\+nobody'):
    sd.synthesize('one', 'en-US+nobody')


def test_missing_library_or_data_says_what_to_install(monkeypatch,
                                                      tmp_path):
  import espeakng_loader  # pylint: disable=g-import-not-at-top
  # Without espeakINITIALIZE_DONT_EXIT, eSpeak would exit() the process here.
  monkeypatch.setattr(espeakng_loader, 'get_data_path', lambda: str(tmp_path))
  with pytest.raises(sd.EspeakError, match='pip install espeakng-loader'):
    sd.Synthesizer()
  monkeypatch.setitem(sys.modules, 'espeakng_loader', None)  # import fails
  with pytest.raises(sd.EspeakError, match='pip install espeakng-loader'):
    sd.Synthesizer()


def test_trim_keeps_the_loud_span_plus_margin():
  x = np.zeros(22050, np.int16)
  x[5000:6000] = 10000
  x[4000] = 50  # below 1% of the peak: trimmed away
  y = sd.trim(x, 22050, margin_ms=10)
  assert len(y) == 1000 + 2 * 220 and y.max() == 10000
  assert len(sd.trim(x[5000:6000], 22050)) == 1000  # margin within bounds
  assert len(sd.trim(np.zeros(10, np.int16), 22050)) == 0


def test_default_dir_and_command(tmp_path, monkeypatch):
  monkeypatch.setenv('MAE_JAX_DATA', str(tmp_path))
  assert sd.default_dir() == str(tmp_path / 'spoken_digits')
  env = dict(subprocess_env(), MAE_JAX_DATA=str(tmp_path))
  cmd = [sys.executable, '-m', 'mae_jax.data.spoken_digits',
         '--train_voices=2', '--test_voices=1', '--per_voice_repeats=1',
         '--rate=150,160']
  for expected in ('generated in', 'already there (cached)'):
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                       text=True, check=True)
    assert f'{tmp_path}/spoken_digits: 20 train + 10 test' in r.stdout
    assert expected in r.stdout
  assert sd.read_info(str(tmp_path / 'spoken_digits'))['params']['rate'] == [
      150, 160]
