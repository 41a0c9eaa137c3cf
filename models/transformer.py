"""Pre-norm transformer encoder layer with the mmseg/mmcv key layout.

Keys: ``ln1``, ``attn.attn.{in_proj_weight,in_proj_bias,out_proj.*}`` (mmcv's
MultiheadAttention wraps ``nn.MultiheadAttention`` as ``attn``), ``ln2``,
``ffn.layers.0.0`` / ``ffn.layers.1``. Shared by the S2/S1 ViT and the fusion encoder.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .layers import FFN, DropPath


class MultiheadAttention(nn.Module):
    """Self-attention holding ``nn.MultiheadAttention`` under the name ``attn``."""

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=attn_drop, batch_first=True)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return self.proj_drop(out)


class TransformerEncoderLayer(nn.Module):
    """x = x + attn(ln1(x)); x = x + ffn(ln2(x))."""

    def __init__(self, embed_dims: int, num_heads: int, mlp_ratio: float = 4.0, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, norm_eps: float = 1e-5):
        super().__init__()
        self.ln1 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.attn = MultiheadAttention(embed_dims, num_heads, attn_drop_rate, drop_rate)
        self.ln2 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.ffn = FFN(embed_dims, int(embed_dims * mlp_ratio), drop=drop_rate)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.ln1(x), key_padding_mask))
        return x + self.drop_path(self.ffn(self.ln2(x)))
