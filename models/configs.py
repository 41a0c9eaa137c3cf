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


# ---------------------------------------------------------------- Sentinel + fusion (official sizes)
VIT_S2_LARGE = dict(in_chans=10, img_size=16, patch_size=4, embed_dims=1024, num_layers=24, num_heads=16,
                    out_indices=(5, 11, 17, 23), drop_path_rate=0.3, norm_eps=1e-6)
VIT_S1_LARGE = dict(VIT_S2_LARGE, in_chans=2)
FUSION_LARGE = dict(embed_dims=1024, num_layers=24, num_heads=16, drop_path_rate=0.3)

VIT_S2_TINY = dict(in_chans=10, img_size=16, patch_size=4, embed_dims=64, num_layers=2, num_heads=2,
                   out_indices=(1,), norm_eps=1e-6)
VIT_S1_TINY = dict(VIT_S2_TINY, in_chans=2)
FUSION_TINY = dict(embed_dims=64, num_layers=2, num_heads=2)


@register_model("swinv2_hr_huge")
def swinv2_hr_huge():
    """The bare HR encoder of skysense_model_backbone_hr.pth."""
    return dict(task="encoder_hr", **{k: v for k, v in SWINV2_HUGE.items() if k != "type"})


@register_model("vit_s2_large")
def vit_s2_large():
    """The bare Sentinel-2 encoder of skysense_model_backbone_s2.pth."""
    return dict(task="encoder_sentinel", **VIT_S2_LARGE)


@register_model("vit_s1_large")
def vit_s1_large():
    """The bare Sentinel-1 encoder of skysense_model_backbone_s1.pth."""
    return dict(task="encoder_sentinel", **VIT_S1_LARGE)


@register_model("fusion_large")
def fusion_large():
    """The bare multi-modal temporal fusion encoder (2816 -> 1024, 24 layers)."""
    return dict(task="fusion", input_dims=2816, **FUSION_LARGE)


@register_model("skysense_temporal_huge")
def skysense_temporal_huge():
    return dict(task="temporal", encoder=dict(SWINV2_HUGE), s2_encoder=dict(VIT_S2_LARGE),
                s1_encoder=dict(VIT_S1_LARGE), fusion=dict(FUSION_LARGE), decode_head=dict(HEAD_HUGE),
                num_classes=7, in_chans=3, use_doy=True)


@register_model("skysense_temporal_tiny")
def skysense_temporal_tiny():
    return dict(task="temporal", encoder=dict(SWINV2_TINY), s2_encoder=dict(VIT_S2_TINY),
                s1_encoder=dict(VIT_S1_TINY), fusion=dict(FUSION_TINY), decode_head=dict(HEAD_TINY),
                num_classes=7, in_chans=3, use_doy=True)
