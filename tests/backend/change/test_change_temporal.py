"""HR + Sentinel-2 fusion land cover (synthetic stacks: no real Sentinel data exists here)."""
import numpy as np
import pytest
import rasterio

from backend.errors import InputError
from backend.pipelines.temporal import run_temporal_landcover


def _params(scene, model_file, out, **extra):
    params = {"hr": [{"path": scene["hr"]}], "s2": scene["s2"], "model": str(model_file), "output_dir": str(out),
              "tile_size": 256, "overlap": 32}
    params.update(extra)
    return params


def _classes(path):
    with rasterio.open(path) as src:
        return src.read(1), src.crs, src.transform


def test_fusion_runs_on_the_hr_grid_and_reports_the_cloudy_frame(s2_scene, temporal_model_file, tmp_path):
    result = run_temporal_landcover(_params(s2_scene, temporal_model_file, tmp_path / "out"))
    tif = next(o["path"] for o in result["outputs"] if o["role"] == "classes")
    classes, crs, transform = _classes(tif)
    with rasterio.open(s2_scene["hr"]) as hr:
        assert crs == hr.crs and transform == hr.transform and classes.shape == (hr.height, hr.width)
    assert set(np.unique(classes)) <= set(range(1, 8))
    series = result["metrics"]["series"]["s2"]
    assert series["frames"] == 3 and series["used"] == 2
    assert [s["date"] for s in series["skipped"]] == ["2023-06-15"]
    assert any(o["kind"] == "vector" for o in result["outputs"])


def test_skipped_frame_content_is_ignored_but_valid_frames_matter(s2_scene, temporal_model_file, tmp_path):
    base, _, _ = _classes(run_temporal_landcover(_params(s2_scene, temporal_model_file, tmp_path / "a"))
                          ["outputs"][0]["path"])
    # Another cloud pattern in the skipped frame: identical output.
    with rasterio.open(s2_scene["s2"][1]["path"], "r+") as dst:
        data = dst.read()
        data[:, ::2] = 9000
        dst.write(data)
    same, _, _ = _classes(run_temporal_landcover(_params(s2_scene, temporal_model_file, tmp_path / "b"))
                          ["outputs"][0]["path"])
    assert np.array_equal(base, same)
    # Different content in a valid frame: the fused prediction moves.
    with rasterio.open(s2_scene["s2"][0]["path"], "r+") as dst:
        dst.write((dst.read() // 4 + 100).astype("uint16"))
    moved, _, _ = _classes(run_temporal_landcover(_params(s2_scene, temporal_model_file, tmp_path / "c"))
                           ["outputs"][0]["path"])
    assert not np.array_equal(base, moved)


def test_clear_errors(s2_scene, temporal_model_file, landcover_model_file, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="need a temporal model"):
        run_temporal_landcover(_params(s2_scene, temporal_model_file, out, model=None))
    with pytest.raises(InputError, match="'temporal'"):
        run_temporal_landcover(_params(s2_scene, landcover_model_file, out))
    with pytest.raises(InputError, match="every S2 frame was skipped"):
        run_temporal_landcover(_params(s2_scene, temporal_model_file, out, s2=[s2_scene["s2"][1]]))
    missing_date = [dict(f) for f in s2_scene["s2"]]
    missing_date[2].pop("date")
    with pytest.raises(InputError, match="no acquisition date"):
        run_temporal_landcover(_params(s2_scene, temporal_model_file, out, s2=missing_date))
    assert not out.exists() or not list(out.iterdir())  # failed runs leave nothing behind


def test_land_cover_pipeline_hands_series_to_the_temporal_pipeline(s2_scene, temporal_model_file, tmp_path):
    from backend.pipelines.landcover import run_landcover

    result = run_landcover(_params(s2_scene, temporal_model_file, tmp_path / "lc"))
    assert result["metrics"]["series"]["s2"]["used"] == 2
    with pytest.raises(InputError, match="high-resolution maps only"):
        run_landcover(_params(s2_scene, temporal_model_file, tmp_path / "tta", tta=True))
    assert not (tmp_path / "tta").exists()


def test_sentinel1_series_with_aoi(s2_scene, temporal_model_file, tmp_path):
    from rasterio.transform import from_origin

    from .conftest import write_raster

    rng = np.random.default_rng(3)
    frames = []
    for k, date in enumerate(["2023-02-01", "2023-03-01"]):
        db = np.stack([rng.normal(-12, 2, (40, 40)), rng.normal(-19, 2, (40, 40))]).astype(np.float32)
        frames.append({"path": write_raster(tmp_path / f"s1_{k}.tif", db, "EPSG:32615",
                                            from_origin(499900, 4100100, 12.0, 12.0)), "date": date})
    aoi = {"geometry": {"type": "Polygon", "coordinates": [[[500010, 4099990], [500150, 4099990], [500150, 4099850],
                                                            [500010, 4099850], [500010, 4099990]]]},
           "crs": "EPSG:32615"}
    result = run_temporal_landcover(_params(s2_scene, temporal_model_file, tmp_path / "out", s2=[], s1=frames,
                                            aoi=aoi, vectorize=False))
    classes, crs, transform = _classes(result["outputs"][0]["path"])
    assert classes.shape == (140, 140) and crs.to_epsg() == 32615
    assert result["metrics"]["series"]["s1"]["used"] == 2 and "s2" not in result["metrics"]["series"]
