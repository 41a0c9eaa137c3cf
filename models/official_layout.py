"""The key -> shape layout of the official SkySense checkpoints, written from the documents.

Independent of the module code on purpose: tests compare the modules' state dicts with
these tables, so a refactor that renames or reshapes a weight is caught.

Sources (read, not copied):
* mmpretrain/mmcls ``SwinTransformerV2`` + ``WindowMSAV2`` + ``PatchMerging`` (post-norm),
  arch "huge" = embed 352, depths (2, 2, 18, 2), heads (8, 16, 32, 64), extra norm every 6
  blocks; the SkySense README (HR keys carry a ``backbone.`` prefix, ``mask_token`` is a
  pre-training leftover, ``relative_coords_table`` is not stored); a public parameter dump
  of the Huge encoder (e.g. ``stages.1.downsample.reduction.weight`` (704, 1408),
  ``stages.2.blocks.5.norm3.weight`` (1408,), ``stages.0.blocks.0.attn.w_msa.cpb_mlp.0.weight`` (512, 2)).
* mmseg ``VisionTransformer`` (S2/S1: patch 4, 1024-d, 24 layers, 16 heads, 16 px tiles)
  whose layers wrap ``nn.MultiheadAttention`` as ``attn.attn``; the S2 file also holds the
  calendar table ``ctpe``.
* SkySense(++) ``TransformerEncoder`` fusion neck (``porj_linear`` 2816 -> 1024, ``cls_token``,
  24 layers) and ``UPHead`` Sentinel heads (1x1 conv 1024 -> 16 * 2816, PixelShuffle 4).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

Shape = Tuple[int, ...]

HR_HUGE = dict(embed_dims=352, depths=(2, 2, 18, 2), num_heads=(8, 16, 32, 64), extra_norm_every=6,
               in_chans=3, patch_size=4, cpb_hidden=512, mlp_ratio=4, out_indices=(0, 1, 2, 3))
SENTINEL_LARGE = dict(embed_dims=1024, num_layers=24, patch_size=4, img_size=16, mlp_ratio=4)
FUSION_LARGE = dict(input_dims=2816, embed_dims=1024, num_layers=24, mlp_ratio=4)

# Keys found in the official files that these modules deliberately do not hold.
IGNORED_OFFICIAL_KEYS = ("mask_token",)
IGNORED_OFFICIAL_SUFFIXES = ("relative_coords_table", "relative_position_index")


def _ln(prefix: str, dim: int) -> Dict[str, Shape]:
    return {f"{prefix}.weight": (dim,), f"{prefix}.bias": (dim,)}


def _linear(prefix: str, out_dim: int, in_dim: int, bias: bool = True) -> Dict[str, Shape]:
    table = {f"{prefix}.weight": (out_dim, in_dim)}
    if bias:
        table[f"{prefix}.bias"] = (out_dim,)
    return table


def swinv2_layout(embed_dims: int, depths: Sequence[int], num_heads: Sequence[int], extra_norm_every: int = 0,
                  in_chans: int = 3, patch_size: int = 4, cpb_hidden: int = 512, mlp_ratio: int = 4,
                  out_indices: Sequence[int] = (0, 1, 2, 3)) -> Dict[str, Shape]:
    """Parameters of mmpretrain's SwinTransformerV2 (buffers excluded)."""
    t: Dict[str, Shape] = {
        "patch_embed.projection.weight": (embed_dims, in_chans, patch_size, patch_size),
        "patch_embed.projection.bias": (embed_dims,),
        **_ln("patch_embed.norm", embed_dims),
    }
    dim = embed_dims
    dims = []
    for s, (depth, heads) in enumerate(zip(depths, num_heads)):
        if s > 0:
            t[f"stages.{s}.downsample.reduction.weight"] = (2 * dim, 4 * dim)
            t.update(_ln(f"stages.{s}.downsample.norm", 2 * dim))
            dim *= 2
        dims.append(dim)
        for b in range(depth):
            p = f"stages.{s}.blocks.{b}"
            t[f"{p}.attn.w_msa.logit_scale"] = (heads, 1, 1)
            t[f"{p}.attn.w_msa.q_bias"] = (dim,)
            t[f"{p}.attn.w_msa.v_bias"] = (dim,)
            t.update(_linear(f"{p}.attn.w_msa.cpb_mlp.0", cpb_hidden, 2))
            t.update(_linear(f"{p}.attn.w_msa.cpb_mlp.2", heads, cpb_hidden, bias=False))
            t.update(_linear(f"{p}.attn.w_msa.qkv", 3 * dim, dim, bias=False))
            t.update(_linear(f"{p}.attn.w_msa.proj", dim, dim))
            t.update(_ln(f"{p}.norm1", dim))
            t.update(_linear(f"{p}.ffn.layers.0.0", mlp_ratio * dim, dim))
            t.update(_linear(f"{p}.ffn.layers.1", dim, mlp_ratio * dim))
            t.update(_ln(f"{p}.norm2", dim))
            if extra_norm_every and (b + 1) % extra_norm_every == 0:
                t.update(_ln(f"{p}.norm3", dim))
    for i in out_indices:
        t.update(_ln(f"norm{i}", dims[i]))
    return t


def _encoder_layers(prefix: str, dim: int, num_layers: int, mlp_ratio: int) -> Dict[str, Shape]:
    t: Dict[str, Shape] = {}
    for i in range(num_layers):
        p = f"{prefix}{i}"
        t.update(_ln(f"{p}.ln1", dim))
        t[f"{p}.attn.attn.in_proj_weight"] = (3 * dim, dim)
        t[f"{p}.attn.attn.in_proj_bias"] = (3 * dim,)
        t.update(_linear(f"{p}.attn.attn.out_proj", dim, dim))
        t.update(_ln(f"{p}.ln2", dim))
        t.update(_linear(f"{p}.ffn.layers.0.0", mlp_ratio * dim, dim))
        t.update(_linear(f"{p}.ffn.layers.1", dim, mlp_ratio * dim))
    return t


def vit_layout(in_chans: int, embed_dims: int = 1024, num_layers: int = 24, patch_size: int = 4,
               img_size: int = 16, mlp_ratio: int = 4, final_norm: bool = False) -> Dict[str, Shape]:
    """Parameters of the SkySense S2/S1 ViT (mmseg VisionTransformer)."""
    grid = img_size // patch_size
    t: Dict[str, Shape] = {
        "patch_embed.projection.weight": (embed_dims, in_chans, patch_size, patch_size),
        "patch_embed.projection.bias": (embed_dims,),
        "cls_token": (1, 1, embed_dims),
        "pos_embed": (1, 1 + grid * grid, embed_dims),
    }
    t.update(_encoder_layers("layers.", embed_dims, num_layers, mlp_ratio))
    if final_norm:
        t.update(_ln("ln1", embed_dims))
    return t


def fusion_layout(input_dims: int = 2816, embed_dims: int = 1024, num_layers: int = 24,
                  mlp_ratio: int = 4) -> Dict[str, Shape]:
    """Parameters of the multi-modal temporal fusion encoder."""
    t: Dict[str, Shape] = {"cls_token": (1, 1, embed_dims)}
    t.update(_linear("porj_linear", embed_dims, input_dims))
    t.update(_encoder_layers("layers.", embed_dims, num_layers, mlp_ratio))
    return t


def sentinel_head_layout(in_dim: int = 1024, out_dim: int = 2816, up_scale: int = 4) -> Dict[str, Shape]:
    """Parameters of the official UPHead mapping Sentinel features onto the HR stage-4 grid."""
    return {"decoder.0.weight": (up_scale ** 2 * out_dim, in_dim, 1, 1), "decoder.0.bias": (up_scale ** 2 * out_dim,)}


def official_hr_layout() -> Dict[str, Shape]:
    return swinv2_layout(**HR_HUGE)


def official_s2_layout() -> Dict[str, Shape]:
    return vit_layout(10, **SENTINEL_LARGE)


def official_s1_layout() -> Dict[str, Shape]:
    return vit_layout(2, **SENTINEL_LARGE)


def official_fusion_layout() -> Dict[str, Shape]:
    return fusion_layout(**FUSION_LARGE)
