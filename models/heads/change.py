"""Bi-temporal change head: per-level fusion of siamese features, then UPerNet -> 2 logits."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from ..layers import ConvModule
from .upernet import UPerHead


class FeatureDifferenceFusion(nn.ModuleList):
    """Per level: [a, b, |a - b|] -> 1x1 conv back to the level's width.

    The absolute difference makes the fusion symmetric in what changed; keeping a
    and b lets the head learn direction-specific cues (e.g. new buildings).
    """

    def __init__(self, in_channels: Sequence[int], norm: str = "bn"):
        super().__init__(ConvModule(3 * c, c, 1, norm=norm) for c in in_channels)

    def forward(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [conv(torch.cat([a, b, (a - b).abs()], dim=1)) for conv, a, b in zip(self, feats_a, feats_b)]


class ChangeHead(nn.Module):
    """``forward(feats_a, feats_b) -> logits[B, num_classes, H/4, W/4]``."""

    def __init__(self, in_channels: Sequence[int], channels: int = 256, num_classes: int = 2,
                 norm: str = "bn", dropout: float = 0.1):
        super().__init__()
        self.fusion = FeatureDifferenceFusion(in_channels, norm)
        self.decoder = UPerHead(in_channels, channels, num_classes, norm=norm, dropout=dropout)

    def forward(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.decoder(self.fusion(feats_a, feats_b))
