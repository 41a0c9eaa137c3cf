"""Vision Transformer for Sentinel-2 (10 bands) and Sentinel-1 (2 bands), SkySense layout.

Keys follow mmseg's VisionTransformer as used by the official SkySense S2/S1 encoders:
``patch_embed.projection``, ``cls_token``, ``pos_embed`` [1, 1 + N, D], ``layers.N.*``
(see models/transformer.py) and, when ``final_norm``, ``ln1``. Patch size 4: a 16x16 pixel
Sentinel tile becomes a 4x4 token grid. The class token only contributes its position
slot (``with_cls_token=False`` in SkySense), so it is kept for weight compatibility.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import drop_path_rates
from .transformer import TransformerEncoderLayer


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dims: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_chans, embed_dims, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor):
        p = self.patch_size
        pad_h, pad_w = (-x.shape[2]) % p, (-x.shape[3]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.projection(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class VisionTransformer(nn.Module):
    """``forward(x[N,C,h,w]) -> list of [N, D, h/4, w/4]`` at ``out_indices``."""

    def __init__(self, in_chans: int = 10, img_size: int = 16, patch_size: int = 4, embed_dims: int = 1024,
                 num_layers: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0,
                 out_indices: Sequence[int] = (5, 11, 17, 23), drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, final_norm: bool = False, norm_eps: float = 1e-6,
                 with_cp: bool = False):
        super().__init__()
        self.in_chans = in_chans
        self.embed_dims = embed_dims
        self.grid = img_size // patch_size
        self.out_indices = tuple(i % num_layers for i in out_indices)
        self.with_cp = with_cp
        self.patch_embed = PatchEmbed(in_chans, embed_dims, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, embed_dims))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.drop_after_pos = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, num_layers)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(embed_dims, num_heads, mlp_ratio, drop_rate, 0.0, rates[i], norm_eps)
            for i in range(num_layers))
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.out_channels = [embed_dims] * len(self.out_indices)

    def _patch_pos_embed(self, hw) -> torch.Tensor:
        pos = self.pos_embed[:, 1:]
        if hw == (self.grid, self.grid):
            return pos
        # Other tile sizes: resample the learnt grid (bicubic, as mmseg does).
        pos = pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=hw, mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x, hw = self.patch_embed(x)
        x = self.drop_after_pos(x + self._patch_pos_embed(hw))
        outs = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = checkpoint(layer, x, use_reentrant=False) if self.with_cp and x.requires_grad else layer(x)
            if i == last and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                outs.append(x.transpose(1, 2).reshape(x.shape[0], -1, hw[0], hw[1]))
        return outs
