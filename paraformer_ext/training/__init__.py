"""Training Paraformer (spec training.md): the FunASR-exact loss (`compute_loss`, loss.py), its criteria
(criteria.py) and the GLM sampler (glm.py)."""
from .loss import compute_loss

__all__ = ["compute_loss"]
