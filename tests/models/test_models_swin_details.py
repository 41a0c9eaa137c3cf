"""Swin-V2 details that weight compatibility depends on."""
import torch
import torch.nn.functional as F

from models.swin_v2 import PatchMerging, ShiftWindowMSA, SwinTransformerV2


def test_patch_merging_gathers_like_nn_unfold():
    """mmpretrain merges with nn.Unfold(2, stride=2): channel-major, then kernel position."""
    merge = PatchMerging(3, 6)
    x = torch.randn(2, 3, 4, 6)
    tokens = x.flatten(2).transpose(1, 2)
    ref = F.unfold(x, kernel_size=2, stride=2).transpose(1, 2)  # [B, L, C*4]
    with torch.no_grad():
        merge.reduction.weight.copy_(torch.eye(6, 12))
        merge.norm.weight.fill_(1)
        merge.norm.bias.zero_()
        out, hw = merge(tokens, (4, 6))
    assert hw == (2, 3)
    torch.testing.assert_close(out, F.layer_norm(ref[..., :6], (6,)))


def test_shift_mask_separates_regions_and_blocks_padding():
    attn = ShiftWindowMSA(8, 2, window_size=4, shift_size=2)
    mask = attn._mask(h=6, w=8, hp=8, wp=8, shift=2, device="cpu")
    assert mask.shape == (4, 16, 16)
    assert set(mask.unique().tolist()) <= {0.0, -100.0}
    # first window, before shifting back: all tokens real and in one region -> nothing masked
    assert (mask[0] == 0).all()
    plain = attn._mask(h=8, w=8, hp=8, wp=8, shift=0, device="cpu")
    assert plain is None


def test_odd_sizes_and_tiny_maps_stay_finite():
    torch.manual_seed(0)
    enc = SwinTransformerV2(arch="", embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                            extra_norm_every_n_blocks=0).eval()
    with torch.inference_mode():
        for hw in ((36, 52), (32, 32), (100, 68)):
            feats = enc(torch.randn(1, 3, *hw))
            assert [f.shape[1] for f in feats] == [16, 32, 64, 128]
            assert all(torch.isfinite(f).all() for f in feats)
            assert feats[0].shape[-2:] == ((hw[0] + 3) // 4, (hw[1] + 3) // 4)


def test_padding_does_not_leak_into_real_tokens():
    """A real token's output must not depend on what the padded region would contain."""
    torch.manual_seed(0)
    attn = ShiftWindowMSA(8, 2, window_size=4, shift_size=0).eval()
    x = torch.randn(1, 6 * 6, 8)
    with torch.no_grad():
        out_small = attn(x, (6, 6))
        # the same 6x6 map embedded in an 8x8 map with real (non-zero) neighbours
        big = torch.randn(1, 8, 8, 8)
        big[:, :6, :6] = x.view(1, 6, 6, 8)
        out_big = attn(big.view(1, 64, 8), (8, 8)).view(1, 8, 8, 8)
    # first window (rows/cols 0-3) contains only real tokens in both cases
    torch.testing.assert_close(out_small.view(1, 6, 6, 8)[:, :4, :4], out_big[:, :4, :4])
    # tokens in windows that contain padding differ from the embedded case: the padding was masked, not attended
    assert not torch.allclose(out_small.view(1, 6, 6, 8)[:, 4:, 4:], out_big[:, 4:6, 4:6])


def test_shift_mask_separates_wrapped_tokens_only():
    """After rolling by -s, tokens that wrapped around must not attend to ones that did not."""
    ws, s, n = 4, 2, 8
    attn = ShiftWindowMSA(8, 2, window_size=ws, shift_size=s)
    mask = attn._mask(h=n, w=n, hp=n, wp=n, shift=s, device="cpu")
    nw = n // ws
    for win in range(nw * nw):
        wr, wc = divmod(win, nw)
        rows = [wr * ws + i // ws for i in range(ws * ws)]
        cols = [wc * ws + i % ws for i in range(ws * ws)]
        wrapped = [(r >= n - s, c >= n - s) for r, c in zip(rows, cols)]
        for i in range(ws * ws):
            for j in range(ws * ws):
                expect = -100.0 if wrapped[i] != wrapped[j] else 0.0
                assert mask[win, i, j].item() == expect, (win, i, j)
