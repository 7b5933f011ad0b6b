"""Audio decoding, AudioMAE's log-mel filterbank and the audio ops
(mae_jax/data/audio.py).

The filterbank is checked against two independent implementations:
torchaudio's Kaldi-compliance fbank, the call AudioMAE makes (a stored
fixture: tests/fixtures/make_fbank_fixture.py), and kaldi_native_fbank
(Kaldi's C++ computation, a dev dependency), both in float32 where
mae_jax computes in float64: the tolerances below are their float32
rounding, which grows for mel bins far below the loudest one of their
frame.
"""

from __future__ import annotations

import io
import math
import pathlib

import numpy as np
import pytest
import soundfile

from mae_jax.data import audio
from mae_jax.data.transforms import BadRecordError

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'fbank_torchaudio.npz'
SR = 16000


def encode(wave: np.ndarray, rate: int = SR, fmt: str = 'WAV',
           subtype: str | None = None) -> bytes:
  """Samples [n] or [n, channels] -> sound file bytes."""
  buf = io.BytesIO()
  soundfile.write(buf, wave, rate, format=fmt, subtype=subtype)
  return buf.getvalue()


def sine(freq: float, seconds: float, rate: int) -> np.ndarray:
  t = np.arange(int(round(seconds * rate))) / rate
  return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp(seconds: float, rate: int) -> np.ndarray:
  """Linear chirp from 50 Hz to 100 Hz below Nyquist."""
  t = np.arange(int(seconds * rate)) / rate
  rate_hz = (rate / 2 - 150) / seconds
  return (0.5 * np.sin(2 * np.pi * (50 * t + 0.5 * rate_hz * t ** 2))
          ).astype(np.float32)


def depth(feats: np.ndarray) -> np.ndarray:
  """How far (in log units) each value lies below its frame's largest."""
  return feats.max(axis=1, keepdims=True) - feats


# ------------------------------------------------------------ filterbank


@pytest.fixture(scope='module')
def torchaudio_fixture():
  with np.load(FIXTURE) as z:
    return {k: z[k] for k in z.files}


def test_fbank_matches_torchaudio_audiomae_call(torchaudio_fixture):
  z = torchaudio_fixture
  # The whole decode path, from a 16-bit WAV of the fixture's samples (read
  # as torchaudio.load reads them: int16 / 32768).
  ops = audio.AudioOps((128, 128))
  ours = ops.decode(encode(z['wave_int16'], subtype='PCM_16'), 'fixture')
  assert ours.dtype == np.float32
  assert ours.shape == z['fbank_float32'].shape == (79, 128)
  # torchaudio in float64 differs from us by its float32 mel filters only
  # (measured 7e-5).
  np.testing.assert_allclose(ours, z['fbank_float64'], rtol=0, atol=3e-4)
  # AudioMAE's own float32 computation: float32 FFT rounding on top
  # (measured 8e-5 within 15 of the frame's top, 5.3e-4 anywhere).
  theirs = z['fbank_float32']
  near = depth(ours) < 15
  np.testing.assert_allclose(ours[near], theirs[near], rtol=0, atol=5e-4)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=5e-3)
  # The same values at the log floor: the silent frames and mel bin 3.
  floor = ours == audio.LOG_FLOOR
  np.testing.assert_array_equal(floor, theirs == audio.LOG_FLOOR)
  assert floor.all(axis=1).sum() == 13  # 0.15 s of digital silence


def test_mel_banks_match_torchaudio(torchaudio_fixture):
  ours = audio.mel_banks(128, 512, float(SR))
  theirs = torchaudio_fixture['mel_banks']  # float32, without Nyquist
  assert ours.shape == (128, 257)
  np.testing.assert_array_equal(ours[:, -1], 0)
  np.testing.assert_allclose(ours[:, :-1], theirs, rtol=0, atol=5e-5)
  np.testing.assert_array_equal(ours[:, :-1] > 0, theirs > 0)
  # 128 bins on a 512-point FFT at 16 kHz: bin 3 (about 75 Hz) falls
  # between two FFT bins, so AudioMAE's bin 3 is always the log floor (and
  # Kaldi's C++ refuses this setting: "num_mel_bins too large").
  np.testing.assert_array_equal(np.flatnonzero(ours.sum(axis=1) == 0), [3])
  wave = np.random.default_rng(0).uniform(-0.5, 0.5, 2000)
  np.testing.assert_array_equal(audio.fbank(wave)[:, 3], audio.LOG_FLOOR)


def knf_fbank(wave: np.ndarray, rate: int, bins: int,
              frame_length_ms: float) -> np.ndarray:
  """kaldi_native_fbank set up as AudioMAE's torchaudio call."""
  knf = pytest.importorskip('kaldi_native_fbank')
  opts = knf.FbankOptions()
  opts.frame_opts.samp_freq = rate
  opts.frame_opts.frame_length_ms = frame_length_ms
  opts.frame_opts.frame_shift_ms = 10.0
  opts.frame_opts.dither = 0.0
  opts.frame_opts.window_type = 'hanning'
  opts.frame_opts.preemph_coeff = 0.97
  opts.frame_opts.remove_dc_offset = True
  opts.frame_opts.round_to_power_of_two = True
  opts.frame_opts.snip_edges = True
  opts.mel_opts.num_bins = bins
  opts.mel_opts.low_freq = 20.0
  opts.mel_opts.high_freq = 0.0  # Nyquist
  opts.use_energy = False
  opts.htk_compat = True
  opts.use_log_fbank = True
  opts.use_power = True
  computer = knf.OnlineFbank(opts)
  # The same samples as AudioMAE's: float in [-1, 1], the mean removed.
  computer.accept_waveform(rate, (wave - wave.mean()).astype(np.float32))
  computer.input_finished()
  return np.stack([computer.get_frame(i)
                   for i in range(computer.num_frames_ready)])


# Kaldi's C++ refuses 128 bins at 16 kHz with 25 ms frames (an empty bin:
# see test_mel_banks_match_torchaudio), so 16 kHz is checked with 80 bins,
# and 128 bins with 50 ms frames and at 32 kHz.
@pytest.mark.parametrize('rate,bins,frame_length_ms',
                         [(16000, 80, 25.0), (16000, 128, 50.0),
                          (32000, 128, 25.0)])
def test_fbank_matches_kaldi_native_fbank(rate, bins, frame_length_ms):
  rng = np.random.default_rng(1)
  noise = rng.uniform(-0.5, 0.5, int(1.5 * rate) + 37).astype(np.float32)
  for name, wave in (('noise', noise), ('chirp', chirp(1.5, rate))):
    ours = audio.fbank(wave, rate, bins, frame_length_ms)
    theirs = knf_fbank(wave, rate, bins, frame_length_ms)
    assert ours.shape == theirs.shape, name
    assert ours.shape[0] == audio.num_frames(len(wave), rate,
                                             frame_length_ms)
    diff = np.abs(ours - theirs)
    # Measured: noise 3e-5..6e-4; chirp 3e-4 within 15 of the frame's
    # top, 0.016 in its deep stop band (float32 rounding in Kaldi).
    assert diff[depth(ours) < 15].max() < 1e-3, name
    assert diff.max() < 0.05, name


def test_fbank_frame_count_and_errors():
  rng = np.random.default_rng(2)
  for n in (400, 401, 559, 560, 719, 720, 16000, 160007):
    feats = audio.fbank(rng.uniform(-1, 1, n))
    assert feats.shape == (1 + (n - 400) // 160, 128), n
    assert feats.dtype == np.float32
    assert audio.num_frames(n) == feats.shape[0]
  assert audio.num_frames(399) == 0
  with pytest.raises(ValueError, match='at least 400 samples'):
    audio.fbank(np.zeros(399))
  with pytest.raises(ValueError, match=r'shape \(2, 500\)'):
    audio.fbank(np.zeros((2, 500)))


def test_fbank_ignores_dc_offset_and_scales_with_gain():
  rng = np.random.default_rng(3)
  wave = rng.uniform(-0.4, 0.4, 4000)
  base = audio.fbank(wave)
  # The clip's mean and each frame's mean are removed: an offset is a no-op.
  np.testing.assert_allclose(audio.fbank(wave + 0.25), base, atol=1e-5)
  # Power spectrum: a gain g adds 2 log g (bin 3 stays at the floor).
  live = np.arange(128) != 3
  np.testing.assert_allclose(audio.fbank(1.5 * wave)[:, live],
                             base[:, live] + 2 * math.log(1.5), atol=1e-5)


def test_fix_length_crops_and_pads():
  feats = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
  np.testing.assert_array_equal(audio.fix_length(feats, 4), feats[:4])
  np.testing.assert_array_equal(audio.fix_length(feats, 4, 6), feats[6:])
  padded = audio.fix_length(feats, 13)
  assert padded.shape == (13, 3) and padded.dtype == np.float32
  np.testing.assert_array_equal(padded[:10], feats)
  np.testing.assert_array_equal(padded[10:], 0)
  np.testing.assert_array_equal(audio.fix_length(feats, 10), feats)
  for start, frames in ((7, 4), (-1, 4), (1, 13)):
    with pytest.raises(ValueError, match=f'start={start}'):
      audio.fix_length(feats, frames, start)


# ------------------------------------------------------------- reading


def test_read_wav_int16_float_and_flac_exact():
  rng = np.random.default_rng(4)
  pcm = rng.integers(-32768, 32768, 1000).astype(np.int16)
  expected = pcm.astype(np.float32) / 32768  # as torchaudio.load
  for fmt in ('WAV', 'FLAC'):
    got = audio.read_audio(encode(pcm, fmt=fmt, subtype='PCM_16'), fmt)
    assert got.dtype == np.float32 and got.shape == (1000,)
    np.testing.assert_array_equal(got, expected)
  floats = rng.uniform(-1, 1, 1000).astype(np.float32)
  got = audio.read_audio(encode(floats, subtype='FLOAT'), 'float wav')
  np.testing.assert_array_equal(got, floats)


def test_read_ogg_vorbis():
  wave = sine(1000, 0.5, SR)
  got = audio.read_audio(encode(wave, fmt='OGG', subtype='VORBIS'), 'ogg')
  assert got.shape == wave.shape  # lossy, but the same length
  assert peak_hz(got, SR) == pytest.approx(1000, abs=SR / len(got) + 1e-9)


def test_read_stereo_is_averaged():
  rng = np.random.default_rng(5)
  stereo = rng.uniform(-1, 1, (800, 2)).astype(np.float32)
  got = audio.read_audio(encode(stereo, subtype='FLOAT'), 'stereo')
  assert got.shape == (800,)
  np.testing.assert_allclose(got, stereo.mean(axis=1), rtol=0, atol=1e-7)


def peak_hz(wave: np.ndarray, rate: int) -> float:
  spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
  return float(np.argmax(spectrum) * rate / len(wave))


@pytest.mark.parametrize('rate', [8000, 44100])
def test_read_resamples_to_16k(rate):
  wave = sine(1000, 0.5, rate)
  got = audio.read_audio(encode(wave, rate, subtype='FLOAT'), f'{rate} Hz')
  assert got.dtype == np.float32
  assert abs(len(got) - len(wave) * SR / rate) <= 2
  # A 1 kHz tone stays at 1 kHz, to within one FFT bin (2 Hz).
  assert abs(peak_hz(got, SR) - 1000) <= SR / len(got)
  assert 0.45 < np.abs(got[1000:-1000]).max() < 0.55  # and keeps its level
  # The target rate is a parameter.
  got8k = audio.read_audio(encode(wave, rate, subtype='FLOAT'), 'x', 8000)
  assert abs(len(got8k) - len(wave) * 8000 / rate) <= 2


@pytest.mark.parametrize('data,message', [
    (b'garbage bytes, not audio',
     r'^rec 7: cannot decode 24 bytes as audio \(LibsndfileError: Format not '
     r'recognised'),
    (b'', r'^rec 7: the audio file is empty \(0 bytes\)'),
    (encode(np.zeros(0, np.int16), subtype='PCM_16'),
     r'^rec 7: the audio file holds no samples'),
    (encode(np.zeros(399, np.int16), subtype='PCM_16'),
     r'^rec 7: the audio is too short: 399 samples at 16000 Hz .*need at '
     r'least 400'),
    (encode(np.zeros(199, np.float32), 8000, subtype='FLOAT'),
     r'^rec 7: the audio is too short: 398 samples at 16000 Hz after '
     r'resampling from 8000 Hz .*need at least 400'),
    (encode(np.array([0.1, np.nan] * 300, np.float32), subtype='FLOAT'),
     r'^rec 7: the audio holds 300 NaN or infinite samples'),
])
def test_read_bad_inputs_name_where_and_why(data, message):
  with pytest.raises(BadRecordError, match=message):
    audio.read_audio(data, 'rec 7')


def test_read_exactly_one_frame():
  got = audio.read_audio(encode(np.ones(400, np.int16), subtype='PCM_16'),
                         'x')
  assert audio.fbank(got).shape == (1, 128)


# ----------------------------------------------------------------- ops


def test_ops_shapes_and_decode():
  ops = audio.AudioOps((64, 128))
  assert ops.shape == (64, 128, 1)
  assert ops.channels == 1 and ops.clips is False and ops.size == (64, 128)
  wave = chirp(0.7, SR)
  feats = ops.decode(encode(wave, subtype='FLOAT'), 'rec 0')
  assert feats.dtype == np.float32
  np.testing.assert_array_equal(feats, audio.fbank(wave))
  assert feats.shape == (68, 128)
  # Features computed offline (AudioMAE's use_fbank) pass through.
  np.testing.assert_array_equal(ops.decode(feats, 'rec 1'), feats)
  with pytest.raises(BadRecordError, match=r'^rec 2: audio features of '
                     r'shape \(68, 64\)'):
    ops.decode(feats[:, :64], 'rec 2')
  with pytest.raises(BadRecordError, match='^rec 3: audio is dtype int64'):
    ops.decode(np.zeros((5, 128), np.int64), 'rec 3')
  with pytest.raises(BadRecordError, match='^rec 4: cannot decode'):
    ops.decode(b'not a sound file at all', 'rec 4')


def test_ops_crop_pad_and_determinism():
  ops = audio.AudioOps((20, 8))
  long = np.random.default_rng(6).standard_normal((100, 8)).astype(
      np.float32)
  view = ops.eval_view(long)
  assert view.shape == (20, 8, 1) and view.dtype == np.float32
  np.testing.assert_array_equal(view[..., 0], long[:20])
  np.testing.assert_array_equal(ops.eval_view(long), view)

  def start_of(out):
    starts = [s for s in range(81)
              if np.array_equal(out[..., 0], long[s:s + 20])]
    assert len(starts) == 1
    return starts[0]

  a = ops.augment(long, np.random.default_rng(11))
  b = ops.augment(long, np.random.default_rng(11))
  assert a.shape == (20, 8, 1) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  starts = {start_of(ops.augment(long, np.random.default_rng(seed)))
            for seed in range(30)}
  assert len(starts) > 10  # uniform over 81 starts

  short = long[:7]
  for out in (ops.augment(short, np.random.default_rng(0)),
              ops.eval_view(short)):
    assert out.shape == (20, 8, 1)
    np.testing.assert_array_equal(out[:7, :, 0], short)
    np.testing.assert_array_equal(out[7:], 0)


def test_ops_roll_mag_is_a_gain():
  ops = audio.AudioOps((20, 8), roll_mag=True)
  feats = np.random.default_rng(7).uniform(-8, 4, (12, 8)).astype(
      np.float32)
  gains = []
  for seed in range(20):
    out = ops.augment(feats, np.random.default_rng(seed))
    np.testing.assert_array_equal(
        out, ops.augment(feats, np.random.default_rng(seed)))
    np.testing.assert_array_equal(out[12:], 0)  # padding is not scaled
    offset = out[:12, :, 0] - feats
    np.testing.assert_allclose(offset, offset[0, 0], atol=1e-5)
    gains.append(math.exp(offset[0, 0] / 2))
  # AudioMAE's Beta(10, 10) + 0.5 gain: in (0.5, 1.5), mean 1.
  assert 0.5 < min(gains) < 0.95 and 1.05 < max(gains) < 1.5
  floor = np.full((5, 8), audio.LOG_FLOOR, np.float32)
  out = ops.augment(floor, np.random.default_rng(0))
  assert out[:5].min() >= audio.LOG_FLOOR
