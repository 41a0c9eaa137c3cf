"""TemporalSegmentationModel: HR + Sentinel series with valid-frame masks and day of year."""
import pytest
import torch

from models.registry import create_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("skysense_temporal_tiny", num_classes=4).eval()


def _inputs(b=2, t=3):
    torch.manual_seed(1)
    return (torch.randn(b, 3, 64, 64), torch.randn(b, t, 10, 4, 4), torch.randn(b, 2, 2, 4, 4),
            torch.tensor([[10, 120, 250], [30, 31, 32]])[:b, :t])


def test_shapes_with_and_without_sentinel(model):
    hr, s2, s1, doy = _inputs()
    with torch.inference_mode():
        assert model(hr).shape == (2, 4, 64, 64)
        assert model(hr, s2, s1, doy, None, None, None).shape == (2, 4, 64, 64)
        # sizes that are not multiples of 32, Sentinel grid not matching the HR grid
        assert model(torch.randn(1, 3, 70, 90), torch.randn(1, 2, 10, 5, 7)).shape == (1, 4, 70, 90)


def test_sentinel_series_changes_the_prediction(model):
    hr, s2, s1, doy = _inputs()
    with torch.inference_mode():
        assert not torch.allclose(model(hr), model(hr, s2, s1, doy))


def test_invalid_frames_are_ignored(model):
    hr, s2, s1, doy = _inputs()
    valid = torch.tensor([[True, False, True], [True, True, False]])
    cloudy = s2.clone()
    cloudy[0, 1] = 5000.0
    cloudy[1, 2] = float("nan")  # nodata frame: must not poison the output
    with torch.inference_mode():
        a = model(hr, s2, None, doy, None, valid, None)
        b = model(hr, cloudy, None, doy, None, valid, None)
    assert torch.isfinite(b).all()
    torch.testing.assert_close(a, b)


def test_all_frames_invalid_equals_hr_only(model):
    hr, s2, s1, doy = _inputs()
    none_valid = torch.zeros(2, 3, dtype=torch.bool)
    with torch.inference_mode():
        torch.testing.assert_close(model(hr, s2, None, doy, None, none_valid, None), model(hr), atol=1e-5, rtol=1e-5)


def test_day_of_year_is_used(model):
    hr, s2, s1, doy = _inputs()
    with torch.inference_mode():
        a = model(hr, s2, None, doy)
        b = model(hr, s2, None, (doy + 180) % 365)
    assert not torch.allclose(a, b)


def test_wrong_band_count_is_explained(model):
    hr, s2, s1, doy = _inputs()
    with pytest.raises(ValueError, match="s2 has 4 bands, the model expects 10"):
        model(hr, s2[:, :, :4])
    with pytest.raises(ValueError, match=r"\[B, T, C, h, w\]"):
        model(hr, s2[:, 0])


def test_gradients_reach_every_branch():
    torch.manual_seed(0)
    model = create_model("skysense_temporal_tiny", num_classes=3)
    hr, s2, s1, doy = _inputs()
    loss = model(hr, s2, s1, doy, doy[:, :2]).logsumexp(1).mean()
    loss.backward()
    for part in ("backbone", "backbone_s2", "backbone_s1", "head_s2", "head_s1", "fusion"):
        # the ViT class token only lends its position slot (as in SkySense): no gradient expected
        grads = [p.grad for n, p in getattr(model, part).named_parameters() if n != "cls_token"]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), part
    assert model.ctpe.grad is not None and model.ctpe.grad.abs().sum() > 0
