"""Convert a checkpoint of another implementation into a mae_jax workdir,
or a mae_jax checkpoint into a file other code reads.

  python -m mae_jax.convert --from=mae --in=mae_pretrain_vit_base.pth --out=DIR
  python -m mae_jax.convert --from=mae --in=mae_finetuned_vit_base.pth \\
      --out=DIR --set=data.source=tfds --set=data.tfds_name=imagenet2012
  python -m mae_jax.convert --from=videomae --in=checkpoint.pth --out=DIR
  python -m mae_jax.convert --from=videomae --in=vit_g_hybrid_pt_1200e.pth \\
      --out=DIR --set=data.source=video_files --set=data.path=/data/k400
  python -m mae_jax.convert --from=audiomae --in=pretrained.pth --out=DIR \\
      --set=data.source=audio_files --set=data.path=/data/audioset/{split}.csv

DIR (absent or empty) becomes a workdir at step 0 that `mae_jax.load(DIR)`
and `python -m mae_jax.evaluate --workdir=DIR` accept, and a new training
run can start from; the conversion's decisions are printed and saved in
DIR/converted.json. Formats: see --from. Failures are one line (`error:
...`, exit status 1) naming the file and the keys or shapes at fault.
PyTorch is not needed: .pth files are read by a restricted unpickler that
runs no code from the file.

  python -m mae_jax.convert --to=mae --in=WORKDIR --out=model.pth
  python -m mae_jax.convert --to=safetensors --in=WORKDIR --step=5000 \\
      --out=params.safetensors

--to writes the checkpoint of a workdir (the latest, or --step) as a new
FILE: 'mae' the official PyTorch layout (.pth, written without PyTorch, or
.safetensors), 'safetensors' every parameter under its mae_jax path with
the config in the metadata (mae_jax/convert/export.py has both layouts).
"""

from __future__ import annotations

import ast

from absl import app, flags

from mae_jax import cli

flags.DEFINE_string('from', None, 'Format of the input checkpoint: mae '
                    '(facebookresearch/mae: pretraining, encoder-only or '
                    'fine-tuned), videomae (also VideoMAE V2), audiomae '
                    '(facebookresearch/AudioMAE: pretraining with either '
                    'decoder, encoder-only or fine-tuned).')
flags.DEFINE_string('to', None, 'Export instead: the format to write a mae_jax '
                    'checkpoint in: mae (the official PyTorch layout, .pth '
                    'or .safetensors) or safetensors (mae_jax\'s own '
                    'parameter paths).')
flags.DEFINE_string('in', None, 'With --from: the checkpoint file (.pth, '
                    'torch.save, or .safetensors). With --to: a mae_jax '
                    'workdir, its checkpoints/ or one step directory.')
flags.DEFINE_string('out', None, 'With --from: the directory to write (absent '
                    'or empty). With --to: the file to write (new).')
flags.DEFINE_integer('step', None, 'With --to: the checkpoint step to export '
                     '(default: the latest).')
flags.DEFINE_string('key', None, 'Entry of the checkpoint holding the state '
                    "dict (default: 'model', 'module', 'state_dict' or the "
                    "file's top level; e.g. 'model_ema').")
flags.DEFINE_integer('frames', None, 'Clip length T the model was trained on '
                     '(not stored in the weights; VideoMAE: 16).')
flags.DEFINE_string('image_size', None, 'Image (frame) size the model was '
                    'trained on: N or H,W (mae: from the position table, a '
                    'square grid; VideoMAE: 224).')
flags.DEFINE_integer('num_heads', None, 'Encoder attention heads the model '
                     'was trained with (checked against the mae_jax size).')
flags.DEFINE_integer('decoder_heads', None, 'Decoder attention heads (default: '
                     'the official model\'s).')
flags.DEFINE_string('masking', None, 'config.masking.name for further '
                    'training (default: mae random; videomae tube, dual for '
                    'VideoMAE V2 ViT-g).')
flags.DEFINE_float('mask_ratio', None, 'config.masking.ratio (default: mae '
                   '0.75 or the checkpoint\'s args; videomae 0.9).')
flags.DEFINE_multi_string('set', [], 'KEY=VALUE: a config value of the '
                          'written config (repeatable), e.g. '
                          '--set=data.path=/data/videos.')

FLAGS = flags.FLAGS


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _image_size(text: str | None):
  if text is None:
    return None
  try:
    parts = tuple(int(p) for p in text.strip('()[] ').split(',') if p.strip())
  except ValueError:
    parts = ()
  if len(parts) not in (1, 2) or min(parts) < 1:
    raise app.UsageError(f'--image_size={text}: expected N or H,W (positive '
                         'integers)')
  return parts[0] if len(parts) == 1 else parts


def _export() -> None:
  for name in ('in', 'out'):
    if not FLAGS[name].value:
      raise app.UsageError(f'--{name} is required: python -m mae_jax.convert '
                           '--to=FORMAT --in=WORKDIR --out=FILE')
  given = [name for name in ('from', 'key', 'frames', 'image_size',
                             'num_heads', 'decoder_heads', 'masking',
                             'mask_ratio') if FLAGS[name].present]
  if FLAGS.set:
    given.append('set')
  if given:
    raise app.UsageError('--to exports a mae_jax checkpoint as it is; '
                         + ', '.join(f'--{n}' for n in given)
                         + ' belong(s) to --from')
  from mae_jax.convert import export  # pylint: disable=g-import-not-at-top
  exported = export.export(FLAGS.to, FLAGS['in'].value, FLAGS.out, FLAGS.step)
  print(f'wrote {exported.path}')
  for note in exported.notes:
    print(f'  {note}')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.to:
    _export()
    return
  if FLAGS.step is not None:
    raise app.UsageError('--step belongs to --to (which checkpoint to '
                         'export)')
  for name in ('from', 'in', 'out'):
    if not FLAGS[name].value:
      raise app.UsageError(f'--{name} is required: python -m mae_jax.convert '
                           '--from=FORMAT --in=FILE --out=DIR (or --to=FORMAT '
                           '--in=WORKDIR --out=FILE)')
  overrides = {}
  for item in FLAGS.set:
    key, sep, text = item.partition('=')
    if not sep or not key:
      raise app.UsageError(f'--set={item}: expected KEY=VALUE')
    overrides[key] = _value(text)
  # Imported here: --help and flag errors need no jax.
  from mae_jax import convert  # pylint: disable=g-import-not-at-top
  options = convert.Options(
      frames=FLAGS.frames, image_size=_image_size(FLAGS.image_size),
      num_heads=FLAGS.num_heads, decoder_heads=FLAGS.decoder_heads,
      masking=FLAGS.masking, mask_ratio=FLAGS.mask_ratio, overrides=overrides)
  converted = convert.convert(FLAGS['from'].value, FLAGS['in'].value,
                              FLAGS.out, options, key=FLAGS.key)
  c = converted.config
  shape = (*((c.model.frames,) if c.model.frames else ()),
           *_pair(c.model.image_size), c.model.channels)
  what = (f'{c.model.decoder} decoder' if c.task == 'pretrain' else
          f'{c.classify.num_classes}-class head (task {c.task})')
  print(f'wrote {FLAGS.out}: ViT-{c.model.variant} encoder + {what}, input '
        f'{shape}')
  for note in converted.notes:
    print(f'  {note}')


def _pair(size):
  return (size, size) if isinstance(size, int) else tuple(size)


if __name__ == '__main__':
  cli.run(main)
