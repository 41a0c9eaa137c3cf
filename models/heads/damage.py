"""Damage head: building localisation from the pre image, damage grade from pre/post.

Output are log-probabilities over 5 classes (0 background, 1 no damage, 2 minor,
3 major, 4 destroyed): log p(building) + log_softmax(damage grades) for 1-4 and
log p(background) for 0. They are valid logits (softmax gives the probabilities,
cross-entropy trains both branches) while keeping localisation independent of the
post image, as in the xView2 winning designs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .change import FeatureDifferenceFusion
from .upernet import UPerHead

NUM_DAMAGE_CLASSES = 5


def damage_log_probs(raw: torch.Tensor) -> torch.Tensor:
    """[B, 1 + 4, H, W] raw (building logit, grade logits) -> log-probabilities of the 5 classes.

    Applied after upsampling so the output stays exactly normalised at every pixel.
    """
    building, grades = raw[:, :1], raw[:, 1:]
    return torch.cat([F.logsigmoid(-building), F.logsigmoid(building) + F.log_softmax(grades, dim=1)], dim=1)


class DamageHead(nn.Module):
    """``forward(feats_pre, feats_post) -> raw[B, 5, H/4, W/4]`` (building logit, 4 grade logits).

    Pass the (upsampled) result through :func:`damage_log_probs` for the class logits.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 256, norm: str = "bn", dropout: float = 0.1):
        super().__init__()
        self.localization = UPerHead(in_channels, channels, 1, norm=norm, dropout=dropout)
        self.fusion = FeatureDifferenceFusion(in_channels, norm)
        self.classification = UPerHead(in_channels, channels, NUM_DAMAGE_CLASSES - 1, norm=norm, dropout=dropout)

    def forward(self, feats_pre: Sequence[torch.Tensor], feats_post: Sequence[torch.Tensor]) -> torch.Tensor:
        building = self.localization(feats_pre)                      # [B,1,h,w] logit of "is a building"
        grades = self.classification(self.fusion(feats_pre, feats_post))  # [B,4,h,w]
        return torch.cat([building, grades], dim=1)
