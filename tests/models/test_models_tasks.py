"""Task models: shapes, registry behaviour, padding, training signal."""
import pytest
import torch

from models.registry import create_model, get_config, list_models


def test_registry_lists_tiny_and_official_sizes():
    names = list_models()
    for name in ("skysense_seg_tiny", "skysense_change_tiny", "skysense_damage_tiny",
                 "skysense_seg_huge", "skysense_change_huge", "skysense_damage_huge"):
        assert name in names


def test_unknown_model_name_is_reported():
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        create_model("nope")


def test_overrides_merge_into_nested_config():
    cfg = get_config("skysense_seg_tiny", num_classes=3, decode_head={"channels": 16})
    assert cfg["num_classes"] == 3 and cfg["decode_head"]["channels"] == 16
    assert cfg["decode_head"]["norm"] == "bn"  # untouched sibling key survives
    assert get_config("skysense_seg_tiny")["decode_head"]["channels"] != 16  # no leak into the registry


@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (50, 70)])
def test_segmentation_logits_match_input_size(hw):
    torch.manual_seed(0)
    model = create_model("skysense_seg_tiny", num_classes=4, in_chans=5).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 5, *hw))
    assert out.shape == (2, 4, *hw)
    assert torch.isfinite(out).all()


def test_segmentation_remembers_arch_for_model_files():
    model = create_model("skysense_seg_tiny", num_classes=4)
    assert model.arch == {"name": "skysense_seg_tiny", "kwargs": {"num_classes": 4}}
    assert model.task == "segmentation"


def test_change_model_is_siamese_and_two_class():
    torch.manual_seed(0)
    model = create_model("skysense_change_tiny").eval()
    a = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        out = model(a, torch.randn(2, 3, 64, 64))
        same = model(a, a)
    assert out.shape == (2, 2, 64, 64)
    # identical inputs give identical per-sample output regardless of which batch slot they sit in
    with torch.inference_mode():
        single = model(a[1:], a[1:])
    torch.testing.assert_close(single, same[1:], atol=1e-4, rtol=1e-4)


def test_change_model_rejects_mismatched_pairs():
    model = create_model("skysense_change_tiny").eval()
    with pytest.raises(ValueError, match="differ in shape"):
        model(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 32, 64))


def test_damage_model_outputs_normalised_log_probabilities():
    torch.manual_seed(0)
    model = create_model("skysense_damage_tiny").eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 5, 64, 64)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(1, 64, 64), atol=1e-4, rtol=1e-4)


def test_damage_model_only_predicts_five_classes():
    with pytest.raises(ValueError, match="5 xBD classes"):
        create_model("skysense_damage_tiny", num_classes=3)


def test_tiny_segmentation_learns_a_simple_pattern():
    """A few optimiser steps must reduce the loss on a fixed batch (gradients reach every stage)."""
    torch.manual_seed(0)
    model = create_model("skysense_seg_tiny", num_classes=2)
    # blocky labels (16 px cells) with a class-dependent colour shift plus noise
    y = torch.nn.functional.interpolate((torch.rand(2, 1, 4, 4) > 0.5).float(), scale_factor=16).squeeze(1).long()
    x = torch.randn(2, 3, 64, 64) * 0.5 + y[:, None].float() * 1.5
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.stages.3")]
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize("name", ["skysense_seg_tiny", "skysense_temporal_tiny"])
def test_mixed_precision_and_bf16_weights_agree_with_fp32(name):
    """The engine runs AMP on GPU; the same dtype handling is exercised here with CPU bf16."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=4).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = model(x)
        low = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    for out in (amp, low):
        assert out.shape == ref.shape and torch.isfinite(out.float()).all()
        assert (out.float().argmax(1) == ref.argmax(1)).float().mean() > 0.95


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = create_model("skysense_seg_tiny", num_classes=3)
    ckpt = create_model("skysense_seg_tiny", num_classes=3, encoder={"with_cp": True})
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for m in (plain, ckpt):
        m.train()
        torch.manual_seed(1)  # same dropout draws in both runs
        m(x).square().mean().backward()
    a = plain.backbone.stages[1].blocks[1].attn.w_msa.qkv.weight.grad
    b = ckpt.backbone.stages[1].blocks[1].attn.w_msa.qkv.weight.grad
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
