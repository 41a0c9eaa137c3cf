"""Task models: segmentation, change, damage, temporal segmentation.

All take normalised float32 NCHW tensors and return logits at the input size.
Any H, W works: inputs are padded to a multiple of 32 internally and cropped back.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .heads import ChangeHead, DamageHead, UPerHead, damage_log_probs
from .swin_v2 import SwinTransformerV2

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


_TASKS = {"segmentation": SegmentationModel, "change": ChangeModel, "damage": DamageModel}


def register_task(name: str, cls) -> None:
    _TASKS[name] = cls


def build_task_model(cfg: Dict[str, Any]) -> nn.Module:
    """Instantiate the task class named by ``cfg["task"]`` with the rest of the config."""
    cfg = dict(cfg)
    task = cfg.pop("task")
    if task not in _TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(_TASKS)}")
    return _TASKS[task](**cfg)
