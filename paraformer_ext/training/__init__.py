"""Training Paraformer (spec training.md): the FunASR-exact loss (`compute_loss`, loss.py), its criteria
(criteria.py), the GLM sampler (glm.py), SpecAugLFR (specaug.py), MWER with negative sampling (mwer.py), and the
trainer (trainer.py: `train(TrainConfig(...))`, reading its lists with data.py, from scratch via scratch.py)."""
from .loss import compute_loss
from .mwer import MwerConfig, mwer_loss
from .trainer import TrainConfig, train

__all__ = ["compute_loss", "MwerConfig", "mwer_loss", "TrainConfig", "train"]
