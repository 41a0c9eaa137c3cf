"""Decode heads: UPerNet segmentation, bi-temporal change, damage."""
from .change import ChangeHead, FeatureDifferenceFusion
from .damage import DamageHead
from .upernet import UPerHead

__all__ = ["UPerHead", "ChangeHead", "DamageHead", "FeatureDifferenceFusion"]
