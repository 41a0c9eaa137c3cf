"""Every way user labels can be unusable ends in an InputError that says what is wrong."""
import fiona
import numpy as np
import pytest
from shapely.geometry import box, mapping

from backend.datasets.polygons import build_polygon_dataset
from backend.errors import InputError

from .conftest import write_raster

ORIGIN = (500000.0, 3400000.0)


def _square(col0, row0, col1, row1):
    x0, y0 = ORIGIN
    return mapping(box(x0 + col0, y0 - row1, x0 + col1, y0 - row0))


def _layer(path, features, field="landuse", crs="EPSG:32650"):
    schema = {"geometry": "Polygon", "properties": {field: "str", "notes": "str"}}
    with fiona.open(path, "w", driver="GPKG", schema=schema, crs=crs) as sink:
        for geometry, value in features:
            sink.write(fiona.Feature.from_dict(geometry=geometry, properties={field: value, "notes": ""}))
    return path


@pytest.fixture
def raster(tmp_path):
    return write_raster(tmp_path / "r.tif", np.full((3, 200, 200), 80, np.uint8), origin=ORIGIN)


def _two_classes():
    return [(_square(10, 10, 50, 50), "water"), (_square(60, 10, 100, 50), "water"),
            (_square(10, 100, 50, 140), "crop"), (_square(60, 100, 100, 140), "crop")]


def test_empty_layer(tmp_path, raster):
    layer = _layer(tmp_path / "empty.gpkg", [])
    with pytest.raises(InputError, match="is empty"):
        build_polygon_dataset(raster, layer, "landuse", chip_size=64)


def test_missing_class_field_names_the_available_fields(tmp_path, raster):
    layer = _layer(tmp_path / "l.gpkg", _two_classes())
    with pytest.raises(InputError, match=r"'class' not found.*available fields: landuse, notes"):
        build_polygon_dataset(raster, layer, "class", chip_size=64)


def test_class_field_name_is_matched_case_insensitively(tmp_path, raster):
    layer = _layer(tmp_path / "l.gpkg", _two_classes())
    dataset = build_polygon_dataset(raster, layer, "LANDUSE", chip_size=64)
    assert [c["name"] for c in dataset.classes] == ["crop", "water"]


def test_polygons_outside_the_raster(tmp_path, raster):
    far = [(mapping(box(600000 + i * 100, 3000000, 600050 + i * 100, 3000050)), c)
           for i, c in enumerate(["a", "b", "a", "b"])]
    layer = _layer(tmp_path / "far.gpkg", far)
    with pytest.raises(InputError, match="none of the 4 polygons .* overlaps the raster"):
        build_polygon_dataset(raster, layer, "landuse", chip_size=64)


def test_single_class(tmp_path, raster):
    layer = _layer(tmp_path / "one.gpkg", [(g, "water") for g, _ in _two_classes()])
    with pytest.raises(InputError, match="same class .*'water'.* at least two classes"):
        build_polygon_dataset(raster, layer, "landuse", chip_size=64)


def test_too_few_pixels(tmp_path, raster):
    tiny = [(_square(10, 10, 12, 12), "water"), (_square(20, 10, 22, 12), "water"),
            (_square(10, 100, 12, 102), "crop"), (_square(20, 100, 22, 102), "crop")]
    layer = _layer(tmp_path / "tiny.gpkg", tiny)
    with pytest.raises(InputError, match="cover only .* training pixels"):
        build_polygon_dataset(raster, layer, "landuse", chip_size=64)


def test_a_class_with_too_few_pixels_is_named(tmp_path, raster):
    features = _two_classes() + [(_square(150, 150, 152, 152), "road"), (_square(160, 150, 162, 152), "road")]
    layer = _layer(tmp_path / "road.gpkg", features)
    with pytest.raises(InputError, match=r"too few training pixels for class\(es\) road"):
        build_polygon_dataset(raster, layer, "landuse", chip_size=64)


def test_every_class_with_a_single_polygon_leaves_nothing_to_validate(tmp_path, raster):
    layer = _layer(tmp_path / "single.gpkg", [(_square(10, 10, 50, 50), "water"), (_square(10, 100, 50, 140), "crop")])
    with pytest.raises(InputError, match="single polygon"):
        build_polygon_dataset(raster, layer, "landuse", chip_size=64)


def test_missing_and_unreadable_files(tmp_path, raster):
    with pytest.raises(InputError, match="does not exist"):
        build_polygon_dataset(raster, tmp_path / "nope.gpkg", "landuse")
    junk = tmp_path / "junk.gpkg"
    junk.write_text("not a geopackage")
    with pytest.raises(InputError, match="cannot read label layer"):
        build_polygon_dataset(raster, junk, "landuse")


def test_raster_without_crs(tmp_path):
    import rasterio
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 100, 100), np.uint8))
    layer = _layer(tmp_path / "l.gpkg", _two_classes())
    with pytest.raises(InputError, match="has no CRS"):
        build_polygon_dataset(path, layer, "landuse")


def test_sixteen_bit_raster_gets_a_normalisation_note(tmp_path, small_base_model):
    from backend.trainers.finetune import finetune_on_polygons

    raster = write_raster(tmp_path / "r16.tif", (np.random.default_rng(0).random((3, 200, 200)) * 4000)
                          .astype(np.uint16), origin=ORIGIN)
    layer = _layer(tmp_path / "l.gpkg", _two_classes())
    result = finetune_on_polygons(raster, layer, "landuse", tmp_path / "out", base_model=small_base_model,
                                  epochs=1, chip_size=64, chips_per_epoch=2, batch_size=2, rf_trees=5)
    assert any("uint16" in note and "8-bit" in note for note in result["notes"])
