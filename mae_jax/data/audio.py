"""Audio: decode a sound file, compute AudioMAE's log-mel filterbank, and the
audio modality's ops (AudioOps) for the data pipeline.

An audio example is a spectrogram [T, F, 1]: T frames of 10 ms by F mel bins
(AudioMAE: 1024 x 128 for 10 s AudioSet clips). `fbank` reproduces what
AudioMAE computes per clip,

  torchaudio.compliance.kaldi.fbank(waveform - waveform.mean(),
      htk_compat=True, sample_frequency=sr, use_energy=False,
      window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)

in vectorized NumPy (float64 inside, float32 out; 10 s take a few ms), so
checkpoints move between the two code bases without a feature mismatch. The
tests compare it with kaldi_native_fbank (Kaldi's C++ computation) and with a
fixture from torchaudio itself.

Pure NumPy + soundfile (libsndfile) + soxr, so it runs in grain reader
threads and worker processes without touching jax. Normalization ((x - mean)
/ std) is the pipeline's job, on the batch.
"""

from __future__ import annotations

import functools
import io
import math
from typing import Sequence

import numpy as np

from mae_jax.data.transforms import BadRecordError

# log() floor of Kaldi and torchaudio: std::numeric_limits<float>::epsilon().
_EPS = float(np.finfo(np.float32).eps)
# The value of a silent mel bin in fbank's float32 output: -15.942385.
LOG_FLOOR = float(np.float32(math.log(_EPS)))

# The frame every record must fill at least once: Kaldi's 25 ms window.
_FRAME_LENGTH_MS = 25.0


# ------------------------------------------------------------------ reading


def _samples(sample_rate: float, ms: float) -> int:
  # Kaldi's / torchaudio's rounding of a duration to samples: truncation,
  # in this order of operations (16000 * 25 * 0.001 -> 400).
  return int(sample_rate * ms * 0.001)


def read_audio(data: bytes, where: str, sample_rate: int = 16000
               ) -> np.ndarray:
  """Encoded audio file bytes (WAV, FLAC, OGG/Vorbis, ...: whatever
  libsndfile reads) -> float32 [n] mono at `sample_rate`.

  Channels are averaged. PCM is scaled to [-1, 1) (int16 / 32768, as
  torchaudio.load); float files are returned as stored (not clipped). A file
  at another rate is resampled with soxr (high quality). Raises
  BadRecordError whose message starts with `where` for empty, unreadable,
  non-finite or too short audio (fewer samples than one 25 ms frame at
  `sample_rate`: 400 at 16 kHz).
  """
  import soundfile  # pylint: disable=g-import-not-at-top  # audio runs only
  if not data:
    raise BadRecordError(f'{where}: the audio file is empty (0 bytes)')
  try:
    # always_2d: [n, channels] for mono and multichannel files alike.
    wave, rate = soundfile.read(io.BytesIO(data), dtype='float32',
                                always_2d=True)
  except Exception as e:  # LibsndfileError, and others for odd headers
    # error_string: libsndfile's own words, without the repr of the BytesIO
    # that str(e) names.
    why = getattr(e, 'error_string', None) or str(e)
    raise BadRecordError(
        f'{where}: cannot decode {len(data)} bytes as audio '
        f'({type(e).__name__}: {why}); expected a sound file libsndfile '
        'reads (WAV, FLAC, OGG/Vorbis, ...)') from e
  if not wave.size:
    raise BadRecordError(
        f'{where}: the audio file holds no samples (0 frames of '
        f'{wave.shape[1]} channel(s) at {rate} Hz)')
  # Averaging is the usual downmix, and uses every channel. (AudioMAE keeps
  # only the first: kaldi.fbank's default channel=-1 reads channel 0.)
  wave = wave.mean(axis=1, dtype=np.float32) if wave.shape[1] > 1 else (
      wave[:, 0])
  if not np.isfinite(wave).all():
    raise BadRecordError(
        f'{where}: the audio holds {int((~np.isfinite(wave)).sum())} NaN or '
        'infinite samples (a corrupt float file)')
  if rate != sample_rate:
    import soxr  # pylint: disable=g-import-not-at-top
    wave = soxr.resample(wave, rate, sample_rate).astype(np.float32,
                                                          copy=False)
  need = _samples(sample_rate, _FRAME_LENGTH_MS)
  if len(wave) < need:
    at = '' if rate == sample_rate else f' after resampling from {rate} Hz'
    raise BadRecordError(
        f'{where}: the audio is too short: {len(wave)} samples at '
        f'{sample_rate} Hz{at} ({1000 * len(wave) / sample_rate:.1f} ms); '
        f'need at least {need} (one {_FRAME_LENGTH_MS:g} ms frame)')
  return np.ascontiguousarray(wave)


# ---------------------------------------------------------------- filterbank


def _mel(freq):
  # HTK's mel scale, which Kaldi uses whatever htk_compat says (htk_compat
  # only moves the energy column, and use_energy=False drops it).
  return 1127.0 * np.log(1.0 + np.asarray(freq, np.float64) / 700.0)


@functools.lru_cache(maxsize=16)
def mel_banks(num_bins: int, fft_size: int, sample_rate: float,
              low_freq: float = 20.0, high_freq: float = 0.0) -> np.ndarray:
  """Kaldi's triangular mel filters: float64 [num_bins, fft_size // 2 + 1]
  (read-only, cached).

  Triangles equally spaced in mel between low_freq and high_freq
  (<= 0: Nyquist + high_freq), each from its left to its right neighbour's
  centre; weights are linear in mel, not in Hz. The last column (the Nyquist
  bin) is zero: Kaldi evaluates the filters on the fft_size // 2 bins below
  Nyquist only.
  """
  nyquist = 0.5 * sample_rate
  if high_freq <= 0.0:
    high_freq += nyquist
  if num_bins < 4 or not 0.0 <= low_freq < high_freq <= nyquist:
    raise ValueError(
        f'mel_banks: num_bins={num_bins}, low_freq={low_freq}, high_freq='
        f'{high_freq}; need num_bins > 3 and 0 <= low < high <= {nyquist} '
        '(Nyquist)')
  lo, hi = _mel(low_freq), _mel(high_freq)
  delta = (hi - lo) / (num_bins + 1)  # num_bins + 2 edges
  edges = lo + delta * np.arange(num_bins + 2)
  left, centre, right = (edges[:-2, None], edges[1:-1, None], edges[2:, None])
  mel = _mel(sample_rate / fft_size * np.arange(fft_size // 2))[None]
  up = (mel - left) / (centre - left)
  down = (right - mel) / (right - centre)
  banks = np.zeros((num_bins, fft_size // 2 + 1))
  banks[:, :-1] = np.maximum(0.0, np.minimum(up, down))
  banks.flags.writeable = False  # shared by every call through the cache
  return banks


@functools.lru_cache(maxsize=16)
def _hanning(size: int) -> np.ndarray:
  # Kaldi's / torchaudio's 'hanning' is the symmetric Hann window
  # (torch.hann_window(periodic=False)): 0.5 - 0.5 cos(2 pi k / (size - 1)),
  # zero at both ends.
  w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / (size - 1))
  w.flags.writeable = False
  return w


def num_frames(num_samples: int, sample_rate: int = 16000,
               frame_length_ms: float = 25.0,
               frame_shift_ms: float = 10.0) -> int:
  """Frames `fbank` makes of `num_samples` samples (Kaldi's snip_edges:
  only whole windows; 1 + (n - 400) // 160 at 16 kHz, 0 if shorter)."""
  size = _samples(sample_rate, frame_length_ms)
  shift = _samples(sample_rate, frame_shift_ms)
  return 0 if num_samples < size else 1 + (num_samples - size) // shift


def fbank(wave: np.ndarray, sample_rate: int = 16000, num_mel_bins: int = 128,
          frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0
          ) -> np.ndarray:
  """Waveform float [n] -> AudioMAE's log-mel filterbank float32
  [frames, num_mel_bins], frames = 1 + (n - 400) // 160 at 16 kHz.

  torchaudio.compliance.kaldi.fbank(wave - wave.mean(), htk_compat=True,
  use_energy=False, window_type='hanning', dither=0.0, ...) with Kaldi's
  defaults for the rest, step by step below. Raises ValueError for a
  waveform that is not 1-D or is shorter than one frame.
  """
  wave = np.asarray(wave)
  size = _samples(sample_rate, frame_length_ms)
  shift = _samples(sample_rate, frame_shift_ms)
  if wave.ndim != 1 or len(wave) < size or size < 2 or shift < 1:
    raise ValueError(
        f'fbank: waveform of shape {wave.shape}; expected a 1-D waveform of '
        f'at least {size} samples (one {frame_length_ms:g} ms frame at '
        f'{sample_rate} Hz)')
  # float64 throughout: the float32 references (torchaudio, Kaldi) then
  # differ from this by their own rounding only (and torchaudio by its
  # float32 mel filters, ~1e-5 per weight).
  x = wave.astype(np.float64)
  # AudioMAE removes the clip's mean before the fbank. Each frame's own mean
  # is removed below anyway; this matters only for float32 rounding.
  x -= x.mean()
  # snip_edges=True: only frames that fit completely, one every `shift`.
  frames = np.lib.stride_tricks.sliding_window_view(x, size)[::shift]
  # remove_dc_offset=True: subtract each frame's mean.
  frames = frames - frames.mean(axis=1, keepdims=True)
  # Pre-emphasis 0.97 within each frame: y[j] = x[j] - 0.97 x[j - 1], the
  # first sample using itself as its predecessor (y[0] = 0.03 x[0], which
  # the window then zeroes anyway).
  emph = frames.copy()
  emph[:, 1:] -= 0.97 * frames[:, :-1]
  emph[:, 0] -= 0.97 * frames[:, 0]
  emph *= _hanning(size)
  # round_to_power_of_two: the FFT zero-pads the frame (400 -> 512 samples).
  fft_size = 1 << (size - 1).bit_length()
  spectrum = np.fft.rfft(emph, n=fft_size)
  power = spectrum.real ** 2 + spectrum.imag ** 2  # use_power=True
  # low_freq=20, high_freq=0 (-> Nyquist); use_energy=False: no energy
  # column, so htk_compat (which only places that column) changes nothing.
  mel = power @ mel_banks(num_mel_bins, fft_size, float(sample_rate)).T
  # use_log_fbank with a floor at float32 epsilon (silent bins -> -15.94).
  return np.log(np.maximum(mel, _EPS)).astype(np.float32)


def fix_length(feats: np.ndarray, frames: int, start: int = 0) -> np.ndarray:
  """[T, F] -> float32 [frames, F]: rows start .. start + frames - 1, zeros
  appended past the end (AudioMAE pads short clips with zeros at the end and
  keeps the first `frames` of long ones, i.e. start 0)."""
  feats = np.asarray(feats)
  if feats.ndim != 2:
    raise ValueError(f'fix_length: features of shape {feats.shape}; '
                     'expected [T, F]')
  longest = max(0, len(feats) - frames)
  if not 0 <= start <= longest:
    raise ValueError(f'fix_length: start={start} with {len(feats)} frames '
                     f'and frames={frames}; allowed 0..{longest}')
  part = feats[start:start + frames]
  out = np.zeros((frames, feats.shape[1]), np.float32)
  out[:len(part)] = part
  return out


# ----------------------------------------------------------------- the ops


def random_gain(rng: np.random.Generator) -> float:
  """AudioMAE's roll_mag_aug factor: Beta(10, 10) + 0.5, in (0.5, 1.5)."""
  return float(rng.beta(10.0, 10.0) + 0.5)


class AudioOps:
  """The audio modality of the pipeline: the counterpart of
  transforms.ImageOps for spectrograms [T, F, 1].

  decode: raw record -> float32 log-mel features [n_frames, F] (the file
  decoded, resampled and transformed once per record; a float [n_frames, F]
  array, e.g. features computed offline as AudioMAE's use_fbank, passes
  through); augment: features -> float32 [T, F, 1], a window of T frames at a
  uniformly random start (AudioMAE always takes the first T, but for clips
  longer than T a random window is the usual training choice and shows the
  model the whole clip), zeros appended to shorter clips; eval_view: the
  first T frames, zero padded, as AudioMAE.

  size: (T frames, F mel bins). roll_mag: AudioMAE's pretraining
  augmentation (--roll_mag_aug): the waveform times Beta(10, 10) + 0.5. Its
  "roll" never happens (np.roll by randint(len(waveform)) of a [1, n]
  waveform is a roll by 0), and a gain g adds 2 log g to every log-mel value
  above the floor, so it is applied here to the features, before padding.
  """

  channels = 1
  clips = False  # elements are single examples, not stacks of clips

  def __init__(self, size: Sequence[int], sample_rate: int = 16000,
               roll_mag: bool = False):
    frames, bins = (int(s) for s in size)
    if frames < 1 or bins < 4:
      raise ValueError(f'AudioOps: size={tuple(size)}; expected (frames >= '
                       '1, mel bins >= 4)')
    self.size = (frames, bins)
    self.sample_rate = int(sample_rate)
    self.roll_mag = roll_mag

  @property
  def shape(self) -> tuple[int, ...]:
    """One example: (T, F, 1)."""
    return (*self.size, self.channels)

  def decode(self, raw, where: str) -> np.ndarray:
    """Raw record audio (encoded file bytes, or float features [n, F]) ->
    float32 log-mel features [n_frames, F]."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
      wave = read_audio(bytes(raw), where, self.sample_rate)
      return fbank(wave, self.sample_rate, self.size[1])
    bins = self.size[1]
    expected = (f'expected encoded audio file bytes or float log-mel '
                f'features [frames, {bins}]')
    if not isinstance(raw, np.ndarray) or raw.dtype.kind != 'f':
      what = (f'dtype {raw.dtype}' if isinstance(raw, np.ndarray) else
              f'a {type(raw).__name__}')
      raise BadRecordError(f'{where}: audio is {what}; {expected}')
    if raw.ndim != 2 or raw.shape[1] != bins or not len(raw):
      raise BadRecordError(f'{where}: audio features of shape {raw.shape}; '
                           f'{expected}, frames > 0')
    if not np.isfinite(raw).all():
      raise BadRecordError(f'{where}: audio features hold NaN or infinite '
                           'values')
    return raw.astype(np.float32, copy=False)

  def augment(self, feats: np.ndarray, rng: np.random.Generator
              ) -> np.ndarray:
    """float32 [n, F] -> a random window float32 [T, F, 1] (zero padded)."""
    frames = self.size[0]
    # Always one draw for the start (even when there is one choice), so the
    # rng stream does not depend on the clip's length.
    start = int(rng.integers(0, max(0, len(feats) - frames) + 1))
    out = fix_length(feats, frames, start)
    if self.roll_mag:
      valid = min(frames, len(feats))  # padding stays zero, as in AudioMAE
      out[:valid] = np.maximum(out[:valid] + 2 * math.log(random_gain(rng)),
                               LOG_FLOOR)
    return out[..., None]

  def eval_view(self, feats: np.ndarray) -> np.ndarray:
    """float32 [n, F] -> the first T frames float32 [T, F, 1] (padded)."""
    return fix_length(feats, self.size[0])[..., None]
