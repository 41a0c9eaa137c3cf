"""Styles, polygons, previews, the strip writer and atomic outputs."""
import xml.etree.ElementTree as ET

import fiona
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from backend.errors import OutputError
from backend.io.atomic import AtomicOutputs
from backend.io.preview import write_preview
from backend.io.raster import Grid, parse_crs
from backend.io.style import raster_qml, vector_qml, write_qml
from backend.io.vector import SHAPEFILE_SIDECARS, polygonize
from backend.io.writer import StripWriter

CLASSES = [{"value": 1, "name": "background", "color": "#ffffff"},
           {"value": 2, "name": "building & roof", "color": "#ff0000"},
           {"value": 3, "name": "water", "color": "#0000ff"}]


def test_raster_qml_is_paletted_and_lists_every_class():
    root = ET.fromstring(raster_qml(CLASSES).split("\n", 1)[1])
    assert root.tag == "qgis"
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("label"), e.get("color"), e.get("alpha")) for e in entries] == [
        ("1", "background", "#ffffff", "255"), ("2", "building & roof", "#ff0000", "255"),
        ("3", "water", "#0000ff", "255")]


def test_vector_qml_is_categorized_on_class_id():
    root = ET.fromstring(vector_qml(CLASSES).split("\n", 1)[1])
    renderer = root.find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "class_id"
    cats = renderer.findall("categories/category")
    assert [(c.get("value"), c.get("label")) for c in cats] == [("1", "background"), ("2", "building & roof"),
                                                                ("3", "water")]
    symbols = {s.get("name"): s for s in renderer.findall("symbols/symbol")}
    colour = {p.get("k"): p.get("v") for p in symbols["1"].findall("layer/prop")}["color"]
    assert colour.startswith("255,0,0,")


def _class_raster(path, data, crs="EPSG:32633", res=2.0):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype="uint8", crs=crs, transform=from_origin(500000.0 if crs == "EPSG:32633" else -94.5,
                                                                      4000000.0 if crs == "EPSG:32633" else 37.07,
                                                                      res, res), nodata=0) as ds:
        ds.write(data, 1)
    return path


@pytest.mark.parametrize("driver,suffix", [("GPKG", ".gpkg"), ("ESRI Shapefile", ".shp")])
def test_polygonize_fields_crs_area_and_min_area(tmp_path, driver, suffix):
    data = np.ones((60, 80), np.uint8)
    data[10:30, 10:30] = 2          # 400 px * 4 m² = 1600 m²
    data[40:42, 50:52] = 3          # 4 px = 16 m²: dropped by min_area=50
    data[50:60, 0:10] = 0           # nodata: never a polygon
    src = _class_raster(tmp_path / "c.tif", data)
    out = tmp_path / f"poly{suffix}"
    stats = polygonize(src, out, CLASSES, layer="poly", driver=driver, min_area=50.0)
    assert stats == {"features": 2, "dropped": 1}
    with fiona.open(out) as layer:
        assert layer.crs.to_epsg() == 32633
        assert set(layer.schema["properties"]) == {"class_id", "class_name", "area_m2"}
        feats = {f["properties"]["class_id"]: f["properties"] for f in layer}
    assert set(feats) == {1, 2}
    assert feats[2]["class_name"] == "building & roof" and feats[2]["area_m2"] == pytest.approx(1600.0)
    assert feats[1]["area_m2"] == pytest.approx((60 * 80 - 400 - 4 - 100) * 4.0)


def test_polygonize_geographic_areas_are_in_square_metres(tmp_path):
    data = np.full((100, 100), 2, np.uint8)
    src = _class_raster(tmp_path / "g.tif", data, crs="EPSG:4326", res=1e-4)
    polygonize(src, tmp_path / "g.gpkg", CLASSES, layer="g")
    with fiona.open(tmp_path / "g.gpkg") as layer:
        (feat,) = list(layer)
    # 0.01° x 0.01° at 37° N ≈ 1113 m x 889 m
    assert feat["properties"]["area_m2"] == pytest.approx(1113.2 * 888.9, rel=0.01)


def test_polygonize_simplify_reduces_vertices(tmp_path):
    yy, xx = np.mgrid[0:200, 0:200]
    data = np.where((yy - 100) ** 2 + (xx - 100) ** 2 < 70 ** 2, 2, 1).astype(np.uint8)
    src = _class_raster(tmp_path / "d.tif", data)

    def vertices(path):
        with fiona.open(path) as layer:
            return sum(len(f["geometry"]["coordinates"][0]) for f in layer if f["properties"]["class_id"] == 2)

    polygonize(src, tmp_path / "raw.gpkg", CLASSES, layer="raw")
    polygonize(src, tmp_path / "simple.gpkg", CLASSES, layer="simple", simplify=4.0)
    assert vertices(tmp_path / "simple.gpkg") < vertices(tmp_path / "raw.gpkg") / 3


def test_polygonize_by_windows_keeps_all_area(tmp_path):
    data = np.ones((300, 300), np.uint8)
    data[::7, :] = 2
    src = _class_raster(tmp_path / "w.tif", data)
    polygonize(src, tmp_path / "w.gpkg", CLASSES, layer="w", window=128)
    with fiona.open(tmp_path / "w.gpkg") as layer:
        total = sum(f["properties"]["area_m2"] for f in layer)
    assert total == pytest.approx(300 * 300 * 4.0)


def test_preview_png_is_downsampled_colourised_and_transparent_on_nodata(tmp_path):
    data = np.full((3000, 1500), 2, np.uint8)
    data[:, :750] = 0
    src = _class_raster(tmp_path / "p.tif", data)
    png = write_preview(src, tmp_path / "p.png", CLASSES, max_size=600)
    with Image.open(png) as handle:
        assert handle.mode == "P" and "transparency" in handle.info  # paletted: small and quick to write
        img = np.asarray(handle.convert("RGBA"))
    assert img.shape == (600, 300, 4)
    assert tuple(img[10, 10]) == (0, 0, 0, 0) and tuple(img[10, 290]) == (255, 0, 0, 255)


def test_strip_writer_reassembles_uneven_strips(tmp_path):
    grid = Grid(parse_crs("EPSG:32633"), from_origin(0, 0, 1, 1), 700, 1300)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 9, (1300, 700), dtype=np.uint8)
    writer = StripWriter(tmp_path / "s.tif", grid, nodata=0, colormap={1: (255, 0, 0, 255)})
    row = 0
    for h in (448, 448, 1, 300, 103):
        writer.write(data[row:row + h])
        row += h
    writer.close()
    with rasterio.open(tmp_path / "s.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), data)
        assert ds.profile["blockxsize"] == 512 and ds.profile["compress"] == "deflate"
        assert ds.colormap(1)[1] == (255, 0, 0, 255)
        assert ds.overviews(1)  # > 1024 px: overviews for fast display


def test_strip_writer_column_panels_write_each_block_once(tmp_path):
    """Panels (left to right, each top to bottom) give the same raster as one pass, and the same file
    size: with a block cache too small to hold a block until the next panel completes it, a block
    written twice (panels not on block boundaries) is appended to the file again (+40 % here)."""
    grid = Grid(parse_crs("EPSG:32633"), from_origin(0, 0, 1, 1), 1300, 1100)
    data = np.random.default_rng(1).integers(0, 9, (1100, 1300), dtype=np.uint8)

    def write(name, bounds):
        with rasterio.Env(GDAL_CACHEMAX=1):
            writer = StripWriter(tmp_path / name, grid, nodata=0, overviews=False)
            for start, stop in bounds:
                for row, h in ((0, 448), (448, 1), (449, 448), (897, 203)):
                    writer.write(data[row:row + h, start:stop], col_off=start)
            writer.close()
        with rasterio.open(tmp_path / name) as ds:
            np.testing.assert_array_equal(ds.read(1), data)
        return (tmp_path / name).stat().st_size

    one_pass = write("one.tif", [(0, 1300)])
    assert write("panels.tif", [(0, 512), (512, 1024), (1024, 1300)]) == one_pass
    assert write("unaligned.tif", [(0, 500), (500, 1300)]) > one_pass  # the test can see a rewrite


def test_strip_writer_refuses_panels_out_of_order_or_unfinished(tmp_path):
    grid = Grid(parse_crs("EPSG:32633"), from_origin(0, 0, 1, 1), 1024, 100)
    rows = np.ones((100, 512), np.uint8)
    writer = StripWriter(tmp_path / "a.tif", grid, nodata=0)
    with pytest.raises(ValueError, match="does not continue at column 0"):
        writer.write(rows, col_off=512)
    writer.write(rows[:50], col_off=0)
    with pytest.raises(ValueError, match="left unfinished"):
        writer.write(rows, col_off=512)
    writer.discard()
    writer = StripWriter(tmp_path / "b.tif", grid, nodata=0)
    writer.write(rows, col_off=0)
    with pytest.raises(OutputError, match="512 of 1024 columns"):
        writer.close()
    writer.discard()


def test_atomic_outputs_commit_and_abort(tmp_path):
    good = tmp_path / "out.qml"
    good.write_text("previous good result")
    with pytest.raises(RuntimeError):
        with AtomicOutputs(tmp_path) as outs:
            write_qml(outs.path_for(good), "half written")
            raise RuntimeError("job failed")
    assert good.read_text() == "previous good result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.qml"]
    with AtomicOutputs(tmp_path) as outs:
        write_qml(outs.path_for(good), "<qgis/>")
    assert good.read_text() == "<qgis/>" and sorted(p.name for p in tmp_path.iterdir()) == ["out.qml"]


def test_atomic_shapefile_moves_sidecars(tmp_path):
    data = np.ones((20, 20), np.uint8)
    src = _class_raster(tmp_path / "c.tif", data)
    out_dir = tmp_path / "out"
    with AtomicOutputs(out_dir) as outs:
        shp = out_dir / "lc.shp"
        polygonize(src, outs.path_for(shp), CLASSES, layer="lc", driver="ESRI Shapefile")
        outs.sidecars(shp, SHAPEFILE_SIDECARS)
    assert {p.suffix for p in out_dir.iterdir()} >= {".shp", ".shx", ".dbf", ".prj"}


def test_unwritable_output_folder_is_an_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create the output folder"):
        AtomicOutputs(blocker / "sub")
