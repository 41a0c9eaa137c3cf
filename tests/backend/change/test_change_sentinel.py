"""Sentinel-2 / Sentinel-1 series: alignment, dates, cloud and no-data tests, clear errors."""
import datetime as dt

import numpy as np
import pytest
from rasterio.transform import from_origin

from backend.datasets.sentinel import day_of_year, parse_acquisition_date, read_sentinel_stack
from backend.errors import InputError
from backend.io.raster import Grid, make_grid

from .conftest import write_raster


def _grid():
    return make_grid("EPSG:32615", 10.0, (500000 - 20, 4100000 - 280, 500000 + 320, 4100000 + 20))


def test_three_dates_in_another_crs_are_aligned_sorted_and_the_cloudy_one_skipped(s2_scene):
    frames = list(reversed(s2_scene["s2"]))  # order must not matter
    stack = read_sentinel_stack(frames, "s2", _grid())
    assert stack.data.shape == (3, 10, _grid().height, _grid().width)
    assert [d.isoformat() for d in stack.dates] == ["2023-04-01", "2023-06-15", "2023-08-30"]
    assert stack.doy.tolist() == [91, 166, 242]
    assert stack.frame_valid.tolist() == [True, False, True]
    assert stack.skipped[0]["date"] == "2023-06-15" and "cloudy" in stack.skipped[0]["reason"]
    # valid frames carry the reflectance DNs the SkySense statistics expect
    assert 200 <= stack.data[0][:, stack.pixel_valid[0]].mean() <= 3000


def test_scl_band_marks_clouds(tmp_path):
    grid = _grid()
    data = np.full((11, grid.height, grid.width), 1500, np.uint16)
    data[10] = 4  # vegetation
    data[10, : grid.height * 3 // 4] = 9  # cloud high probability over 75 %
    path = write_raster(tmp_path / "s2_scl.tif", data, grid.crs, grid.transform)
    stack = read_sentinel_stack([{"path": path, "date": "2022-07-01"}], "s2", grid)
    assert not stack.frame_valid[0]
    assert stack.pixel_valid[0, -1].all() and not stack.pixel_valid[0, 0].any()


def test_mostly_nodata_frame_is_skipped(tmp_path):
    grid = _grid()
    data = np.zeros((10, grid.height, grid.width), np.uint16)
    data[:, :5] = 1000  # only a sliver has data
    path = write_raster(tmp_path / "s2_nodata.tif", data, grid.crs, grid.transform, nodata=0)
    stack = read_sentinel_stack([{"path": path, "date": "2022-07-01"}], "s2", grid)
    assert stack.frame_valid.tolist() == [False]
    assert "no-data" in stack.skipped[0]["reason"]


def test_wrong_band_count_is_a_clear_error(tmp_path):
    grid = _grid()
    path = write_raster(tmp_path / "rgb.tif", np.ones((3, grid.height, grid.width), np.uint16), grid.crs,
                        grid.transform)
    with pytest.raises(InputError, match="wrong band count.*3 band.*expected 10 or 11"):
        read_sentinel_stack([{"path": path, "date": "2022-07-01"}], "s2", grid)


def test_missing_or_bad_dates_are_clear_errors(s2_scene):
    frame = dict(s2_scene["s2"][0])
    frame.pop("date")
    with pytest.raises(InputError, match="no acquisition date"):
        read_sentinel_stack([frame], "s2", _grid())
    with pytest.raises(InputError, match="not a date"):
        read_sentinel_stack([dict(frame, date="spring 2023")], "s2", _grid())
    with pytest.raises(InputError, match="same date"):
        read_sentinel_stack([dict(frame, date="2023-01-01"), dict(frame, date="2023-01-01")], "s2", _grid())


def test_non_raster_and_non_overlapping_frames(tmp_path, s2_scene):
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(InputError, match="not a readable raster"):
        read_sentinel_stack([{"path": str(text), "date": "2023-01-01"}], "s2", _grid())
    far = make_grid("EPSG:32615", 10.0, (600000, 4200000, 600100, 4200100))
    with pytest.raises(InputError, match="does not overlap"):
        read_sentinel_stack(s2_scene["s2"][:1], "s2", far)


def test_s1_in_db_is_read_and_linear_is_rejected(tmp_path):
    grid = _grid()
    db = np.stack([np.full((grid.height, grid.width), -12.0), np.full((grid.height, grid.width), -19.0)])
    path = write_raster(tmp_path / "s1.tif", db.astype(np.float32), grid.crs, grid.transform)
    stack = read_sentinel_stack([{"path": path, "date": "2021-03-02"}], "s1", grid)
    assert stack.frame_valid.all() and np.allclose(stack.data[0, :, 5, 5], [-12, -19])
    linear = write_raster(tmp_path / "s1_lin.tif", (10 ** (db / 10)).astype(np.float32), grid.crs, grid.transform)
    with pytest.raises(InputError, match="linear backscatter"):
        read_sentinel_stack([{"path": linear, "date": "2021-03-02"}], "s1", grid)


def test_dates():
    assert parse_acquisition_date("2020-12-31T10:11:12Z", "x") == dt.date(2020, 12, 31)
    assert day_of_year(dt.date(2020, 12, 31)) == 366
    with pytest.raises(InputError):
        read_sentinel_stack([], "s3", Grid(None, from_origin(0, 0, 1, 1), 1, 1))
