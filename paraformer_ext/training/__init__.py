"""Training Paraformer (spec training.md): the FunASR-exact loss (`compute_loss`, loss.py), its criteria
(criteria.py), the GLM sampler (glm.py), SpecAugLFR (specaug.py) and MWER with negative sampling (mwer.py)."""
from .loss import compute_loss
from .mwer import MwerConfig, mwer_loss

__all__ = ["compute_loss", "MwerConfig", "mwer_loss"]
