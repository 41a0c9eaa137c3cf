"""Small building blocks shared by the encoders and heads."""
from __future__ import annotations

import torch
from torch import nn


def drop_path_rates(max_rate: float, n: int) -> list:
    """Linearly increasing stochastic-depth rates (plain Python so it works on the meta device)."""
    if n <= 1:
        return [0.0] * n
    return [max_rate * i / (n - 1) for i in range(n)]


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep


class FFN(nn.Module):
    """Two-layer MLP with the mmcv key layout: ``layers.0.0`` (fc1) and ``layers.1`` (fc2)."""

    def __init__(self, embed_dims: int, hidden_dims: int, drop: float = 0.0):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, hidden_dims), nn.GELU(), nn.Dropout(drop)),
            nn.Linear(hidden_dims, embed_dims),
            nn.Dropout(drop),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvModule(nn.Module):
    """Conv + norm + ReLU with the mmcv key layout (``conv``, ``bn`` or ``gn``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, padding: int = 0,
                 norm: str = "bn", act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, bias=norm == "none")
        self.norm_name = norm
        if norm == "bn":
            self.bn = nn.BatchNorm2d(out_ch)
        elif norm == "gn":
            self.gn = nn.GroupNorm(_groups_for(out_ch), out_ch)
        elif norm != "none":
            raise ValueError(f"unknown norm {norm!r} (expected 'bn', 'gn' or 'none')")
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_name == "bn":
            x = self.bn(x)
        elif self.norm_name == "gn":
            x = self.gn(x)
        return self.act(x)


def _groups_for(channels: int) -> int:
    """Largest of 32/16/8/4/2/1 that divides the channel count."""
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1
