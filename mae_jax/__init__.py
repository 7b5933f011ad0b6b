"""mae_jax: masked-autoencoder pretraining of Vision Transformers in JAX/Flax.

The algorithm, in reading order: masking.py (which patches are hidden),
models/mae.py (encoder on visible patches, decoder with mask tokens),
targets.py (what is predicted, the masked loss), step.py (one train step).
"""

__version__ = '0.1.0'


def load(path: str, step: int | None = None):
  """Loads a pretrained MAE from a workdir or checkpoint directory; see api.py."""
  from mae_jax import api  # pylint: disable=g-import-not-at-top
  return api.load(path, step)
