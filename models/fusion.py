"""Multi-modal temporal fusion of SkySense.

Per HR stage-4 location, a sequence of tokens [HR, S2_t1..S2_tn, S1_t1..S1_tm] (each
2816-d for the Huge model) is projected to 1024-d, prefixed with an extra (class) token and
passed through 24 transformer layers; the extra token's output is the fused feature.
Key names follow the official code, including its ``porj_linear`` spelling.

Sentinel features reach the HR channel width through ``SentinelHead`` (official
``UPHead``: 1x1 conv to up^2 * C channels + PixelShuffle(up)), and acquisition dates
through a learnt calendar table ``ctpe`` [1, 365, C] indexed by day of year (0-364).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import drop_path_rates
from .transformer import TransformerEncoderLayer

DAYS_IN_CALENDAR = 365


class SentinelHead(nn.Module):
    """[N, in_dim, h, w] -> [N, out_dim, h*up, w*up] (key ``decoder.0``)."""

    def __init__(self, in_dim: int, out_dim: int, up_scale: int = 4):
        super().__init__()
        self.out_dim = out_dim
        self.decoder = nn.Sequential(nn.Conv2d(in_dim, up_scale ** 2 * out_dim, 1), nn.PixelShuffle(up_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(x)


class FusionTransformer(nn.Module):
    """``forward(tokens[N, S, input_dims], key_padding_mask[N, S] | None) -> [N, embed_dims]``.

    ``key_padding_mask`` is True for tokens to ignore (cloudy / missing frames); the
    extra token is never masked, so every location gets a defined output.
    """

    def __init__(self, input_dims: int = 2816, embed_dims: int = 1024, num_layers: int = 24, num_heads: int = 16,
                 mlp_ratio: float = 4.0, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 with_cp: bool = False):
        super().__init__()
        self.input_dims = input_dims
        self.embed_dims = embed_dims
        self.with_cp = with_cp
        self.porj_linear = nn.Linear(input_dims, embed_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        rates = drop_path_rates(drop_path_rate, num_layers)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(embed_dims, num_heads, mlp_ratio, drop_rate, 0.0, rates[i])
            for i in range(num_layers))

    def forward(self, tokens: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.porj_linear(tokens)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if key_padding_mask is not None:
            keep_cls = torch.zeros_like(key_padding_mask[:, :1])
            key_padding_mask = torch.cat([keep_cls, key_padding_mask], dim=1)
        for layer in self.layers:
            if self.with_cp and x.requires_grad:
                x = checkpoint(layer, x, key_padding_mask, use_reentrant=False)
            else:
                x = layer(x, key_padding_mask)
        return x[:, 0]
