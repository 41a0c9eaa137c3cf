"""Official SkySense checkpoints: exact key/shape layout and strict loading."""
import math

import pytest
import torch

from models import official_layout as L
from models.checkpoint import CheckpointError, load_official_weights, read_official_state
from models.registry import create_model


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def huge_parts():
    """The official-size modules on the meta device: no memory is allocated."""
    with torch.device("meta"):
        return {name: create_model(name) for name in ("swinv2_hr_huge", "vit_s2_large", "vit_s1_large",
                                                      "fusion_large", "skysense_temporal_huge")}


@pytest.mark.parametrize("name, layout", [
    ("swinv2_hr_huge", L.official_hr_layout),
    ("vit_s2_large", L.official_s2_layout),
    ("vit_s1_large", L.official_s1_layout),
    ("fusion_large", L.official_fusion_layout),
])
def test_huge_modules_match_the_documented_layout_exactly(huge_parts, name, layout):
    got, want = _shapes(huge_parts[name]), layout()
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}


# Literal keys and shapes read from the official code / a dump of the released HR encoder.
LITERAL = [
    ("swinv2_hr_huge", "patch_embed.projection.weight", (352, 3, 4, 4)),
    ("swinv2_hr_huge", "stages.0.blocks.0.attn.w_msa.cpb_mlp.0.weight", (512, 2)),
    ("swinv2_hr_huge", "stages.0.blocks.0.attn.w_msa.cpb_mlp.2.weight", (8, 512)),
    ("swinv2_hr_huge", "stages.0.blocks.0.attn.w_msa.logit_scale", (8, 1, 1)),
    ("swinv2_hr_huge", "stages.0.blocks.0.attn.w_msa.qkv.weight", (1056, 352)),
    ("swinv2_hr_huge", "stages.1.downsample.reduction.weight", (704, 1408)),
    ("swinv2_hr_huge", "stages.2.downsample.reduction.weight", (1408, 2816)),
    ("swinv2_hr_huge", "stages.2.blocks.5.norm3.weight", (1408,)),
    ("swinv2_hr_huge", "stages.2.blocks.17.norm3.weight", (1408,)),
    ("swinv2_hr_huge", "stages.3.blocks.1.ffn.layers.0.0.weight", (11264, 2816)),
    ("swinv2_hr_huge", "norm3.weight", (2816,)),
    ("vit_s2_large", "layers.0.attn.attn.in_proj_weight", (3072, 1024)),
    ("vit_s2_large", "layers.23.ffn.layers.1.weight", (1024, 4096)),
    ("vit_s2_large", "patch_embed.projection.weight", (1024, 10, 4, 4)),
    ("vit_s1_large", "patch_embed.projection.weight", (1024, 2, 4, 4)),
    ("fusion_large", "porj_linear.weight", (1024, 2816)),
    ("skysense_temporal_huge", "head_s2.decoder.0.weight", (45056, 1024, 1, 1)),
    ("skysense_temporal_huge", "ctpe", (1, 365, 2816)),
]


@pytest.mark.parametrize("name, key, shape", LITERAL)
def test_literal_official_keys(huge_parts, name, key, shape):
    assert _shapes(huge_parts[name])[key] == shape


def test_no_extra_norm_outside_every_sixth_block(huge_parts):
    keys = _shapes(huge_parts["swinv2_hr_huge"])
    norm3 = sorted(k for k in keys if ".norm3." in k and k.endswith("weight"))
    assert norm3 == [f"stages.2.blocks.{b}.norm3.weight" for b in (11, 17, 5)]


def test_huge_parameter_counts(huge_parts):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 650e6 < count(huge_parts["swinv2_hr_huge"]) < 660e6   # SwinV2-H is ~0.65 B
    assert 300e6 < count(huge_parts["vit_s2_large"]) < 305e6     # ViT-L is ~0.3 B


def _meta_state(layout, prefix=""):
    return {prefix + k: torch.empty(v, device="meta") for k, v in layout.items()}


def test_huge_hr_checkpoint_loads_strictly_on_meta(huge_parts):
    state = _meta_state(L.official_hr_layout(), "backbone.")
    state["backbone.mask_token"] = torch.empty(1, 1, 352, device="meta")
    report = load_official_weights(huge_parts["swinv2_hr_huge"], state, "hr")
    assert report.ok and not report.missing and not report.unexpected
    assert report.ignored == ["mask_token"]
    assert len(report.loaded) == len(L.official_hr_layout())


def test_temporal_huge_takes_every_official_part(huge_parts):
    model = huge_parts["skysense_temporal_huge"]
    s2 = _meta_state(L.official_s2_layout())
    s2["ctpe"] = torch.empty(1, 365, 2816, device="meta")
    assert load_official_weights(model, _meta_state(L.official_hr_layout(), "backbone."), "hr").ok
    assert load_official_weights(model, s2, "s2").adapted == ["ctpe"]
    assert load_official_weights(model, _meta_state(L.official_s1_layout()), "s1").ok
    assert load_official_weights(model, _meta_state(L.official_fusion_layout()), "fusion").ok
    assert load_official_weights(model, _meta_state(L.sentinel_head_layout()), "head_s2").ok


# ---------------------------------------------------------------- real tensors, small sizes

TINY_HR = dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16), extra_norm_every=0)


def _official_like_file(tmp_path, wrapper="state_dict"):
    """A file in the official format (``backbone.`` prefix, wrapped, mask_token) for the tiny size."""
    torch.manual_seed(0)
    state = {f"backbone.{k}": torch.randn(v) for k, v in L.swinv2_layout(**TINY_HR).items()}
    state["backbone.mask_token"] = torch.zeros(1, 1, 32)
    state["backbone.stages.0.blocks.0.attn.w_msa.relative_coords_table"] = torch.zeros(1, 15, 15, 2)
    path = tmp_path / "skysense_model_backbone_hr.pth"
    torch.save({wrapper: state} if wrapper else state, path)
    return path, state


@pytest.mark.parametrize("wrapper", ["state_dict", "model", None])
def test_official_format_file_loads_strictly_with_values(tmp_path, wrapper):
    path, state = _official_like_file(tmp_path, wrapper)
    model = create_model("skysense_seg_tiny", num_classes=3)
    report = load_official_weights(model, path, "hr")
    assert report.ok and sorted(report.ignored) == ["mask_token", "stages.0.blocks.0.attn.w_msa.relative_coords_table"]
    got = model.backbone.state_dict()
    for key in ("stages.1.downsample.reduction.weight", "stages.3.blocks.1.attn.w_msa.cpb_mlp.0.weight", "norm2.bias"):
        torch.testing.assert_close(got[key], state[f"backbone.{key}"])


def test_band_count_adaptation_keeps_rgb_and_scales(tmp_path):
    path, state = _official_like_file(tmp_path)
    model = create_model("skysense_seg_tiny", num_classes=3, in_chans=4)
    report = load_official_weights(model, path, "hr")
    assert report.ok and report.adapted == ["patch_embed.projection.weight (3 -> 4 bands)"]
    w = model.backbone.patch_embed.projection.weight
    orig = state["backbone.patch_embed.projection.weight"]
    torch.testing.assert_close(w[:, :3], orig * 3 / 4)
    torch.testing.assert_close(w[:, 3], orig.mean(1) * 3 / 4)


def test_mismatched_layout_is_refused_with_names(tmp_path):
    state = {f"backbone.{k}": torch.zeros(v) for k, v in L.swinv2_layout(**TINY_HR).items()}
    state["backbone.stages.1.downsample.reduction.weight"] = torch.zeros(64, 100)
    del state["backbone.norm3.weight"]
    state["backbone.head.fc.weight"] = torch.zeros(10, 256)
    model = create_model("skysense_seg_tiny", num_classes=3)
    with pytest.raises(CheckpointError) as err:
        load_official_weights(model, state, "hr")
    msg = str(err.value)
    assert "norm3.weight" in msg and "head.fc.weight" in msg and "stages.1.downsample.reduction.weight" in msg
    report = load_official_weights(model, state, "hr", strict=False)
    assert report.missing == ["backbone.norm3.weight"] or report.missing == ["norm3.weight"]
    assert report.unexpected == ["head.fc.weight"]
    assert report.mismatched == [("stages.1.downsample.reduction.weight", (64, 100), (64, 128))]


def test_sentinel_file_with_calendar_table_goes_into_temporal_model(tmp_path):
    cfg = dict(in_chans=10, embed_dims=64, num_layers=2, img_size=16, mlp_ratio=4)
    state = {k: torch.randn(v) for k, v in L.vit_layout(**cfg).items()}
    state["ctpe"] = torch.randn(1, 365, 256)
    path = tmp_path / "skysense_model_backbone_s2.pth"
    torch.save(state, path)
    model = create_model("skysense_temporal_tiny")
    report = load_official_weights(model, path, "s2")
    assert report.ok and report.adapted == ["ctpe"]
    torch.testing.assert_close(model.ctpe.detach(), state["ctpe"])
    torch.testing.assert_close(model.backbone_s2.layers[1].attn.attn.in_proj_weight.detach(),
                               state["layers.1.attn.attn.in_proj_weight"])
    bare = create_model("vit_s2_large", embed_dims=64, num_layers=2, num_heads=2, out_indices=(1,))
    assert load_official_weights(bare, path, "s2").ignored == ["ctpe"]


def test_bad_files_raise_checkpoint_error(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_official_state(junk)
    listy = tmp_path / "list.pth"
    torch.save([1, 2, 3], listy)
    with pytest.raises(CheckpointError, match="no state dict"):
        read_official_state(listy)
    mixed = tmp_path / "mixed.pth"
    torch.save({"a": torch.zeros(1), "epoch": 3}, mixed)
    with pytest.raises(CheckpointError, match="non-tensor"):
        read_official_state(mixed)


def test_relative_coords_table_formula():
    """Log-spaced CPB input: corner of an 8-window is sign * log2(8 + 1) / log2(8)."""
    from models.swin_v2 import _relative_coords_table, _relative_position_index

    table = _relative_coords_table(8, 0)
    assert table.shape == (1, 15, 15, 2)
    assert table[0, 0, 0, 0].item() == pytest.approx(-math.log2(9) / 3)
    assert table[0, 7, 7].abs().sum().item() == 0
    index = _relative_position_index(8)
    assert index.shape == (64, 64) and index.max().item() == 15 * 15 - 1
    assert index[0, 0].item() == 7 * 15 + 7  # zero offset sits at the centre of the table
