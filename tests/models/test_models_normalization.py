"""Normalisation constants of SkySense."""
import pytest

from models.normalization import S1_BANDS, S2_BANDS, get_normalization


def test_band_orders_and_lengths():
    assert S2_BANDS == ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
    assert S1_BANDS == ("VV", "VH")
    for source, n in (("hr", 3), ("s2", 10), ("s1", 2)):
        stats = get_normalization(source)
        assert len(stats["mean"]) == len(stats["std"]) == n
        assert all(s > 0 for s in stats["std"])


def test_units_are_raster_units():
    assert get_normalization("hr")["mean"][0] == pytest.approx(0.485 * 255)
    assert 500 < get_normalization("s2")["mean"][0] < 3000          # L2A digital numbers
    assert all(m < 0 for m in get_normalization("s1")["mean"])      # backscatter in dB


def test_extra_hr_bands_and_errors():
    four = get_normalization("hr", num_bands=4)
    assert len(four["mean"]) == 4 and four["mean"][:3] == get_normalization("hr")["mean"]
    get_normalization("hr")["mean"].append(0)  # returned lists are copies
    assert len(get_normalization("hr")["mean"]) == 3
    with pytest.raises(ValueError, match="s2 expects 10 bands, got 4"):
        get_normalization("s2", num_bands=4)
    with pytest.raises(KeyError, match="unknown source"):
        get_normalization("landsat")
