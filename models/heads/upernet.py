"""UPerNet decode head (PPM on the deepest level + FPN), mmseg key layout."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvModule


def _pool_matrix(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """[bins, size] averaging matrix with the bin edges of ``adaptive_avg_pool``."""
    rows = torch.zeros(bins, size, dtype=like.dtype, device=like.device)
    for i in range(bins):
        start, end = (i * size) // bins, -((-(i + 1) * size) // bins)
        rows[i, start:end] = 1.0 / (end - start)
    return rows


class AdaptiveAvgPool(nn.Module):
    """Adaptive average pooling written as two matrix products.

    Same numbers as ``nn.AdaptiveAvgPool2d``, but it exports to ONNX for any bin count
    (the ONNX exporters refuse adaptive pooling with non-divisible sizes).
    """

    def __init__(self, bins: int):
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = _pool_matrix(int(x.shape[-2]), self.bins, x)
        pw = _pool_matrix(int(x.shape[-1]), self.bins, x)
        return torch.matmul(torch.matmul(ph, x), pw.t())


class PPM(nn.ModuleList):
    """Pyramid pooling: adaptive average pools at several scales, each followed by a 1x1 conv."""

    def __init__(self, pool_scales: Sequence[int], in_ch: int, ch: int, norm: str):
        super().__init__(
            nn.Sequential(AdaptiveAvgPool(s), ConvModule(in_ch, ch, 1, norm=norm)) for s in pool_scales
        )

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        size = x.shape[2:]
        return [F.interpolate(m(x), size=size, mode="bilinear", align_corners=False) for m in self]


class UPerHead(nn.Module):
    """Fuses multi-scale features into per-pixel logits at the finest feature stride.

    ``forward(features) -> logits`` at the stride of ``features[0]`` (4 for Swin);
    the task model upsamples to the input size.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 512, num_classes: int = 2,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), norm: str = "bn", dropout: float = 0.1):
        super().__init__()
        self.in_channels = list(in_channels)
        self.psp_modules = PPM(pool_scales, self.in_channels[-1], channels, norm)
        self.bottleneck = ConvModule(self.in_channels[-1] + len(pool_scales) * channels, channels, 3, 1, norm=norm)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1, norm=norm) for c in self.in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, 1, norm=norm) for _ in self.in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * channels, channels, 3, 1, norm=norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def fuse(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decoder features [B, channels, H/4, W/4] before the classifier."""
        deepest = feats[-1]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[:-1])]
        laterals.append(self.bottleneck(torch.cat([deepest, *self.psp_modules(deepest)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="bilinear", align_corners=False)
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])]
        outs.append(laterals[-1])
        size = outs[0].shape[2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.fuse(feats)))
