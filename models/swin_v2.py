"""Swin Transformer V2 with the mmpretrain key layout (the SkySense HR encoder).

Keys follow ``mmpretrain.models.backbones.SwinTransformerV2`` so the official
``skysense_model_backbone_hr.pth`` loads strictly: ``patch_embed.projection``,
``stages.N.downsample.{reduction,norm}`` (at the start of stages 1-3),
``stages.N.blocks.M.{norm1,attn.w_msa.*,norm2,ffn.layers.*,norm3}`` and ``norm{i}``.
Blocks are res-post-norm: ``x = x + norm(f(x))``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import FFN, DropPath, drop_path_rates

# Published SwinV2 sizes (mmpretrain arch_zoo); SkySense uses "huge".
ARCH_ZOO = {
    "tiny": dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), extra_norm_every_n_blocks=0),
    "small": dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), extra_norm_every_n_blocks=0),
    "base": dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), extra_norm_every_n_blocks=0),
    "large": dict(embed_dims=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), extra_norm_every_n_blocks=0),
    "huge": dict(embed_dims=352, depths=(2, 2, 18, 2), num_heads=(8, 16, 32, 64), extra_norm_every_n_blocks=6),
    "giant": dict(embed_dims=512, depths=(2, 2, 42, 4), num_heads=(16, 32, 64, 128), extra_norm_every_n_blocks=6),
}


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (``projection`` conv + ``norm``)."""

    def __init__(self, in_chans: int, embed_dims: int, patch_size: int = 4):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_chans, embed_dims, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        p = self.patch_size
        pad_h, pad_w = (-x.shape[2]) % p, (-x.shape[3]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class PatchMerging(nn.Module):
    """2x2 merge -> linear 4C->2C -> LayerNorm (post-norm, as in SwinV2).

    The 2x2 neighbourhood is gathered like ``nn.Unfold`` (channel-major, then
    kernel position), which is the order mmpretrain's weights expect.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        b, _, c = x.shape
        h, w = hw
        x = x.transpose(1, 2).reshape(b, c, h, w)
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        # [B, C, H/2, 2, W/2, 2] -> [B, H/2, W/2, C, 2, 2] == unfold's channel-major order
        x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        x = x.reshape(b, (h // 2) * (w // 2), 4 * c)
        return self.norm(self.reduction(x)), (h // 2, w // 2)


def _relative_coords_table(window: int, pretrained_window: int) -> torch.Tensor:
    """Log-spaced relative coordinates fed to the continuous position bias MLP."""
    span = torch.arange(-(window - 1), window, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(span, span, indexing="ij"), dim=-1)
    norm = (pretrained_window - 1) if pretrained_window > 0 else (window - 1)
    table = table / max(norm, 1) * 8
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    return table.unsqueeze(0)  # [1, 2W-1, 2W-1, 2]


def _relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)  # [W*W, W*W]


class WindowMSAV2(nn.Module):
    """Cosine window attention with a log-spaced continuous position bias (SwinV2)."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, cpb_mlp_hidden: int = 512, pretrained_window_size: int = 0):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, cpb_mlp_hidden, bias=True),
            nn.ReLU(inplace=True),
            nn.Linear(cpb_mlp_hidden, num_heads, bias=False),
        )
        # Derived from the window size: recomputed, not stored (official checkpoints lack them too).
        self.register_buffer("relative_coords_table", _relative_coords_table(window_size, pretrained_window_size),
                             persistent=False)
        self.register_buffer("relative_position_index", _relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dims))
        self.v_bias = nn.Parameter(torch.zeros(embed_dims))
        self.attn_drop = attn_drop
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def position_bias(self) -> torch.Tensor:
        """[heads, N, N] bias, 16 * sigmoid(cpb_mlp(table))."""
        n = self.window_size * self.window_size
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = table[self.relative_position_index.view(-1)].view(n, n, self.num_heads)
        return 16 * torch.sigmoid(bias.permute(2, 0, 1))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [B*nW, N, C]; mask: [nW, N, N] additive (0 or large negative)."""
        bw, n, c = x.shape
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias).reshape(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        # Keep every operand in q's dtype so autocast / half precision reach SDPA consistently.
        q = F.normalize(q, dim=-1) * scale.to(q.dtype)
        k = F.normalize(k, dim=-1)
        bias = self.position_bias().to(q.dtype).unsqueeze(0)  # [1, h, N, N]
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.unsqueeze(0) + mask.to(q.dtype).view(1, nw, 1, n, n)).expand(bw // nw, -1, -1, -1, -1)
            bias = bias.reshape(bw, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0, scale=1.0)
        out = out.transpose(1, 2).contiguous().reshape(bw, n, c)
        return self.proj_drop(self.proj(out))


def _window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _window_reverse(windows: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // w) * (wd // w))
    x = windows.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, c)


class ShiftWindowMSA(nn.Module):
    """(Shifted) window attention over a padded token map; holds ``w_msa``.

    Padding tokens added to reach window multiples are masked out as keys, so
    borders of odd-sized maps see only real pixels.
    """

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, shift_size: int,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, pretrained_window_size: int = 0):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.w_msa = WindowMSAV2(embed_dims, num_heads, window_size, attn_drop, proj_drop,
                                 pretrained_window_size=pretrained_window_size)

    def _mask(self, h: int, w: int, hp: int, wp: int, shift: int, device) -> Optional[torch.Tensor]:
        if shift == 0 and hp == h and wp == w:
            return None
        ws = self.window_size
        region = torch.zeros(1, hp, wp, 1, device=device)
        if shift:
            cnt = 0
            slices = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
            for hs in slices:
                for wsl in slices:
                    region[:, hs, wsl, :] = cnt
                    cnt += 1
        pad = torch.zeros(1, hp, wp, 1, device=device)
        pad[:, h:, :, :] = 1
        pad[:, :, w:, :] = 1
        if shift:
            # Region labels live in the rolled frame already; padding is placed in the
            # unrolled frame, so it moves with the roll.
            pad = torch.roll(pad, (-shift, -shift), dims=(1, 2))
        rw = _window_partition(region, ws).squeeze(-1)  # [nW, N]
        pw = _window_partition(pad, ws).squeeze(-1)
        # Different shifted region, or a padded key. -100 (not -inf) keeps rows of padded
        # queries, which see only masked keys, finite; they are cropped away afterwards.
        mask = (rw.unsqueeze(1) != rw.unsqueeze(2)) | (pw.unsqueeze(1) > 0)
        return mask.to(torch.float32) * -100.0

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape
        h, w = hw
        ws = self.window_size
        x = x.view(b, h, w, c)
        hp, wp = h + (-h) % ws, w + (-w) % ws
        if hp != h or wp != w:
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        # A map that fits in one window gains nothing from shifting.
        shift = self.shift_size if min(hp, wp) > ws else 0
        if shift:
            x = torch.roll(x, (-shift, -shift), dims=(1, 2))
        mask = self._mask(h, w, hp, wp, shift, x.device)
        if mask is not None:
            mask = mask.to(x.dtype)
        out = self.w_msa(_window_partition(x, ws), mask)
        out = _window_reverse(out, ws, hp, wp)
        if shift:
            out = torch.roll(out, (shift, shift), dims=(1, 2))
        return out[:, :h, :w, :].reshape(b, h * w, c)


class SwinBlockV2(nn.Module):
    """Res-post-norm block: x = x + norm1(attn(x)); x = x + norm2(ffn(x)); optional norm3."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, shift: bool,
                 ffn_ratio: float = 4.0, drop_path: float = 0.0, extra_norm: bool = False,
                 pretrained_window_size: int = 0):
        super().__init__()
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window_size, window_size // 2 if shift else 0,
                                   pretrained_window_size=pretrained_window_size)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, int(embed_dims * ffn_ratio))
        self.norm2 = nn.LayerNorm(embed_dims)
        self.drop_path = DropPath(drop_path)
        self.extra_norm = extra_norm
        if extra_norm:
            self.norm3 = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.norm1(self.attn(x, hw)))
        x = x + self.drop_path(self.norm2(self.ffn(x)))
        if self.extra_norm:
            x = self.norm3(x)
        return x


class SwinBlockV2Sequence(nn.Module):
    """One stage: optional PatchMerging first (doubles channels), then the blocks."""

    def __init__(self, embed_dims: int, depth: int, num_heads: int, window_size: int, downsample: bool,
                 drop_paths: Sequence[float], extra_norm_every_n_blocks: int = 0,
                 pretrained_window_size: int = 0, with_cp: bool = False):
        super().__init__()
        if downsample:
            self.downsample = PatchMerging(embed_dims, 2 * embed_dims)
            embed_dims = 2 * embed_dims
        else:
            self.downsample = None
        self.out_channels = embed_dims
        self.with_cp = with_cp
        n = extra_norm_every_n_blocks
        self.blocks = nn.ModuleList(
            SwinBlockV2(embed_dims, num_heads, window_size, shift=i % 2 == 1, drop_path=drop_paths[i],
                        extra_norm=bool(n) and (i + 1) % n == 0, pretrained_window_size=pretrained_window_size)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        if self.downsample is not None:
            x, hw = self.downsample(x, hw)
        for block in self.blocks:
            if self.with_cp and x.requires_grad:
                x = checkpoint(block, x, hw, use_reentrant=False)
            else:
                x = block(x, hw)
        return x, hw


class SwinTransformerV2(nn.Module):
    """Hierarchical encoder returning features at strides 4, 8, 16, 32 (NCHW)."""

    def __init__(self, arch: str = "huge", embed_dims: Optional[int] = None, depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None, extra_norm_every_n_blocks: Optional[int] = None,
                 in_chans: int = 3, window_size: int = 8, pretrained_window_size: int = 0,
                 drop_path_rate: float = 0.0, out_indices: Sequence[int] = (0, 1, 2, 3), with_cp: bool = False):
        super().__init__()
        base = dict(ARCH_ZOO[arch]) if arch else {}
        embed_dims = embed_dims if embed_dims is not None else base["embed_dims"]
        depths = tuple(depths if depths is not None else base["depths"])
        num_heads = tuple(num_heads if num_heads is not None else base["num_heads"])
        extra = extra_norm_every_n_blocks if extra_norm_every_n_blocks is not None else base.get(
            "extra_norm_every_n_blocks", 0)
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} differ in length")
        self.in_chans = in_chans
        self.out_indices = tuple(out_indices)
        self.patch_embed = PatchEmbed(in_chans, embed_dims, 4)
        rates = drop_path_rates(drop_path_rate, sum(depths))
        self.stages = nn.ModuleList()
        dims, start = embed_dims, 0
        self.num_features: List[int] = []
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            stage = SwinBlockV2Sequence(dims, depth, heads, window_size, downsample=i > 0,
                                        drop_paths=rates[start:start + depth], extra_norm_every_n_blocks=extra,
                                        pretrained_window_size=pretrained_window_size, with_cp=with_cp)
            self.stages.append(stage)
            dims = stage.out_channels
            self.num_features.append(dims)
            start += depth
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.out_channels = [self.num_features[i] for i in self.out_indices]
        self.strides = [4 * 2 ** i for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        b = x.shape[0]
        x, hw = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw = stage(x, hw)
            if i in self.out_indices:
                y = getattr(self, f"norm{i}")(x)
                outs.append(y.transpose(1, 2).reshape(b, -1, hw[0], hw[1]))
        return outs
