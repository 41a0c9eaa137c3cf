import fiona
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping

from backend.datasets.polygons import build_polygon_dataset, split_polygons
from backend.datasets.scene import IGNORE_INDEX

from .conftest import write_raster


def _write_layer(path, features, crs, field="class", field_type="str", driver="GPKG"):
    schema = {"geometry": "Polygon", "properties": {field: field_type}}
    with fiona.open(path, "w", driver=driver, schema=schema, crs=crs) as sink:
        for geometry, value in features:
            sink.write(fiona.Feature.from_dict(geometry=geometry, properties={field: value}))
    return path


def _square(col0, row0, col1, row1, origin=(500000.0, 3400000.0), pixel=1.0):
    """Map-coordinate square covering pixel columns col0..col1-1 and rows row0..row1-1."""
    x0, y0 = origin
    return box(x0 + col0 * pixel, y0 - row1 * pixel, x0 + col1 * pixel, y0 - row0 * pixel)


def _scene_labels_at(dataset, split):
    return [(s.transform, s.labels) for s in getattr(dataset, split)]


def test_polygons_in_another_crs_land_on_the_right_pixels(tmp_path):
    raster = write_raster(tmp_path / "r.tif", np.full((3, 300, 300), 100, np.uint8))
    squares = {"water": [(20, 30, 60, 70), (200, 210, 240, 250)], "field": [(100, 40, 150, 90), (40, 200, 90, 260)]}
    features = []
    for name, boxes in squares.items():
        for b in boxes:
            # digitised in lon/lat: the loader must bring them back to UTM 50N
            features.append((transform_geom("EPSG:32650", "EPSG:4326", mapping(_square(*b))), name))
    layer = _write_layer(tmp_path / "labels.gpkg", features, "EPSG:4326")
    dataset = build_polygon_dataset(raster, layer, "class", chip_size=64, val_fraction=0.25)
    names = [c["name"] for c in dataset.classes]
    assert names == ["field", "water"]
    # Paint everything (train + val) back into full-raster coordinates.
    full = np.full((300, 300), IGNORE_INDEX, np.int16)
    with rasterio.open(raster) as src:
        for scene in dataset.train + dataset.val:
            row_off = round((src.transform.f - scene.transform.f) / 1.0)
            col_off = round((scene.transform.c - src.transform.c) / 1.0)
            h, w = scene.labels.shape
            region = full[row_off:row_off + h, col_off:col_off + w]
            region[scene.labels != IGNORE_INDEX] = scene.labels[scene.labels != IGNORE_INDEX]
    for name, boxes in squares.items():
        for col0, row0, col1, row1 in boxes:
            inner = full[row0 + 1:row1 - 1, col0 + 1:col1 - 1]
            assert (inner == names.index(name)).all(), name
            # nothing bleeds more than one pixel outside the square
            assert full[row0 - 2, col0:col1].tolist() == [IGNORE_INDEX] * (col1 - col0)
            assert full[row0:row1, col1 + 1].tolist() == [IGNORE_INDEX] * (row1 - row0)
    assert (full != IGNORE_INDEX).sum() == pytest.approx(sum((b[2] - b[0]) * (b[3] - b[1])
                                                             for v in squares.values() for b in v), rel=0.02)


def test_real_loveda_polygons_in_wgs84_match_the_mask(loveda_tifs, loveda_label_layer):
    image_tif, mask_tif = loveda_tifs["1"]
    dataset = build_polygon_dataset(image_tif, loveda_label_layer, "class", chip_size=128)
    names = [c["name"] for c in dataset.classes]
    # Colours from the base palette when given; here none was, so they are generated and distinct.
    assert len({c["color"] for c in dataset.classes}) == len(names)
    from backend.datasets.loveda import loveda_palette
    code_of = {c["name"]: c["value"] for c in loveda_palette()["classes"]}
    with rasterio.open(mask_tif) as src:
        mask = src.read(1)
        checked = agree = 0
        for scene in dataset.train + dataset.val:
            row_off = round((src.transform.f - scene.transform.f) / 0.3)
            col_off = round((scene.transform.c - src.transform.c) / 0.3)
            h, w = scene.labels.shape
            truth = mask[row_off:row_off + h, col_off:col_off + w]
            labelled = scene.labels != IGNORE_INDEX
            expected = np.array([code_of[n] for n in names])[scene.labels[labelled]]
            checked += labelled.sum()
            agree += (truth[labelled] == expected).sum()
    assert checked > 20_000
    assert agree / checked > 0.99


def test_whole_polygon_holdout(loveda_tifs, loveda_label_layer):
    image_tif, _ = loveda_tifs["1"]
    dataset = build_polygon_dataset(image_tif, loveda_label_layer, "class", chip_size=128, seed=3)
    assert dataset.val_polygons and dataset.train_polygons
    assert not set(dataset.val_polygons) & set(dataset.train_polygons)
    with fiona.open(loveda_label_layer) as source, rasterio.open(image_tif) as raster:
        geometries = [transform_geom(source.crs_wkt, raster.crs, f.geometry) for f in source]
    for number, geometry in enumerate(geometries, start=1):
        in_train = in_val = 0
        for split, scenes in (("train", dataset.train), ("val", dataset.val)):
            for scene in scenes:
                footprint = rasterize([(geometry, 1)], out_shape=scene.labels.shape, transform=scene.transform,
                                      fill=0, dtype="uint8").astype(bool)
                count = int((scene.labels[footprint] != IGNORE_INDEX).sum())
                if split == "train":
                    in_train += count
                else:
                    in_val += count
        assert in_train == 0 or in_val == 0, f"polygon {number} split across train and val"
        assert (in_val > 0) == (number in dataset.val_polygons)


def test_split_keeps_a_training_polygon_per_class():
    classes = np.array([0, 0, 0, 0, 1, 1, 2])
    areas = np.array([10, 10, 10, 10, 5, 50, 7.0])
    train, val = split_polygons(classes, areas, 0.25, seed=0)
    assert sorted(train + val) == list(range(7))
    for c in range(3):
        assert any(classes[i] == c for i in train)
    assert 6 in train                          # single polygon of class 2 stays in training
    assert sum(1 for i in val if classes[i] == 0) == 1


def test_integer_class_codes_keep_their_values_and_palette(tmp_path):
    raster = write_raster(tmp_path / "r.tif", np.full((3, 200, 200), 50, np.uint8))
    features = [(mapping(_square(10, 10, 40, 40)), 4), (mapping(_square(60, 10, 90, 40)), 4),
                (mapping(_square(10, 100, 40, 130)), 6), (mapping(_square(60, 100, 90, 130)), 6)]
    layer = _write_layer(tmp_path / "codes.shp", features, "EPSG:32650", field_type="int", driver="ESRI Shapefile")
    from backend.datasets.loveda import loveda_palette
    dataset = build_polygon_dataset(raster, layer, "class", chip_size=64, palette_classes=loveda_palette()["classes"])
    assert dataset.classes == [{"value": 4, "name": "water", "color": "#0000ff"},
                               {"value": 6, "name": "forest", "color": "#00ff00"}]
