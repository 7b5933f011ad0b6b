"""The demo notebook runs top to bottom on a tiny trained workdir."""

import nbformat
from nbclient import NotebookClient

from mae_jax import recipes, train
from conftest import ROOT, load_config
from test_video_train import _clip_config


def test_demo_notebook_executes(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  train.train(load_config('test'), str(workdir))
  monkeypatch.setenv('MAE_JAX_WORKDIR', str(workdir))
  video = tmp_path / 'video'
  train.train(_clip_config(steps=2), str(video))
  monkeypatch.setenv('MAE_JAX_VIDEO_WORKDIR', str(video))
  # Audio: the spoken digits, generated into a temporary cache.
  monkeypatch.setenv('MAE_JAX_DATA', str(tmp_path / 'data'))
  sound = tmp_path / 'audio'
  c = load_config('test', 'steps=2')
  recipes.spectrogram_input(c, frames=32, mel_bins=16, mean=-4.9,
                               std=8.7)
  c.model.variant, c.model.decoder = 'mu/8', '32d1b'
  c.data.update(source='spoken_digits', path='')
  train.train(c, str(sound))
  monkeypatch.setenv('MAE_JAX_AUDIO_WORKDIR', str(sound))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  nb = nbformat.read(ROOT / 'notebooks' / 'demo.ipynb', as_version=4)
  NotebookClient(nb, timeout=300, kernel_name='python3', resources={
      'metadata': {'path': str(ROOT / 'notebooks')}}).execute()
  text = '\n'.join(o.get('text', '') for cell in nb.cells
                   if cell.cell_type == 'code' for o in cell.outputs)
  assert 'step 4: mu/4 encoder' in text
  assert '0.75 of the pixels were hidden' in text
  assert 'same key, same mask: True' in text
  assert 'other key, other mask: True' in text
  images = [o for cell in nb.cells if cell.cell_type == 'code'
            for o in cell.outputs if 'image/png' in o.get('data', {})]
  assert 'clips (3, 4, 16, 16, 1): 0.50 of the pixels were hidden, the same in every frame: True' in text
  assert 'spectrograms (4, 32, 16) from 22050 Hz audio: 0.75 of the bins were hidden' in text
  assert 'features (4, 32)' in text
  assert len(images) == 5
