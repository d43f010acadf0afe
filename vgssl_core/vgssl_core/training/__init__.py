"""Training: GeoPair and triplet data, hard-negative mining, the Lightning module, ``train()``."""

from .run import train

__all__ = ["train"]
