"""Decode heads: UPerNet segmentation, bi-temporal change, damage."""
from .change import ChangeHead, FeatureDifferenceFusion
from .damage import DamageHead, damage_log_probs
from .upernet import UPerHead

__all__ = ["UPerHead", "ChangeHead", "DamageHead", "FeatureDifferenceFusion", "damage_log_probs"]
