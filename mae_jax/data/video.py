"""Clips: decode a video, sample T frames from it, crop every frame alike.

The clip modality of the pipeline (model.frames = T > 0). A raw record's
'image' is a video: encoded file bytes (decoded here with PyAV / FFmpeg), or
uint8 frames [F, H, W(, C)] (moving_digits, pre-decoded ArrayRecord clips).
A still image from an image source is a one-frame video (every clip repeats
it), so image data sets can feed clip models in smoke tests.

Sampling (MAE-ST, VideoMAE): T frames every `stride` frames, frame indices
start, start + stride, ..., start + (T - 1) * stride. Training draws the start
uniformly from every window that fits (temporal jitter); evaluation takes the
centre window. A video shorter than the window (F < (T - 1) * stride + 1)
starts at 0 and its indices past the end are clamped to its last frame, so
the clip ends on repeated frames instead of failing.
"""

from __future__ import annotations

import io
import struct
from typing import Sequence
import zipfile

import numpy as np

from mae_jax.data import transforms
from mae_jax.data.transforms import BadRecordError

# What PyAV converts decoded frames to, by model.channels.
_FORMATS = {1: 'gray', 3: 'rgb24'}
# A file whose decoded frame count falls short of what its header announces
# by more than this (at least _SLACK_MIN frames) is reported as truncated.
# Real files are often off by a frame or two (B-frames, edit lists).
_SLACK, _SLACK_MIN = 0.05, 2


# ------------------------------------------------------------------ sampling


def span(frames: int, stride: int) -> int:
  """Frames of the video that a clip of `frames` every `stride` covers."""
  return (frames - 1) * stride + 1


def clip_indices(start: int, frames: int, stride: int,
                 num_frames: int) -> np.ndarray:
  """int [frames]: start + stride * t, clamped to the last of `num_frames`."""
  return np.minimum(start + stride * np.arange(frames), num_frames - 1)


def centre_start(num_frames: int, frames: int, stride: int) -> int:
  """First frame of the evaluation window: the centre one (0 when the video
  is shorter than the window)."""
  return max(0, (num_frames - span(frames, stride)) // 2)


def random_start(rng: np.random.Generator, num_frames: int, frames: int,
                 stride: int) -> int:
  """First frame of a training window: uniform over the windows that fit."""
  return int(rng.integers(0, max(0, num_frames - span(frames, stride)) + 1))


# ------------------------------------------------------------------ decoding


class DecodedVideo:
  """A video file's F frames as the decoder returned them (YUV 4:2:0 for
  most files: half the bytes of RGB); `take` converts only the frames a clip
  uses."""

  def __init__(self, frames: list, fmt: str):
    self._frames = frames
    self._fmt = fmt

  def __len__(self) -> int:
    return len(self._frames)

  def take(self, indices) -> np.ndarray:
    """uint8 [n, H, W, C] of the frames at `indices`."""
    out = np.stack([self._frames[int(i)].to_ndarray(format=self._fmt)
                    for i in indices])
    return out[..., None] if out.ndim == 3 else out


class ConvertedVideo:
  """uint8 frames [F, H, W, C] whose channels `take` converts (1 <-> 3),
  only for the frames a clip uses."""

  def __init__(self, frames: np.ndarray, channels: int):
    self._frames = frames
    self._channels = channels

  def __len__(self) -> int:
    return len(self._frames)

  def take(self, indices) -> np.ndarray:
    frames = self._frames[np.asarray(indices)]
    if self._channels == 3:
      return np.repeat(frames, 3, axis=-1)
    y = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114],
                                             np.float32)
    return np.clip(np.round(y), 0, 255).astype(np.uint8)[..., None]


def take(video, indices) -> np.ndarray:
  """Frames `indices` of a decoded video (uint8 [F, H, W, C], DecodedVideo
  or ConvertedVideo) -> uint8 [n, H, W, C]."""
  if isinstance(video, np.ndarray):
    return video[np.asarray(indices)]
  return video.take(indices)


def _announced(container, stream) -> int:
  """Frame count the file's header announces (0 if it does not say)."""
  if stream.frames:  # mp4 / mov / avi
    return int(stream.frames)
  rate = stream.average_rate
  if not rate:
    return 0
  if stream.duration and stream.time_base:
    return int(round(float(stream.duration * stream.time_base * rate)))
  if container.duration:  # Matroska / WebM: the segment's duration, in us
    return int(round(container.duration * float(rate) / 1e6))
  return 0


def decode_video(data: bytes, *, channels: int, where: str) -> DecodedVideo:
  """Encoded video file bytes -> its frames (RGB, or gray for channels=1).

  Raises BadRecordError starting with `where` for empty, garbage or
  truncated files (fewer frames than the header announces, beyond a 5% or
  2-frame slack) and files without a video stream.
  """
  if channels not in _FORMATS:
    raise BadRecordError(
        f'{where}: video files decode to 1 or 3 channels, but '
        f'model.channels={channels}; store such data as uint8 frames '
        "(array_record with config.data.record_format='clip')")
  if not data:
    raise BadRecordError(f'{where}: the video file is empty (0 bytes)')
  import av  # pylint: disable=g-import-not-at-top  # ~0.1 s; video runs only
  try:
    with av.open(io.BytesIO(data), mode='r') as container:
      if not container.streams.video:
        raise BadRecordError(
            f'{where}: no video stream in its {len(data)} bytes (streams: '
            f'{[s.type for s in container.streams]}); the file is '
            'truncated, corrupt or not a video')
      stream = container.streams.video[0]
      announced = _announced(container, stream)
      frames = list(container.decode(stream))
  except BadRecordError:
    raise
  except Exception as e:  # av.error.FFmpegError and its many subclasses
    why = getattr(e, 'strerror', None) or str(e)
    raise BadRecordError(
        f'{where}: cannot decode {len(data)} bytes as a video '
        f'({type(e).__name__}: {why}); expected a video file FFmpeg reads '
        '(mp4, mkv, webm, avi, ...)') from e
  if not frames:
    raise BadRecordError(f'{where}: the video holds no frames')
  if announced and len(frames) < announced - max(_SLACK_MIN,
                                                 announced * _SLACK):
    raise BadRecordError(
        f'{where}: decoded {len(frames)} frames of the {announced} its header '
        'announces: the file is truncated or corrupt; rewrite or remove it')
  return DecodedVideo(frames, _FORMATS[channels])


def decode_frames(frames, *, channels: int, where: str):
  """uint8 frames [F, H, W] / [F, H, W, C] -> a video of `channels`
  channels: the frames themselves, or a ConvertedVideo (gray and RGB convert
  into each other as images do, transforms.decode)."""
  expected = 'expected uint8 frames [F, H, W] or [F, H, W, C]'
  if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
    what = (f'dtype {frames.dtype}' if isinstance(frames, np.ndarray) else
            f'a {type(frames).__name__}')
    raise BadRecordError(f'{where}: video is {what}; {expected}')
  if frames.ndim == 3:
    frames = frames[..., None]
  if frames.ndim != 4 or not frames.size:
    raise BadRecordError(f'{where}: video shape is {frames.shape}; {expected} '
                         'with F, H, W > 0')
  have = frames.shape[-1]
  if have == channels:
    return frames
  if {have, channels} == {1, 3}:
    return ConvertedVideo(frames, channels)
  raise BadRecordError(
      f'{where}: video has {have} channels {frames.shape}; expected '
      f'{channels} (model.channels), or 1 <-> 3 which are converted')


def decode(raw, *, channels: int, where: str):
  """A video record's 'image' (encoded file bytes, or uint8 frames) -> a
  video of F frames for `take`: DecodedVideo, ConvertedVideo or uint8
  [F, H, W, channels]."""
  if isinstance(raw, (bytes, bytearray, memoryview)):
    return decode_video(bytes(raw), channels=channels, where=where)
  return decode_frames(raw, channels=channels, where=where)


# Encoders every FFmpeg build (so every PyAV wheel) has: ffv1 is lossless
# and keeps gray frames gray; mpeg4 is lossy. libx264 (H.264) is in PyAV's
# wheels but not in every FFmpeg. -> (container extension, pixel format for
# gray frames, for RGB frames).
CODECS = {'ffv1': ('.mkv', 'gray', 'bgr0'), 'mpeg4': ('.mp4', 'yuv420p',
                                                      'yuv420p'),
          'libx264': ('.mp4', 'yuv420p', 'yuv420p')}


def write_video(path: str, frames: np.ndarray, *, codec: str = 'ffv1',
                fps: int = 25) -> None:
  """Writes uint8 frames [F, H, W] / [F, H, W, 1] (gray) or [F, H, W, 3]
  (RGB) as a video file (the container from the extension of `path`). mpeg4
  and libx264 need even H and W."""
  if codec not in CODECS:
    raise ValueError(f'codec={codec!r}: allowed {sorted(CODECS)}')
  frames = np.asarray(frames)
  if frames.ndim == 4 and frames.shape[-1] == 1:
    frames = frames[..., 0]
  if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or (
      frames.ndim == 4 and frames.shape[-1] != 3) or not frames.size:
    raise ValueError(f'write_video: frames are {frames.dtype} {frames.shape}; '
                     'expected uint8 [F, H, W(, 1 or 3)], F, H, W > 0')
  import av  # pylint: disable=g-import-not-at-top
  gray = frames.ndim == 3
  with av.open(path, mode='w') as container:
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = CODECS[codec][1 if gray else 2]
    for f in frames:
      frame = av.VideoFrame.from_ndarray(f, format='gray' if gray else 'rgb24')
      container.mux(stream.encode(frame))
    container.mux(stream.encode())  # flushes the encoder


# ----------------------------------------------------- pre-decoded records


def clip_record(frames: np.ndarray, label: int = -1) -> bytes:
  """One video's uint8 frames [F, H, W, C] and label -> an ArrayRecord
  record of record_format 'clip' (np.savez bytes: no pickle)."""
  buf = io.BytesIO()
  np.savez(buf, frames=np.asarray(frames, np.uint8),
           label=np.asarray(label, np.int64))
  return buf.getvalue()


def _npz_member(record: bytes, z: zipfile.ZipFile, key: str):
  """Array `key` of the npz `record` (None if absent). A stored (not
  compressed) member is a read-only view of the record's bytes: no copy of
  the frames, which may be 100s of MB per video."""
  name = key + '.npy'
  if name not in z.NameToInfo:
    return None
  info = z.getinfo(name)
  if info.compress_type != zipfile.ZIP_STORED:  # np.savez_compressed
    with z.open(info) as f:
      return np.lib.format.read_array(f, allow_pickle=False)
  start = info.header_offset  # of the member's local header (30 bytes + ...)
  head = record[start:start + 30]
  if head[:4] != b'PK\x03\x04':
    raise ValueError(f'bad zip local header of {name}')
  name_len, extra_len = struct.unpack('<HH', head[26:30])
  begin = start + 30 + name_len + extra_len
  f = io.BytesIO(record[begin:begin + min(info.file_size, 1 << 16)])
  version = np.lib.format.read_magic(f)
  read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                 else np.lib.format.read_array_header_2_0)
  shape, fortran, dtype = read_header(f)
  if dtype.hasobject:
    raise ValueError(f'{name} holds Python objects (pickled); not loaded')
  count = int(np.prod(shape))
  array = np.frombuffer(record, dtype, count=count, offset=begin + f.tell())
  return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _load_npz(record: bytes, where: str, keys: Sequence[str]) -> list:
  try:
    with zipfile.ZipFile(io.BytesIO(record)) as z:
      return [_npz_member(record, z, k) for k in keys]
  except Exception as e:  # zipfile / format errors of any kind
    raise BadRecordError(
        f'{where}: not a clip record ({type(e).__name__}: {e}); expected '
        "config.data.record_format='clip' records (np.savez bytes with "
        'frames uint8 [F, H, W, C] and label, as python -m '
        'mae_jax.data.video_prepare writes them)') from e


def parse_clip_record(record: bytes, where: str) -> dict:
  """clip_record bytes -> {'image': uint8 frames [F, H, W, C], 'label'}."""
  frames, label = _load_npz(record, where, ('frames', 'label'))
  if frames is None:
    raise BadRecordError(f"{where}: clip record without 'frames'")
  return {'image': frames, 'label': -1 if label is None else int(label)}


def clip_record_label(record: bytes, where: str) -> int:
  """The label of clip_record bytes, without reading the frames."""
  (label,) = _load_npz(record, where, ('label',))
  return -1 if label is None else int(label)


# ----------------------------------------------------------------- the ops


class ClipOps:
  """The clip modality of the pipeline: the counterpart of
  transforms.ImageOps for model.frames = T > 0.

  decode: raw record -> a video of F frames (uint8 [F, H, W, C], or a
  DecodedVideo / ConvertedVideo that converts only the frames taken);
  augment: video -> `clips_per_video` (R) training clips
  uint8 [R, T, h, w, C], each with its own random start, crop and flip, the
  crop and flip shared by all frames of a clip (the same random resized
  crop box as images, `transforms.random_crop_box`); eval_view: video -> the
  centre clip [T, h, w, C], every frame resized and center-cropped as an
  image is.

  video: the source's records are videos; else they are images, each a
  one-frame video.
  """

  clips = True  # elements are stacks of R clips

  def __init__(self, size: Sequence[int], channels: int, frames: int,
               stride: int, clips_per_video: int, scale: Sequence[float],
               ratio: Sequence[float], hflip: bool, video: bool = True):
    self.size = tuple(size)
    self.channels = channels
    self.frames, self.stride, self.repeats = frames, stride, clips_per_video
    self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
    self.video = video

  @property
  def shape(self) -> tuple[int, ...]:
    """One example: (T, h, w, C)."""
    return (self.frames, *self.size, self.channels)

  def decode(self, raw, where: str):
    """Raw record 'image' -> a video of F frames."""
    if not self.video:  # an image source: a still clip
      img = transforms.decode(raw, channels=self.channels, where=where)
      return img[None]
    return decode(raw, channels=self.channels, where=where)

  def _clip(self, video, start: int) -> np.ndarray:
    return take(video, clip_indices(start, self.frames, self.stride,
                                    len(video)))

  def augment(self, video, rng: np.random.Generator) -> np.ndarray:
    """Video -> uint8 [R, T, h, w, C]: R clips, each with its own start,
    crop box and flip (shared by the clip's frames)."""
    out = np.empty((self.repeats, *self.shape), np.uint8)
    for r in range(self.repeats):
      clip = self._clip(video, random_start(rng, len(video), self.frames,
                                            self.stride))
      box = transforms.random_crop_box(clip.shape[1], clip.shape[2], rng,
                                       self.scale, self.ratio)
      flip = self.hflip and rng.random() < 0.5
      for t, frame in enumerate(clip):
        frame = transforms.resize_box(frame, self.size, box)
        out[r, t] = frame[:, ::-1] if flip else frame
    return out

  def eval_view(self, video) -> np.ndarray:
    """Video -> the centre clip uint8 [T, h, w, C], each frame resized and
    center-cropped."""
    clip = self._clip(video, centre_start(len(video), self.frames,
                                          self.stride))
    box = transforms.center_box(clip.shape[1], clip.shape[2], self.size)
    return np.stack([transforms.resize_box(f, self.size, box) for f in clip])
