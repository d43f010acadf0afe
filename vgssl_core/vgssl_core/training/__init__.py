"""Training: GeoPair and triplet data, hard-negative mining, the Lightning module, ``train()``."""

from vgssl_core.training.run import train

__all__ = ["train"]
