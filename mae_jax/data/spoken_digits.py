r"""Spoken digits: the words "zero" .. "nine" synthesized offline by eSpeak NG,
so the audio modality has a small labelled speech set that needs no download.

  python -m mae_jax.data.spoken_digits                 # into the cache dir
  python -m mae_jax.data.spoken_digits --out=DIR --per_voice_repeats=4
  # then: --config.data.source=audio_files --config.data.path=DIR/{split}.csv

The speech comes from libespeak-ng through ctypes (the library and its voice
data ship in the espeakng-loader wheel, a dependency of mae_jax). A voice is
an English accent of the data (lang/.../en*: en, en-029, en-GB-scotland,
en-US, ...) plus a variant (voices/!v: m1..m8, f1..f5, klatt, whisper and
~80 named ones), spoken as 'en-GB-scotland+m3'. The split is by variant: the
`test_variants` variants drawn for the test split are never heard in
training, with any accent, so a probe on test measures generalization to
unseen speakers. Within a split, voices go round the variants (every variant
once before any gets a second accent). Each voice says every digit
`per_voice_repeats` times, each time at its own rate (words per minute),
base pitch and pitch range (eSpeak's 0..100 scales), drawn uniformly from
the given inclusive ranges. All draws come from numpy Generators seeded by
`seed` (and the voice's name), so the same parameters give the same set on
every machine with the same eSpeak data.

Layout of the directory (see `ensure` for the cache):

  wav/<split>/<voice>/<digit>_<repeat>.wav   int16 mono, 22050 Hz (eSpeak's
      native rate; the audio pipeline resamples to data.sample_rate, 16 kHz),
      trimmed to the speech plus a 10 ms margin: 0.15-0.9 s, mean 0.37 s
      with the default rates (~4 s to generate the default 2,500 on 2 cores)
  train.csv, test.csv   `path,label` (header; path relative to the
      directory; label = the digit), as data.source='audio_files' reads them
  info.json             parameters, version, eSpeak version, voices per
      split, counts, durations; written last

Determinism. eSpeak is not deterministic out of the box: its noise source
(breath, fricatives) differs between processes unless espeak_ng_SetRandSeed
is called, and the pitch-flutter phase is a function-static variable of its
wave generator that runs on from one utterance to the next and that neither
espeak_Terminate nor espeak_Initialize resets (the same word twice in a row
differs by a few samples in length). So each voice is synthesized by a fresh
copy of the library (the .so is copied to a temporary file and loaded: a new
file is a new set of statics), and the noise seed is set before every
utterance. A voice's WAVs then depend only on its name and draws, in a fixed
order (repeat-major): byte-identical on every run, whichever other voices
are generated with it.
"""

from __future__ import annotations

import csv
import ctypes
import functools
import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import zlib
from typing import Sequence

from absl import app
from absl import flags
import numpy as np
import soundfile

VERSION = 1  # bump when the same parameters would give other files
WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven',
         'eight', 'nine')
SPLITS = ('train', 'test')
# 100 x 10 x 2 = 2000 train and 25 x 10 x 2 = 500 test utterances.
DEFAULTS = {
    'seed': 0,
    'train_voices': 100,
    'test_voices': 25,
    'test_variants': 20,     # of the ~100 variants, held out for test
    'per_voice_repeats': 2,
    'rate': (130, 230),      # words per minute (eSpeak: 80..450, 175 normal)
    'pitch': (25, 75),       # base pitch, 0..100 (50 normal)
    'pitch_range': (25, 75),  # intonation range, 0..100 (50 normal)
}
_RANGES = {'rate': (80, 450), 'pitch': (0, 100), 'pitch_range': (0, 100)}
# en-Shaw reads the Shavian alphabet and speaks Latin text as plain 'en';
# 'fast' is a speed-test tweak of the default voice, not a speaker.
_SKIP = ('en-Shaw', 'fast')
# Names become folders: 'Mr serious' (a space) is left out.
_NAME = re.compile(r'[A-Za-z0-9_-]+')
_TRIM_THRESHOLD, _TRIM_MARGIN_MS = 0.01, 10.0

_INSTALL = ('spoken_digits needs the eSpeak NG library and voices of the '
            'espeakng-loader package (a dependency of mae_jax): '
            'pip install espeakng-loader')

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# Without it, espeak_Initialize calls exit() when the voice data is missing.
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short),
                             ctypes.c_int, ctypes.c_void_p)
# A Synthesizer is not thread-safe, and espeak_Initialize sets the process'
# locale: one synthesis call at a time in the process.
_LOCK = threading.RLock()


class EspeakError(RuntimeError):
  """libespeak-ng is missing or failed."""


def _espeak_paths() -> tuple[str, str]:
  """-> (libespeak-ng path, espeak-ng-data path) of espeakng-loader."""
  try:
    import espeakng_loader  # pylint: disable=g-import-not-at-top
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
  except (ImportError, RuntimeError) as e:
    raise EspeakError(f'{_INSTALL} ({e})') from e


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
  """The signatures of speak_lib.h / espeak_ng.h that this module calls."""
  c = ctypes
  for name, res, args in (
      ('espeak_Initialize', c.c_int, [c.c_int, c.c_int, c.c_char_p, c.c_int]),
      ('espeak_SetSynthCallback', None, [_CALLBACK]),
      ('espeak_SetVoiceByName', c.c_int, [c.c_char_p]),
      ('espeak_SetParameter', c.c_int, [c.c_int, c.c_int, c.c_int]),
      ('espeak_Synth', c.c_int, [c.c_char_p, c.c_size_t, c.c_uint, c.c_int,
                                 c.c_uint, c.c_uint, c.POINTER(c.c_uint),
                                 c.c_void_p]),
      ('espeak_Synchronize', c.c_int, []),
      ('espeak_Terminate', c.c_int, []),
      ('espeak_Info', c.c_char_p, [c.POINTER(c.c_char_p)]),
      ('espeak_ng_SetRandSeed', None, [c.c_long])):
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = res, args
  return lib


@functools.lru_cache(maxsize=1)
def espeak_version() -> str:
  """The version of the installed libespeak-ng, e.g. '1.52.0'."""
  library, _ = _espeak_paths()
  try:
    lib = _declare(ctypes.CDLL(library))
  except (OSError, AttributeError) as e:
    raise EspeakError(f'{_INSTALL} ({library}: {e})') from e
  return lib.espeak_Info(None).decode()  # no synthesis: its state is unused


def _load_copy(library: str, scratch: Sequence[str]) -> ctypes.CDLL:
  """A private copy of `library`, loaded: dlopen of the same file would
  return the already loaded one, with its statics."""
  errors = []
  for folder in scratch:
    try:
      fd, path = tempfile.mkstemp(prefix='libespeak-ng-', dir=folder,
                                  suffix=os.path.splitext(library)[1])
    except OSError as e:
      errors.append(f'{folder}: {e}')
      continue
    try:
      with os.fdopen(fd, 'wb') as dst, open(library, 'rb') as src:
        shutil.copyfileobj(src, dst)
      return _declare(ctypes.CDLL(path))
    except (OSError, AttributeError) as e:  # e.g. a noexec temp dir
      errors.append(f'{folder}: {e}')
    finally:
      os.remove(path)  # the loaded mapping outlives the name
  raise EspeakError(f'{_INSTALL} (cannot load a copy of {library}: '
                    f'{"; ".join(errors)})')


class Synthesizer:
  """A fresh eSpeak NG engine (its own copy of the library; see the module
  docstring): `say(text, voice, ...)` -> int16 [n] mono samples at
  `sample_rate` (22050 Hz). Use as a context manager, or close()."""

  def __init__(self, scratch: str | None = None):
    library, self.data_path = _espeak_paths()
    dirs = [tempfile.gettempdir()] + ([scratch] if scratch else [])
    with _LOCK:
      self._lib = _load_copy(library, dirs)
      # The library keeps the pointer: keep the Python callback alive as
      # long as the library (a collected one would crash the next Synth).
      self._chunks: list[np.ndarray] = []
      self._callback = _CALLBACK(self._collect)
      # buflength 0 = eSpeak's default 60 ms buffers; no phoneme events.
      rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                         self.data_path.encode(),
                                         _INITIALIZE_DONT_EXIT)
      if rate <= 0:
        self._lib = None
        raise EspeakError(f'espeak_Initialize failed ({rate}) with the voice '
                          f'data {self.data_path}; {_INSTALL}')
      self.sample_rate = rate
      self._lib.espeak_SetSynthCallback(self._callback)

  def _collect(self, wav, num_samples: int, events) -> int:
    del events
    if wav and num_samples > 0:  # NULL = done; 0 samples happen mid-way
      self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
    return 0  # 0 = continue

  def say(self, text: str, voice: str, *, rate: int = 175, pitch: int = 50,
          pitch_range: int = 50, noise_seed: int = 0) -> np.ndarray:
    """`text` spoken by `voice` ('en-US', 'en-GB-scotland+m3', ...) at
    `rate` words per minute, base `pitch` and `pitch_range` (0..100)
    -> int16 [n], untrimmed (eSpeak adds ~15 ms of silence at each end)."""
    with _LOCK:
      if self._lib is None:
        raise ValueError('Synthesizer.say after close()')
      lib = self._lib
      # eSpeak ignores an unknown variant (and speaks the accent's default).
      variant = voice.partition('+')[2]
      if (lib.espeak_SetVoiceByName(voice.encode()) != 0 or variant and
          not os.path.isfile(os.path.join(self.data_path, 'voices', '!v',
                                          variant))):
        raise ValueError(f'eSpeak has no voice {voice!r} in {self.data_path} '
                         '(accent+variant; see list_voices())')
      for param, value in ((_RATE, rate), (_PITCH, pitch),
                           (_RANGE, pitch_range)):
        lib.espeak_SetParameter(param, int(value), 0)
      lib.espeak_ng_SetRandSeed(int(noise_seed))
      self._chunks = []
      data = text.encode('utf-8')
      err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0,
                             _CHARS_UTF8, None, None)
      err = err or lib.espeak_Synchronize()
      if err:
        raise EspeakError(f'espeak_Synth({text!r}, voice {voice!r}) failed: '
                          f'error {err}')
      chunks, self._chunks = self._chunks, []
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.int16))

  def close(self) -> None:
    with _LOCK:
      if self._lib is None:
        return
      self._lib.espeak_Terminate()
      # Unload the copy, else every voice leaves ~1 MB mapped. POSIX only;
      # elsewhere the mapping stays until the process ends.
      import _ctypes  # pylint: disable=g-import-not-at-top
      if hasattr(_ctypes, 'dlclose'):
        _ctypes.dlclose(self._lib._handle)  # pylint: disable=protected-access
      self._lib = None

  def __enter__(self) -> Synthesizer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def synthesize(text: str, voice: str = 'en-US', **kw) -> np.ndarray:
  """One utterance from a fresh engine (so it does not depend on earlier
  calls): int16 [n] at 22050 Hz; kw as Synthesizer.say."""
  with Synthesizer() as s:
    return s.say(text, voice, **kw)


def trim(samples: np.ndarray, sample_rate: int,
         threshold: float = _TRIM_THRESHOLD,
         margin_ms: float = _TRIM_MARGIN_MS) -> np.ndarray:
  """int16 [n] -> the span from the first to the last sample louder than
  `threshold` x the peak (1%: -40 dB, below the onset of an 's'), widened
  by `margin_ms` on each side within the signal; [0] if all silent."""
  mag = np.abs(samples.astype(np.int32))
  peak = int(mag.max(initial=0))
  if peak == 0:
    return samples[:0]
  loud = np.flatnonzero(mag > threshold * peak)
  margin = round(margin_ms * sample_rate / 1000)
  return samples[max(0, loud[0] - margin):loud[-1] + 1 + margin]


# -------------------------------------------------------------- the voices


def list_voices(data_path: str | None = None) -> tuple[list[str], list[str]]:
  """-> (English accents, variants) of eSpeak's voice data, sorted by code
  point (the same order on every machine): ['en', 'en-029', ...],
  ['Alex', ..., 'm1', ...]. Skipped: _SKIP, names that are not plain
  [A-Za-z0-9_-] (they become folder names)."""
  data = data_path or _espeak_paths()[1]
  accents = set()
  for _, _, files in os.walk(os.path.join(data, 'lang')):
    accents.update(f for f in files if f == 'en' or f.startswith('en-'))
  variants = os.listdir(os.path.join(data, 'voices', '!v'))
  keep = lambda n: _NAME.fullmatch(n) and n not in _SKIP
  return sorted(filter(keep, accents)), sorted(filter(keep, variants))


def choose_voices(accents: Sequence[str], variants: Sequence[str], *,
                  seed: int, train_voices: int, test_voices: int,
                  test_variants: int) -> dict[str, list[str]]:
  """-> {'train': [...], 'test': [...]} voices 'accent+variant'. The test
  split's variants (`test_variants` of them, drawn) never occur in train.
  The draws do not depend on the voice counts: asking for more voices only
  adds some."""
  if not 0 < test_variants < len(variants):
    raise ValueError(f'test_variants={test_variants}: must be in 1..'
                     f'{len(variants) - 1} (eSpeak has {len(variants)} '
                     'variants)')
  rng = np.random.default_rng([seed, zlib.crc32(b'voices')])
  order = [variants[i] for i in rng.permutation(len(variants))]
  # One accent order per variant, drawn for all before any is used.
  accent_orders = [rng.permutation(len(accents)) for _ in order]
  chosen = {}
  for split, n, lo, hi in (('train', train_voices, test_variants, None),
                           ('test', test_voices, 0, test_variants)):
    names, orders = order[lo:hi], accent_orders[lo:hi]
    if not 0 < n <= len(names) * len(accents):
      raise ValueError(f'{split}_voices={n}: must be in 1..'
                       f'{len(names) * len(accents)} ({len(names)} {split} '
                       f'variants x {len(accents)} accents)')
    # Round robin: every variant once before any variant's second accent,
    # so that a split has as many distinct speakers as its size allows.
    voices = [f'{accents[o[k]]}+{v}' for k in range(len(accents))
              for v, o in zip(names, orders)]
    chosen[split] = voices[:n]
  return chosen


def _check(params: dict) -> dict:
  """DEFAULTS updated by `params`, validated, JSON-shaped (lists)."""
  unknown = sorted(set(params) - set(DEFAULTS))
  if unknown:
    raise ValueError(f'spoken_digits parameters {unknown}: allowed '
                     f'{sorted(DEFAULTS)}')
  p = dict(DEFAULTS, **params)
  for key in ('seed', 'train_voices', 'test_voices', 'test_variants',
              'per_voice_repeats'):
    if not isinstance(p[key], (int, np.integer)) or isinstance(p[key], bool):
      raise ValueError(f'{key}={p[key]!r}: must be an int')
    p[key] = int(p[key])
  if p['seed'] < 0 or p['per_voice_repeats'] < 1:
    raise ValueError(f"seed={p['seed']}, per_voice_repeats="
                     f"{p['per_voice_repeats']}: need >= 0, >= 1")
  for key, (lo, hi) in _RANGES.items():
    v = p[key]
    if (not isinstance(v, (tuple, list)) or len(v) != 2
        or any(not isinstance(x, (int, np.integer)) for x in v)
        or not lo <= v[0] <= v[1] <= hi):
      raise ValueError(f'{key}={v!r}: must be (min, max) ints with '
                       f'{lo} <= min <= max <= {hi}')
    p[key] = [int(v[0]), int(v[1])]
  return p


# ---------------------------------------------------------- generation


def _utterances(voice: str, p: dict) -> list[tuple[int, int, dict]]:
  """-> [(repeat, digit, say() keywords)] of `voice`, in synthesis order;
  a function of (seed, voice, ranges) only, and a longer run
  (per_voice_repeats) only appends."""
  rng = np.random.default_rng([p['seed'], zlib.crc32(voice.encode())])
  lo = [p['rate'][0], p['pitch'][0], p['pitch_range'][0], 0]
  hi = [p['rate'][1], p['pitch'][1], p['pitch_range'][1], 2**31 - 1]
  out = []
  for r in range(p['per_voice_repeats']):
    for digit in range(len(WORDS)):
      rate, pitch, span, noise = (int(x) for x in rng.integers(lo, hi,
                                                               endpoint=True))
      out.append((r, digit, {'rate': rate, 'pitch': pitch,
                             'pitch_range': span, 'noise_seed': noise}))
  return out


def _write_wav(path: str, samples: np.ndarray, sample_rate: int) -> None:
  """int16 [n] -> a 16-bit PCM WAV file. Encoded in memory: libsndfile
  writing to the file directly was 30x slower here (small writes, seeks)."""
  buf = io.BytesIO()
  soundfile.write(buf, samples, sample_rate, subtype='PCM_16', format='WAV')
  with open(path, 'wb') as f:
    f.write(buf.getvalue())


def _key(p: dict) -> dict:
  """What the files are a function of: compared by ensure()."""
  accents, variants = list_voices()
  voices = choose_voices(accents, variants, **{
      k: p[k] for k in ('seed', 'train_voices', 'test_voices',
                        'test_variants')})
  return {'dataset': 'spoken_digits', 'version': VERSION, 'params': p,
          'espeak_ng': espeak_version(), 'voices': voices}


def generate(out: str, **params) -> dict:
  """Writes the set (parameters: DEFAULTS) into the directory `out` (created;
  files in it are overwritten) -> the info.json dict. Not atomic: ensure()
  is, and caches."""
  start = time.perf_counter()
  p = _check(params)
  info = _key(p)
  counts, durations, sample_rate = {}, {}, 0
  for split in SPLITS:
    rows, lengths = [], []
    for voice in info['voices'][split]:
      folder = os.path.join(out, 'wav', split, voice)
      os.makedirs(folder, exist_ok=True)
      with Synthesizer(scratch=out) as engine:  # fresh state per voice
        sample_rate = engine.sample_rate
        for r, digit, kw in _utterances(voice, p):
          wav = trim(engine.say(WORDS[digit], voice, **kw), sample_rate)
          if not len(wav):
            raise EspeakError(f'eSpeak gave silence for {WORDS[digit]!r} by '
                              f'{voice!r} ({kw})')
          rel = f'wav/{split}/{voice}/{digit}_{r}.wav'
          _write_wav(os.path.join(out, rel), wav, sample_rate)
          rows.append((rel, digit))
          lengths.append(len(wav) / sample_rate)
    with open(os.path.join(out, f'{split}.csv'), 'w', newline='',
              encoding='utf-8') as f:
      w = csv.writer(f, lineterminator='\n')
      w.writerow(('path', 'label'))
      w.writerows(rows)
    counts[split] = len(rows)
    durations[split] = {'min': round(min(lengths), 3),
                        'mean': round(float(np.mean(lengths)), 3),
                        'max': round(max(lengths), 3)}
  info.update(sample_rate=sample_rate, words=list(WORDS),
              counts=counts, duration_s=durations,
              seconds=round(time.perf_counter() - start, 2))
  # Written last: a directory with info.json is complete.
  with open(os.path.join(out, 'info.json'), 'w', encoding='utf-8') as f:
    json.dump(info, f, indent=1)
  return info


def default_dir() -> str:
  """$MAE_JAX_DATA/spoken_digits, else ~/.cache/mae_jax/spoken_digits."""
  root = os.environ.get('MAE_JAX_DATA')
  if root:
    return os.path.join(os.path.expanduser(root), 'spoken_digits')
  return os.path.join(os.path.expanduser('~'), '.cache', 'mae_jax',
                      'spoken_digits')


def read_info(out: str) -> dict | None:
  """out/info.json, or None when missing or unreadable."""
  try:
    with open(os.path.join(out, 'info.json'), encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _is_current(out: str, key: dict) -> bool:
  info = read_info(out)
  return (info is not None and all(info.get(k) == v for k, v in key.items())
          and all(os.path.isfile(os.path.join(out, f'{s}.csv'))
                  for s in SPLITS))


def _replaceable(out: str) -> bool:
  """Only an empty folder or one of ours is ever replaced (--out=$HOME must
  not be renamed away)."""
  if not os.path.isdir(out):
    return not os.path.exists(out)
  info = read_info(out)
  return not os.listdir(out) or (info or {}).get('dataset') == 'spoken_digits'


def _ensure(out: str | None, force: bool, params: dict) -> tuple[str, bool]:
  """-> (directory, whether it was generated now)."""
  out = os.path.abspath(os.path.expanduser(out or default_dir()))
  key = _key(_check(params))
  if not force and _is_current(out, key):
    return out, False
  if not _replaceable(out):
    raise ValueError(f'{out} exists and is not a spoken_digits directory (no '
                     'info.json of ours): give another --out, or remove it')
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  # Built beside `out` and renamed into place, so an interrupted run leaves
  # no half-written set (only a hidden .<name>.* folder to delete).
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.', dir=parent)
  old = None
  try:
    generate(tmp, **params)
    if os.path.exists(out):
      if not force and _is_current(out, key):
        return out, True  # another process finished the same set first
      old = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.old.',
                             dir=parent)
      os.replace(out, os.path.join(old, 'set'))
    os.replace(tmp, out)
  finally:
    for path in (tmp, old):
      if path and os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)
  return out, True


def ensure(out: str | None = None, *, force: bool = False, **params) -> str:
  """The directory of the set with these parameters (DEFAULTS otherwise),
  generated only when its info.json is missing or records other parameters,
  version, eSpeak version or voices, or with `force`. `out` defaults to
  default_dir(). ValueError for bad parameters, or an `out` that exists
  and is not ours; EspeakError when eSpeak cannot be loaded."""
  return _ensure(out, force, params)[0]


# ----------------------------------------------------------- the command


def _define_flags() -> None:
  """Flags of the command only (importing this module defines none)."""
  d = DEFAULTS
  flags.DEFINE_string('out', None, 'output directory (default: '
                      '$MAE_JAX_DATA/spoken_digits, else '
                      '~/.cache/mae_jax/spoken_digits)')
  flags.DEFINE_integer('seed', d['seed'], 'seed of every random choice')
  flags.DEFINE_integer('train_voices', d['train_voices'], 'voices '
                       '(accent+variant) of the train split')
  flags.DEFINE_integer('test_voices', d['test_voices'], 'voices of the test '
                       'split')
  flags.DEFINE_integer('test_variants', d['test_variants'], 'eSpeak variants '
                       '(speakers) held out for the test split')
  flags.DEFINE_integer('per_voice_repeats', d['per_voice_repeats'], 'times '
                       'each voice says each digit (new rate / pitch each)')
  for key, what in (('rate', 'words per minute'), ('pitch', 'base pitch '
                    '0..100'), ('pitch_range', 'pitch range 0..100')):
    flags.DEFINE_list(key, [str(x) for x in d[key]], f'min,max {what}')
  flags.DEFINE_bool('force', False, 'regenerate even if cached')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  start = time.perf_counter()
  try:
    params = {k: f[k].value for k in DEFAULTS if k not in _RANGES}
    for key in _RANGES:
      try:
        params[key] = tuple(int(x) for x in f[key].value)
      except ValueError:
        raise ValueError(f'--{key}={",".join(f[key].value)}: need min,max '
                         'ints') from None
    out, generated = _ensure(f.out, f.force, params)
  except (ValueError, EspeakError) as e:
    sys.exit(f'spoken_digits: {e}')
  info = read_info(out)
  voices, counts = info['voices'], info['counts']
  print(f'{out}: {counts["train"]} train + {counts["test"]} test utterances '
        f'({len(voices["train"])} + {len(voices["test"])} voices, '
        f'{info["sample_rate"]} Hz, mean {info["duration_s"]["train"]["mean"]}'
        f' s); '
        + (f'generated in {time.perf_counter() - start:.1f} s' if generated
           else 'already there (cached)'))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
