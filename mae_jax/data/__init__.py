"""Data: sources of raw records, per-image and per-clip transforms, grain
pipelines."""

from mae_jax.data.pipeline import (
    TrainIterator, build_train_iterator, check_clips, eval_batches,
    source_info)
from mae_jax.data.sources import (
    SOURCES, Source, check_config, gives_clips, open_source, register,
    write_array_record)
from mae_jax.data.transforms import (
    BadRecordError, decode, denormalize, normalize, random_resized_crop,
    resize_center_crop)
from mae_jax.data.workers import DataWorkerError

__all__ = [
    'BadRecordError', 'DataWorkerError', 'SOURCES', 'Source', 'TrainIterator',
    'build_train_iterator', 'check_clips', 'check_config', 'decode',
    'denormalize', 'eval_batches', 'gives_clips', 'normalize', 'open_source',
    'random_resized_crop', 'register', 'resize_center_crop', 'source_info',
    'write_array_record',
]
