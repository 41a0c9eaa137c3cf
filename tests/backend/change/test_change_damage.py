"""Building damage assessment: the documented rule, and real Joplin imagery in two CRSs."""
import fiona
import numpy as np
import pytest
import rasterio
import shapely.geometry
import torch
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from backend.errors import InputError
from backend.io.raster import Grid
from backend.pipelines.damage import (DAMAGE_THRESHOLDS, building_change_stats, classify_damage, damage_classes,
                                      damage_score, run_damage)

from .test_change_pipeline import JOPLIN_AOI


def test_thresholds_map_scores_to_the_four_xbd_classes():
    scores = np.array([0.0, 0.099, 0.1, 0.29, 0.3, 0.54, 0.55, 1.0])
    assert classify_damage(scores).tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [c["name"] for c in damage_classes()] == ["no damage", "minor damage", "major damage", "destroyed"]
    assert DAMAGE_THRESHOLDS == (0.10, 0.30, 0.55)
    # the ring only counts when it has valid pixels
    assert damage_score(np.array([0.4]), np.array([np.nan]))[0] == pytest.approx(0.4)
    assert damage_score(np.array([0.4]), np.array([0.0]))[0] == pytest.approx(0.3)


def test_per_building_statistics_on_a_synthetic_probability_map():
    grid = Grid(rasterio.crs.CRS.from_epsg(32615), from_origin(0, 100, 1, 1), 100, 100)
    prob = np.full((100, 100), 0.1, np.float32)
    prob[10:30, 10:30] = 0.9            # a destroyed building and its surroundings
    valid = np.ones_like(prob, bool)
    valid[:, 90:] = False                # post image ends at x = 90
    destroyed = shapely.geometry.box(12, 72, 28, 88)
    intact = shapely.geometry.box(50, 50, 60, 60)
    cut = shapely.geometry.box(85, 10, 99, 20)  # mostly outside the post coverage
    stats = building_change_stats(prob, valid, grid, [destroyed, intact, cut], ring_m=2)
    assert stats.footprint_fraction[0] == 1.0 and stats.footprint_fraction[1] == 0.0
    assert stats.certainty[0] == pytest.approx(0.9) and stats.certainty[1] == pytest.approx(0.9)
    assert stats.coverage[0] == pytest.approx(1.0) and stats.coverage[2] < 0.5
    score = damage_score(stats.footprint_fraction, stats.ring_fraction)
    assert classify_damage(score[:2]).tolist() == [4, 1]


def _expected_footprints(data_dir, aoi_geom):
    """Footprint ids fully inside the AOI and both image mosaics (computed independently in EPSG:4326)."""
    def mosaic_box(folder):
        boxes = []
        for path in sorted((data_dir / "joplin" / folder).glob("*.tif")):
            with rasterio.open(path) as src:
                boxes.append(shapely.geometry.box(*transform_bounds(src.crs, "EPSG:4326", *src.bounds)))
        return shapely.union_all(boxes)

    area = mosaic_box("pre").intersection(mosaic_box("post")).intersection(shapely.geometry.shape(aoi_geom))
    area = area.buffer(-2e-5)  # stay clear of edge pixels
    with fiona.open(data_dir / "joplin" / "buildings.geojson") as layer:
        return {str(f.id) for f in layer if area.contains(shapely.geometry.shape(f.geometry))}


def test_joplin_mosaics_with_footprints(data_dir, tmp_path):
    from backend.datasets.joplin import joplin_sample

    sample = joplin_sample(data_dir)
    assert len(sample.pre) == 4 and len(sample.post) == 6
    result = run_damage({"pre": sample.pre, "post": sample.post, "buildings": sample.buildings, "aoi": JOPLIN_AOI,
                         "output_dir": str(tmp_path), "name": "joplin_damage"})
    vector = next(o for o in result["outputs"] if o["role"] == "buildings")
    raster = next(o for o in result["outputs"] if o["role"] == "damage")
    with fiona.open(vector["path"]) as layer:
        assert rasterio.crs.CRS.from_wkt(layer.crs_wkt).to_epsg() == 26915  # the pre image's CRS
        records = [dict(f.properties) for f in layer]
    expected = _expected_footprints(data_dir, JOPLIN_AOI["geometry"])
    assert len(expected) >= 10
    assessed = {r["source_id"] for r in records}
    assert expected <= assessed, f"footprints inside the overlap without a class: {sorted(expected - assessed)}"
    for r in records:
        assert r["damage"] in (1, 2, 3, 4) and r["damage_class"] == damage_classes()[r["damage"] - 1]["name"]
        assert 0.5 <= r["confidence"] <= 1.0 and r["coverage"] >= 0.5
    assert result["metrics"]["buildings_assessed"] == len(records)
    assert sum(result["metrics"]["damage_counts"].values()) == len(records)
    with rasterio.open(raster["path"]) as src:
        assert src.crs.to_epsg() == 26915
        # how the change engine ran: the AOI's pixels, its time and precision (shown by the plugin)
        assert result["metrics"]["megapixels"] == pytest.approx(src.width * src.height / 1e6, abs=1e-4)
        values = src.read(1)
    assert set(np.unique(values)) <= {0, 1, 2, 3, 4} and (values > 0).any()
    assert result["metrics"]["seconds"] > 0
    # "auto": fp16 autocast on a CUDA GPU; on a CPU fp32, or bf16 where the CPU does it in hardware
    expected = ("fp16 mixed",) if torch.cuda.is_available() else ("fp32", "bf16 mixed")
    assert result["metrics"]["precision"].split(",")[0] in expected
    assert 'attr="damage"' in open(vector["qml"]).read()


def test_buildings_localised_with_the_landcover_model_when_no_footprints(data_dir, tmp_path, building_model_file):
    joplin = data_dir / "joplin"
    result = run_damage({"pre": str(joplin / "pre" / "tile_337-9136.tif"),
                         "post": str(joplin / "post" / "tile_31500-5137.tif"), "aoi": JOPLIN_AOI,
                         "landcover_model": str(building_model_file), "output_dir": str(tmp_path)})
    assert result["metrics"]["buildings_source"] == "landcover model"
    assert result["metrics"]["buildings_assessed"] >= 1
    with fiona.open(next(o for o in result["outputs"] if o["role"] == "buildings")["path"]) as layer:
        assert all(f.properties["damage"] in (1, 2, 3, 4) for f in layer)


def test_bad_footprints_are_clear_errors(data_dir, tmp_path):
    joplin = data_dir / "joplin"
    params = {"pre": str(joplin / "pre" / "tile_337-9136.tif"), "post": str(joplin / "post" / "tile_31500-5137.tif"),
              "aoi": JOPLIN_AOI, "output_dir": str(tmp_path / "out")}
    with pytest.raises(InputError, match="building footprints not found"):
        run_damage(dict(params, buildings=str(tmp_path / "missing.gpkg")))
    junk = tmp_path / "junk.geojson"
    junk.write_text("{not json")
    with pytest.raises(InputError, match="not a readable vector"):
        run_damage(dict(params, buildings=str(junk)))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_damage_model_file_replaces_the_rule(data_dir, tmp_path):
    import torch
    from models.checkpoint import save_model_file
    from models.normalization import get_normalization
    from models.registry import create_model

    torch.manual_seed(0)
    model = create_model("skysense_damage_tiny")
    with torch.no_grad():  # "building" everywhere, graded 'major damage': every footprint gets class 3
        model.decode_head.localization.conv_seg.bias.fill_(6.0)
        model.decode_head.classification.conv_seg.bias.copy_(torch.tensor([0.0, 0.0, 6.0, 0.0]))
    path = tmp_path / "damage_model.pth"
    save_model_file(path, model, {"task": "damage", "classes": damage_classes(), "bands": {"hr": [1, 2, 3]},
                                  "normalization": {"hr": get_normalization("hr")}, "tile_size": 256})
    joplin = data_dir / "joplin"
    result = run_damage({"pre": str(joplin / "pre" / "tile_337-9136.tif"),
                         "post": str(joplin / "post" / "tile_31500-5137.tif"), "aoi": JOPLIN_AOI,
                         "buildings": str(joplin / "buildings.geojson"), "model": str(path),
                         "output_dir": str(tmp_path / "out")})
    assert result["metrics"]["method"] == "damage model"
    assert result["metrics"]["buildings_assessed"] >= 5
    with fiona.open(next(o for o in result["outputs"] if o["role"] == "buildings")["path"]) as layer:
        records = [f.properties for f in layer]
    assert records and all(r["damage"] == 3 and 0.5 < r["confidence"] <= 1 for r in records)
