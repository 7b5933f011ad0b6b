"""Convert a checkpoint of another implementation into a mae_jax workdir.

  python -m mae_jax.convert --from=videomae --in=checkpoint.pth --out=DIR
  python -m mae_jax.convert --from=videomae --in=vit_g_hybrid_pt_1200e.pth \\
      --out=DIR --set=data.source=video_files --set=data.path=/data/k400

DIR (absent or empty) becomes a workdir at step 0 that `mae_jax.load(DIR)`
and `python -m mae_jax.evaluate --workdir=DIR` accept, and a new training
run can start from; the conversion's decisions are printed and saved in
DIR/converted.json. Formats: see --from. Failures are one line (`error:
...`, exit status 1) naming the file and the keys or shapes at fault.
PyTorch is not needed: .pth files are read by a restricted unpickler that
runs no code from the file.
"""

from __future__ import annotations

import ast

from absl import app, flags

from mae_jax import cli

flags.DEFINE_string('from', None, 'Format of the input checkpoint: videomae '
                    '(also VideoMAE V2).')
flags.DEFINE_string('in', None, 'The checkpoint file (.pth, torch.save).')
flags.DEFINE_string('out', None, 'Directory to write (absent or empty).')
flags.DEFINE_string('key', None, 'Entry of the checkpoint holding the state '
                    "dict (default: 'model', 'module', 'state_dict' or the "
                    "file's top level; e.g. 'model_ema').")
flags.DEFINE_integer('frames', None, 'Clip length T the model was trained on '
                     '(not stored in the weights; VideoMAE: 16).')
flags.DEFINE_string('image_size', None, 'Frame size the model was trained on: '
                    'N or H,W (VideoMAE: 224).')
flags.DEFINE_integer('num_heads', None, 'Encoder attention heads the model '
                     'was trained with (checked against the mae_jax size).')
flags.DEFINE_integer('decoder_heads', None, 'Decoder attention heads (default: '
                     'the official model\'s).')
flags.DEFINE_string('masking', None, 'config.masking.name for further '
                    'training (default: tube; dual for VideoMAE V2 ViT-g).')
flags.DEFINE_float('mask_ratio', None, 'config.masking.ratio (default 0.9).')
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


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for name in ('from', 'in', 'out'):
    if not FLAGS[name].value:
      raise app.UsageError(f'--{name} is required: python -m mae_jax.convert '
                           '--from=FORMAT --in=FILE --out=DIR')
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
  print(f'wrote {FLAGS.out}: ViT-{c.model.variant} encoder + '
        f'{c.model.decoder} decoder, input '
        f'{(c.model.frames, *_pair(c.model.image_size), c.model.channels)}')
  for note in converted.notes:
    print(f'  {note}')


def _pair(size):
  return (size, size) if isinstance(size, int) else tuple(size)


if __name__ == '__main__':
  cli.run(main)
