"""Registered configurations: the official SkySense sizes and small CPU-friendly ones.

Tiny configs run the very same code with fewer/narrower layers so that they train
in minutes on a laptop CPU; the official sizes match the released checkpoints.
"""
from __future__ import annotations

from .registry import register_model

# SkySense HR branch: Swin-V2 Huge, window 8 (official backbone_hr).
SWINV2_HUGE = dict(type="swin_v2", arch="huge", window_size=8, drop_path_rate=0.2)
SWINV2_TINY = dict(type="swin_v2", arch="", embed_dims=32, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16),
                   extra_norm_every_n_blocks=0, window_size=8)

HEAD_HUGE = dict(channels=512, norm="bn", dropout=0.1)
HEAD_TINY = dict(channels=64, norm="bn", dropout=0.1)


def _task(task: str, encoder: dict, head: dict, num_classes: int, in_chans: int = 3) -> dict:
    return dict(task=task, encoder=dict(encoder), decode_head=dict(head), num_classes=num_classes, in_chans=in_chans)


@register_model("skysense_seg_huge")
def skysense_seg_huge():
    return _task("segmentation", SWINV2_HUGE, HEAD_HUGE, 7)


@register_model("skysense_change_huge")
def skysense_change_huge():
    return _task("change", SWINV2_HUGE, dict(HEAD_HUGE, channels=256), 2)


@register_model("skysense_damage_huge")
def skysense_damage_huge():
    return _task("damage", SWINV2_HUGE, dict(HEAD_HUGE, channels=256), 5)


@register_model("skysense_seg_tiny")
def skysense_seg_tiny():
    return _task("segmentation", SWINV2_TINY, HEAD_TINY, 7)


@register_model("skysense_change_tiny")
def skysense_change_tiny():
    return _task("change", SWINV2_TINY, HEAD_TINY, 2)


@register_model("skysense_damage_tiny")
def skysense_damage_tiny():
    return _task("damage", SWINV2_TINY, dict(HEAD_TINY, channels=48), 5)
