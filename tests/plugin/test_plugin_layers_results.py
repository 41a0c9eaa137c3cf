"""Layer checks, result styling and vector export in real QGIS (no backend needed)."""
import datetime as dt
import json
from pathlib import Path

import pytest
from osgeo import gdal
from qgis.core import (QgsCoordinateReferenceSystem, QgsFeature, QgsGeometry, QgsPointXY,
                       QgsProject, QgsRasterLayer, QgsVectorLayer)

from skysense_qgis import job_params
from skysense_qgis.layer_sources import LayerSourceError, crs_string, guess_date, raster_path, vector_source
from skysense_qgis.result_layers import add_result_layers
from skysense_qgis.vector_export import ExportError, export_vector_layer


ROOT = Path(__file__).resolve().parents[2]
DAMAGE = json.loads((ROOT / "resources" / "palettes" / "damage.json").read_text())["classes"]
LOVEDA_CLASSES = json.loads((ROOT / "resources" / "palettes" / "loveda.json").read_text())["classes"]


@pytest.mark.parametrize("name, expected", [
    ("S2A_MSIL2A_20230514T101031_N0509", dt.date(2023, 5, 14)),
    ("s1_2021-11-03_vv_vh", dt.date(2021, 11, 3)),
    ("sentinel2_2020_07_31.tif", dt.date(2020, 7, 31)),
    ("tile_337-10160", None),
    ("20231345_bad_month", None),
])
def test_acquisition_dates_are_guessed_from_names(name, expected):
    assert guess_date(name) == expected


def test_crs_is_an_authority_or_wkt_never_assumed():
    assert crs_string(QgsCoordinateReferenceSystem("EPSG:26915")) == "EPSG:26915"
    custom = QgsCoordinateReferenceSystem.fromProj("+proj=tmerc +lat_0=0 +lon_0=13.5 +k=0.9996 +x_0=500000 "
                                                   "+y_0=0 +ellps=GRS80 +units=m +no_defs")
    text = crs_string(custom)
    assert "TRANSVERSE" in text.upper() or "tmerc" in text.lower()
    assert crs_string(QgsCoordinateReferenceSystem()) == ""


def test_file_raster_is_accepted_with_its_path(joplin_crop):
    layer = QgsRasterLayer(str(joplin_crop), "pre")
    assert raster_path(layer) == str(joplin_crop)
    assert layer.crs().authid() == "EPSG:26915"


def test_non_file_layers_are_refused_with_a_clear_message(qgis_new_project):
    wms = QgsRasterLayer("crs=EPSG:3857&format=image/png&layers=osm&styles=&url=http://127.0.0.1:9/wms",
                         "basemap", "wms")
    with pytest.raises(LayerSourceError, match="'basemap' is a wms layer, not a raster file"):
        raster_path(wms)
    memory = QgsVectorLayer("Polygon?crs=EPSG:32633&field=cls:string", "drawn labels", "memory")
    with pytest.raises(LayerSourceError, match="memory layer, not a vector file"):
        vector_source(memory)
    with pytest.raises(LayerSourceError, match="not a raster layer"):
        raster_path(memory)


def _labels_layer():
    layer = QgsVectorLayer("Polygon?crs=EPSG:32650&field=cls:string&field=n:integer", "labels", "memory")
    feats = []
    for i, cls in enumerate(("forest", "water")):
        f = QgsFeature(layer.fields())
        x = 500000 + 10 * i
        f.setGeometry(QgsGeometry.fromPolygonXY([[QgsPointXY(x, 3399990), QgsPointXY(x + 8, 3399990),
                                                  QgsPointXY(x + 8, 3399998), QgsPointXY(x, 3399990)]]))
        f.setAttributes([cls, i + 1])
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    return layer


def test_memory_label_layer_goes_to_a_temporary_geopackage_with_crs_and_fields():
    path, table = vector_source(_labels_layer(), allow_memory_export=True)
    copy = QgsVectorLayer(f"{path}|layername={table}", "copy", "ogr")
    assert copy.isValid() and copy.featureCount() == 2
    assert copy.crs().authid() == "EPSG:32650"
    assert {f["cls"] for f in copy.getFeatures()} == {"forest", "water"}


def test_landcover_params_follow_the_api(loveda_crop, tmp_path):
    hr = QgsRasterLayer(str(loveda_crop), "hr")
    s2 = QgsRasterLayer(str(loveda_crop), "S2B_20230601_stack")
    params = job_params.landcover_params(hr, str(tmp_path / "out"), "landcover_x", s2=[(s2, None)],
                                         tile_size=256, overlap=32)
    assert params["hr"] == [{"path": str(loveda_crop), "bands": [1, 2, 3]}]
    assert params["s2"] == [{"path": str(loveda_crop), "bands": None, "date": "2023-06-01"}]
    assert (tmp_path / "out").is_dir() and params["output_dir"] == str(tmp_path / "out")
    assert params["runtime"] == "auto" and params["tta"] is False
    assert job_params.landcover_params(hr, str(tmp_path), "x", runtime="onnx")["runtime"] == "onnx"
    # no tile size (or the dock's 0, "Model's own") sends null: the backend uses the model file's tile
    assert job_params.landcover_params(hr, str(tmp_path), "x")["tile_size"] is None
    assert job_params.landcover_params(hr, str(tmp_path), "x", tile_size=0, overlap=200)["tile_size"] is None
    assert job_params.landcover_params(hr, str(tmp_path), "x", tta=True)["tta"] is True
    with pytest.raises(LayerSourceError, match="high-resolution maps only"):
        job_params.landcover_params(hr, str(tmp_path), "x", s2=[(s2, None)], tta=True)
    with pytest.raises(LayerSourceError, match="Unknown runtime 'tensorrt'"):
        job_params.landcover_params(hr, str(tmp_path), "x", runtime="tensorrt")
    with pytest.raises(LayerSourceError, match="Overlap 200 is too large"):
        job_params.landcover_params(hr, str(tmp_path), "x", tile_size=256, overlap=200)
    with pytest.raises(LayerSourceError, match="reads bands"):
        job_params.landcover_params(hr, str(tmp_path), "x", bands=(1, 2, 5))


def test_class_raster_result_is_paletted_with_class_names_in_a_named_group(loveda_crop, tmp_path,
                                                                           qgis_new_project, plugin_helpers):
    tif = plugin_helpers.write_class_raster(loveda_crop, tmp_path / "lc.tif")
    result = {"outputs": [{"path": str(tif), "kind": "raster", "role": "classes"},
                          {"path": str(tmp_path / "lc.png"), "kind": "image", "role": "preview"}],
              "classes": LOVEDA_CLASSES}
    group, layers = add_result_layers(result, "landcover_20260101_120000", "landcover")
    assert group.name() == "landcover_20260101_120000"
    assert QgsProject.instance().layerTreeRoot().findGroup("landcover_20260101_120000") is group
    assert len(layers) == 1
    renderer = layers[0].renderer()
    assert renderer.type() == "paletted"
    legend = [label for label, _ in renderer.legendSymbologyItems()]
    assert legend == [c["name"] for c in LOVEDA_CLASSES]
    colors = {c.value: c.color.name() for c in renderer.classes()}
    assert colors[2] == "#ff0000" and colors[4] == "#0000ff"


def test_change_mask_hides_no_change(loveda_crop, tmp_path, qgis_new_project, plugin_helpers):
    tif = plugin_helpers.write_class_raster(loveda_crop, tmp_path / "change.tif")
    classes = [{"value": 0, "name": "no change", "color": "#00000000"},
               {"value": 1, "name": "change", "color": "#ff00ff"}]
    _, (layer,) = add_result_layers({"outputs": [{"path": str(tif), "kind": "raster", "role": "change"}],
                                     "classes": classes}, "change_job", "change")
    by_value = {c.value: c for c in layer.renderer().classes()}
    assert by_value[0].color.alpha() == 0 and by_value[1].color.name() == "#ff00ff"
    assert by_value[1].label == "change"


def _damage_gpkg(tmp_path):
    path = str(tmp_path / "buildings.gpkg")
    drv = gdal.GetDriverByName("GPKG")
    ds = drv.Create(path, 0, 0, 0, gdal.GDT_Unknown)
    from osgeo import ogr, osr
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(26915)
    lyr = ds.CreateLayer("buildings", srs, ogr.wkbPolygon)
    lyr.CreateField(ogr.FieldDefn("damage", ogr.OFTInteger))
    lyr.CreateField(ogr.FieldDefn("confidence", ogr.OFTReal))
    for i in range(4):
        f = ogr.Feature(lyr.GetLayerDefn())
        x = 363000 + 20 * i
        f.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({x} 4100000,{x+10} 4100000,{x+10} 4100010,{x} 4100000))"))
        f.SetField("damage", i + 1)
        f.SetField("confidence", 0.5 + i / 10)
        lyr.CreateFeature(f)
    ds = None
    return path


def test_damage_buildings_are_categorized_and_export_keeps_crs_and_attributes(tmp_path, qgis_new_project):
    gpkg = _damage_gpkg(tmp_path)
    result = {"outputs": [{"path": gpkg, "kind": "vector", "role": "buildings", "layer": "buildings"}],
              "classes": DAMAGE}
    _, (layer,) = add_result_layers(result, "damage_job", "damage")
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "damage"
    assert [c.label() for c in renderer.categories()] == ["no damage", "minor damage", "major damage", "destroyed"]

    shp = export_vector_layer(layer, str(tmp_path / "damage_out.shp"))
    back = QgsVectorLayer(shp, "back", "ogr")
    assert back.isValid() and back.featureCount() == 4
    assert back.crs().authid() == "EPSG:26915"
    assert sorted(f["damage"] for f in back.getFeatures()) == [1, 2, 3, 4]
    assert not list(tmp_path.glob("*.part.*")), "temporary export files were left behind"
    with pytest.raises(ExportError, match="use a .gpkg or .shp"):
        export_vector_layer(layer, str(tmp_path / "out.kml"))


def test_processing_export_algorithm_runs_via_processing_run(tmp_path, qgis_processing, qgis_new_project):
    import processing
    from qgis.core import QgsApplication

    from skysense_qgis.processing.provider import SkySenseProvider
    registry = QgsApplication.processingRegistry()
    provider = SkySenseProvider()
    assert registry.addProvider(provider)
    try:
        _run_export(registry, tmp_path)
    finally:
        registry.removeProvider("skysense")


def _run_export(registry, tmp_path):
    import processing
    ids = {a.id() for a in registry.providerById("skysense").algorithms()}
    assert ids == {"skysense:landcover", "skysense:change", "skysense:damage", "skysense:finetune",
                   "skysense:export"}
    layer = QgsVectorLayer(f"{_damage_gpkg(tmp_path)}|layername=buildings", "b", "ogr")
    out = processing.run("skysense:export", {"INPUT": layer, "SELECTED_ONLY": False,
                                             "OUTPUT": str(tmp_path / "exported.gpkg")})
    back = QgsVectorLayer(out["OUTPUT"], "back", "ogr")
    assert back.featureCount() == 4 and back.crs().authid() == "EPSG:26915"
    assert [f.name() for f in back.fields()][-2:] == ["damage", "confidence"]


def test_change_and_damage_params_default_to_the_model_files_tile(loveda_crop, tmp_path):
    pre, post = QgsRasterLayer(str(loveda_crop), "pre"), QgsRasterLayer(str(loveda_crop), "post")
    for build in (job_params.change_params, job_params.damage_params):
        own = build(pre, post, str(tmp_path), "x")
        assert (own["tile_size"], own["overlap"]) == (None, 32)  # the backend's defaults for pairs
        assert build(pre, post, str(tmp_path), "x", tile_size=0)["tile_size"] is None  # the dock's "Model's own"
        told = build(pre, post, str(tmp_path), "x", tile_size=512)
        assert (told["tile_size"], told["overlap"]) == (512, 64)  # a quarter of the tile, at most 64
        assert build(pre, post, str(tmp_path), "x", tile_size=128)["overlap"] == 32
        with pytest.raises(LayerSourceError, match="Overlap 64 is too large for tiles of 96"):
            build(pre, post, str(tmp_path), "x", tile_size=96, overlap=64)


def test_crs_set_in_qgis_travels_with_the_file(data_dir, tmp_path):
    # A georeferenced tile whose file has no CRS; the user sets EPSG:32650 in QGIS.
    bare = tmp_path / "no_crs.tif"
    gdal.Translate(str(bare), str(data_dir / "loveda" / "img_dir" / "0.png"), srcWin=[0, 0, 64, 64],
                   outputBounds=[500000, 3400000, 500019.2, 3399980.8])
    layer = QgsRasterLayer(str(bare), "bare")
    layer.setCrs(QgsCoordinateReferenceSystem("EPSG:32650"))
    sent = raster_path(layer)
    assert sent.endswith(".vrt") and sent != str(bare)
    wrapped = gdal.Open(sent)
    assert QgsCoordinateReferenceSystem.fromWkt(wrapped.GetProjectionRef()).authid() == "EPSG:32650"
    assert wrapped.GetGeoTransform() == gdal.Open(str(bare)).GetGeoTransform()
    # A file that already carries the layer's CRS is sent as is.
    good = tmp_path / "good.tif"
    gdal.Translate(str(good), str(bare), outputSRS="EPSG:32650")
    assert raster_path(QgsRasterLayer(str(good), "good")) == str(good)


def test_ungeoreferenced_image_is_refused(data_dir):
    layer = QgsRasterLayer(str(data_dir / "loveda" / "img_dir" / "0.png"), "png")
    layer.setCrs(QgsCoordinateReferenceSystem("EPSG:32650"))
    with pytest.raises(LayerSourceError, match="has no georeferencing"):
        raster_path(layer)


def test_run_summary_says_how_a_job_ran():
    from skysense_qgis.run_summary import run_summary

    result = {"device": "cpu", "metrics": {"megapixels": 42.0, "seconds": 18.26, "precision": "bf16, OpenVINO"}}
    assert run_summary(result) == "42.0 MP in 18.3 s (2.30 MP/s) on cpu, bf16, OpenVINO"
    assert run_summary({"device": "cuda", "metrics": {"megapixels": 1, "seconds": 2}}) == \
        "1.0 MP in 2.0 s (0.50 MP/s) on cuda"
    collared = {"device": "cpu", "metrics": {"megapixels": 4.2, "seconds": 2.0, "tiles": 16, "tiles_without_data": 5}}
    assert run_summary(collared) == "4.2 MP in 2.0 s (2.10 MP/s) on cpu; 5 of 16 tiles had no data"
    collared["metrics"]["tiles_without_data"] = 0
    assert run_summary(collared) == "4.2 MP in 2.0 s (2.10 MP/s) on cpu"
    for silent in ({}, {"metrics": {}}, {"metrics": {"megapixels": 3, "seconds": 0}},
                   {"metrics": {"megapixels": "3", "seconds": 1}}):
        assert run_summary(silent) == ""
