"""Task models: segmentation, change, damage, temporal segmentation.

All take normalised float32 NCHW tensors and return logits at the input size.
Any H, W works: inputs are padded to a multiple of 32 internally and cropped back.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import DAYS_IN_CALENDAR, FusionTransformer, SentinelHead
from .heads import ChangeHead, DamageHead, UPerHead, damage_log_probs
from .swin_v2 import SwinTransformerV2
from .vit import VisionTransformer

STRIDE = 32


def build_hr_encoder(cfg: Dict[str, Any], in_chans: int) -> SwinTransformerV2:
    cfg = dict(cfg)
    kind = cfg.pop("type", "swin_v2")
    if kind != "swin_v2":
        raise ValueError(f"unknown HR encoder type {kind!r}")
    cfg["in_chans"] = in_chans
    return SwinTransformerV2(**cfg)


def _pad_to_stride(x: torch.Tensor) -> torch.Tensor:
    ph, pw = (-x.shape[-2]) % STRIDE, (-x.shape[-1]) % STRIDE
    if ph or pw:
        # Reflection keeps border statistics close to the image (zeros would look like a dark edge).
        mode = "reflect" if x.shape[-2] > ph and x.shape[-1] > pw else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x


def _to_input_size(logits: torch.Tensor, padded: torch.Size, size: torch.Size) -> torch.Tensor:
    logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
    return logits[..., : size[0], : size[1]]


class SegmentationModel(nn.Module):
    """``forward(x[B,C,H,W]) -> logits[B,K,H,W]``: Swin-V2 encoder + UPerNet."""

    task = "segmentation"

    def __init__(self, encoder: Dict[str, Any], decode_head: Dict[str, Any], num_classes: int, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.backbone = build_hr_encoder(encoder, in_chans)
        self.decode_head = UPerHead(self.backbone.out_channels, num_classes=num_classes, **decode_head)

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = _pad_to_stride(x)
        return _to_input_size(self.decode_head(self.backbone(x)), x.shape[-2:], size)


class ChangeModel(nn.Module):
    """``forward(a, b) -> logits[B,2,H,W]``: one shared (siamese) encoder + change head."""

    task = "change"

    def __init__(self, encoder: Dict[str, Any], decode_head: Dict[str, Any], num_classes: int = 2, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.backbone = build_hr_encoder(encoder, in_chans)
        self.decode_head = ChangeHead(self.backbone.out_channels, num_classes=num_classes, **decode_head)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"pre and post batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        size = a.shape[-2:]
        n = a.shape[0]
        # One encoder pass over both dates: same weights, better batching.
        feats = self.backbone(_pad_to_stride(torch.cat([a, b], dim=0)))
        fa, fb = [f[:n] for f in feats], [f[n:] for f in feats]
        logits = self.decode_head(fa, fb)
        return _to_input_size(logits, _pad_to_stride(a[:1, :1]).shape[-2:], size)


class DamageModel(nn.Module):
    """``forward(pre, post) -> logits[B,5,H,W]`` (0 background, 1 no damage, 2 minor, 3 major, 4 destroyed)."""

    task = "damage"

    def __init__(self, encoder: Dict[str, Any], decode_head: Dict[str, Any], num_classes: int = 5, in_chans: int = 3):
        super().__init__()
        if num_classes != 5:
            raise ValueError(f"DamageModel predicts the 5 xBD classes, got num_classes={num_classes}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.backbone = build_hr_encoder(encoder, in_chans)
        self.decode_head = DamageHead(self.backbone.out_channels, **decode_head)

    def forward(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        if pre.shape != post.shape:
            raise ValueError(f"pre and post batches differ in shape: {tuple(pre.shape)} vs {tuple(post.shape)}")
        size = pre.shape[-2:]
        n = pre.shape[0]
        feats = self.backbone(_pad_to_stride(torch.cat([pre, post], dim=0)))
        raw = self.decode_head([f[:n] for f in feats], [f[n:] for f in feats])
        raw = _to_input_size(raw, _pad_to_stride(pre[:1, :1]).shape[-2:], size)
        return damage_log_probs(raw)


class TemporalSegmentationModel(nn.Module):
    """HR image + optional Sentinel-2 / Sentinel-1 time series -> logits[B,K,H,W].

    ``forward(hr[B,3,H,W], s2[B,T,10,h,w]|None, s1[B,T,2,h,w]|None, doy_s2[B,T]|None,
    doy_s1[B,T]|None, valid_s2[B,T] bool|None, valid_s1[B,T] bool|None)``.

    The Sentinel frames cover the same ground as the HR tile (any h, w; 16x16 px at 10 m
    for a 512x512 px HR tile at 0.3125 m reproduces the pre-training geometry). Each frame
    goes through its ViT and ``SentinelHead``, is resampled onto the HR stride-32 grid, gets
    the calendar embedding of its day of year, and joins the HR stage-4 token in the fusion
    transformer. Invalid frames (``valid`` False: clouds, nodata) are not encoded at all and
    are masked out of the attention. The fused feature is concatenated to the HR stage-4
    feature before the UPerNet head, so the model also works with HR alone.
    """

    task = "temporal"

    def __init__(self, encoder: Dict[str, Any], s2_encoder: Optional[Dict[str, Any]],
                 s1_encoder: Optional[Dict[str, Any]], fusion: Dict[str, Any], decode_head: Dict[str, Any],
                 num_classes: int, in_chans: int = 3, use_doy: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.backbone = build_hr_encoder(encoder, in_chans)
        hr_dim = self.backbone.out_channels[-1]
        self.backbone_s2 = VisionTransformer(**s2_encoder) if s2_encoder else None
        self.backbone_s1 = VisionTransformer(**s1_encoder) if s1_encoder else None
        self.head_s2 = SentinelHead(self.backbone_s2.embed_dims, hr_dim) if s2_encoder else None
        self.head_s1 = SentinelHead(self.backbone_s1.embed_dims, hr_dim) if s1_encoder else None
        self.use_doy = use_doy
        self.ctpe = nn.Parameter(torch.zeros(1, DAYS_IN_CALENDAR, hr_dim)) if use_doy else None
        if use_doy:
            nn.init.trunc_normal_(self.ctpe, std=0.02)
        self.fusion = FusionTransformer(input_dims=hr_dim, **fusion)
        channels = list(self.backbone.out_channels)
        channels[-1] = hr_dim + self.fusion.embed_dims
        self.decode_head = UPerHead(channels, num_classes=num_classes, **decode_head)

    def _sentinel_tokens(self, series, doy, valid, encoder, head, grid, name):
        """[B,T,C,h,w] -> tokens [B*gh*gw, T, hr_dim] and padding mask [B*gh*gw, T]."""
        if encoder is None:
            raise ValueError(f"this model has no {name} encoder; pass {name}=None")
        if series.ndim != 5:
            raise ValueError(f"{name} must be [B, T, C, h, w], got shape {tuple(series.shape)}")
        b, t, c, h, w = series.shape
        if c != encoder.in_chans:
            raise ValueError(f"{name} has {c} bands, the model expects {encoder.in_chans}")
        if valid is None:
            valid = torch.ones(b, t, dtype=torch.bool, device=series.device)
        valid = valid.to(torch.bool)
        gh, gw = grid
        feats = series.new_zeros(b * t, head.out_dim, gh, gw)
        flat_valid = valid.reshape(-1)
        frames = series.reshape(b * t, c, h, w)[flat_valid]
        if frames.shape[0]:
            f = head(encoder(frames)[-1])
            if f.shape[-2:] != (gh, gw):
                f = F.interpolate(f, size=(gh, gw), mode="bilinear", align_corners=False)
            feats = feats.index_put((flat_valid.nonzero().squeeze(1),), f.to(feats.dtype))
        feats = feats.reshape(b, t, -1, gh, gw)
        if self.use_doy and doy is not None:
            idx = doy.long().clamp(0, DAYS_IN_CALENDAR - 1)
            feats = feats + self.ctpe[0][idx].to(feats.dtype)[..., None, None]
        tokens = feats.permute(0, 3, 4, 1, 2).reshape(b * gh * gw, t, -1)
        mask = (~valid)[:, None, :].expand(b, gh * gw, t).reshape(b * gh * gw, t)
        return tokens, mask

    def forward(self, hr: torch.Tensor, s2: Optional[torch.Tensor] = None, s1: Optional[torch.Tensor] = None,
                doy_s2: Optional[torch.Tensor] = None, doy_s1: Optional[torch.Tensor] = None,
                valid_s2: Optional[torch.Tensor] = None, valid_s1: Optional[torch.Tensor] = None) -> torch.Tensor:
        size = hr.shape[-2:]
        hr = _pad_to_stride(hr)
        feats = self.backbone(hr)
        top = feats[-1]
        b, c, gh, gw = top.shape
        tokens = [top.permute(0, 2, 3, 1).reshape(b * gh * gw, 1, c)]
        masks = [torch.zeros(b * gh * gw, 1, dtype=torch.bool, device=hr.device)]
        # Sentinel inputs must cover the padded HR tile too: pad them by the same fraction.
        for series, doy, valid, enc, head, name in (
                (s2, doy_s2, valid_s2, self.backbone_s2, self.head_s2, "s2"),
                (s1, doy_s1, valid_s1, self.backbone_s1, self.head_s1, "s1")):
            if series is None:
                continue
            series = _pad_series_like(series, size, hr.shape[-2:])
            tok, mask = self._sentinel_tokens(series, doy, valid, enc, head, (gh, gw), name)
            tokens.append(tok)
            masks.append(mask)
        fused = self.fusion(torch.cat(tokens, dim=1), torch.cat(masks, dim=1))
        fused = fused.reshape(b, gh, gw, -1).permute(0, 3, 1, 2)
        feats = list(feats[:-1]) + [torch.cat([top, fused], dim=1)]
        return _to_input_size(self.decode_head(feats), hr.shape[-2:], size)


def _pad_series_like(series: torch.Tensor, size, padded) -> torch.Tensor:
    """Pad a [B,T,C,h,w] series so it covers the same padded extent as the HR tile."""
    if tuple(size) == tuple(padded):
        return series
    b, t, c, h, w = series.shape
    ph = round(h * padded[0] / size[0]) - h
    pw = round(w * padded[1] / size[1]) - w
    if ph <= 0 and pw <= 0:
        return series
    flat = F.pad(series.reshape(b * t, c, h, w), (0, max(pw, 0), 0, max(ph, 0)), mode="replicate")
    return flat.reshape(b, t, c, flat.shape[-2], flat.shape[-1])


_TASKS = {"segmentation": SegmentationModel, "change": ChangeModel, "damage": DamageModel,
          "temporal": TemporalSegmentationModel,
          # bare modules, for the official checkpoints and feature extraction
          "encoder_hr": lambda **kw: SwinTransformerV2(**{k: v for k, v in kw.items() if k != "type"}),
          "encoder_sentinel": lambda **kw: VisionTransformer(**kw),
          "fusion": lambda **kw: FusionTransformer(**kw)}


def register_task(name: str, cls) -> None:
    _TASKS[name] = cls


def build_task_model(cfg: Dict[str, Any]) -> nn.Module:
    """Instantiate the task class named by ``cfg["task"]`` with the rest of the config."""
    cfg = dict(cfg)
    task = cfg.pop("task")
    if task not in _TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(_TASKS)}")
    return _TASKS[task](**cfg)
