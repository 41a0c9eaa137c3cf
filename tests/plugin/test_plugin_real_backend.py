"""End to end in real QGIS with the REAL backend process, started by the plugin's own BackendManager
with the interpreter from SKYSENSE_BACKEND_PYTHON, on a georeferenced crop of a real LoveDA tile."""
import os
import re
import signal

import pytest
from osgeo import gdal
from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

import skysense_qgis
from skysense_qgis.backend_manager import BackendManager, set_shared_manager

LOVEDA_NAMES = ["background", "building", "road", "water", "barren", "forest", "agriculture"]


@pytest.fixture
def real_plugin(qgis_iface, qgis_new_project, backend_python, tmp_path):
    manager = BackendManager(interpreter=backend_python, state_dir=str(tmp_path / "backend_state"))
    set_shared_manager(manager)
    plugin = skysense_qgis.classFactory(qgis_iface)
    plugin.initGui()
    plugin.show_section(0)
    plugin.dock.output_dir.setFilePath(str(tmp_path / "results"))
    qgis_iface.messageBar().clear_messages()
    yield plugin
    plugin.unload()  # stops the backend process
    assert manager.process is None
    set_shared_manager(None)


def _setup_landcover(plugin, raster_path, model_path, name="loveda 2023"):
    layer = QgsRasterLayer(str(raster_path), name)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    page = plugin.dock.landcover
    page.hr_layer.setLayer(layer)
    page.model.set_model_path(str(model_path))
    page.tile_size.setValue(256)
    page.overlap.setValue(32)
    page.device.setCurrentIndex(page.device.findData("cpu"))
    return layer


def test_map_land_cover_through_the_dock_with_the_real_backend(real_plugin, loveda_crop, landcover_model,
                                                               plugin_helpers, tmp_path):
    dock = real_plugin.dock
    _setup_landcover(real_plugin, loveda_crop, landcover_model)
    assert not dock.manager.is_running()
    dock.landcover.run_button.click()  # starts the backend, then submits the job
    plugin_helpers.wait_until(lambda: dock.last_result is not None or "failed" in dock.job_panel.status.text()
                              or real_plugin.iface.messageBar().get_messages(2), 180, "the land-cover job")
    assert dock.last_result is not None, dock.job_panel.status.text()
    assert dock.manager.is_running() and "CPU" in dock.backend.status.text()
    assert re.search(r"0\.1 MP in [\d.]+ s \([\d.]+ MP/s\) on cpu, (fp32|bf16 mixed)\.$", dock.job_panel.status.text()), \
        dock.job_panel.status.text()  # a small job: PyTorch (OpenVINO only from 40 MP)

    group = dock.last_group
    assert group.name().startswith("landcover_")
    layers = {node.layer().name(): node.layer() for node in group.findLayers()}
    raster = layers["landcover classes"]
    assert raster.renderer().type() == "paletted"
    assert [label for label, _ in raster.renderer().legendSymbologyItems()] == LOVEDA_NAMES
    assert raster.crs().authid() == "EPSG:32650"
    assert raster.width() == 256 and raster.height() == 256
    polygons = layers["landcover polygons"]
    assert isinstance(polygons, QgsVectorLayer) and polygons.featureCount() > 0

    # Export the polygons from the dock: shapefile with the same CRS and attributes.
    dock.results.vector_layer.setLayer(polygons)
    written = dock.export_to(str(tmp_path / "landcover_polygons.shp"))
    shp = QgsVectorLayer(written, "shp", "ogr")
    assert shp.isValid() and shp.featureCount() == polygons.featureCount()
    assert shp.crs().authid() == "EPSG:32650"
    src_fields = [f.name() for f in polygons.fields() if f.name() != "fid"]
    assert src_fields and all(name in shp.fields().names() for name in src_fields)
    assert sorted(f["class_name"] for f in shp.getFeatures()) == sorted(f["class_name"] for f in polygons.getFeatures())


def test_processing_landcover_algorithm_with_the_real_backend(real_plugin, loveda_crop, landcover_model, tmp_path):
    import processing
    layer = QgsRasterLayer(str(loveda_crop), "hr")
    out = processing.run("skysense:landcover", {
        "INPUT": layer, "BANDS": [1, 2, 3], "MODEL": str(landcover_model), "TILE_SIZE": 256, "OVERLAP": 32,
        "DEVICE": 1, "VECTORIZE": False, "OUTPUT_FOLDER": str(tmp_path / "proc")})
    classes = QgsRasterLayer(out["CLASSES"], "classes")
    assert classes.isValid() and classes.crs().authid() == "EPSG:32650"
    assert out["POLYGONS"] is None
    assert os.path.dirname(out["CLASSES"]) == str(tmp_path / "proc")

    # Loaded through Processing's own result handling, the outputs come in styled too.
    processing.runAndLoadResults("skysense:landcover", {
        "INPUT": layer, "BANDS": [1, 2, 3], "MODEL": str(landcover_model), "TILE_SIZE": 256, "OVERLAP": 32,
        "DEVICE": 1, "VECTORIZE": True, "OUTPUT_FOLDER": str(tmp_path / "proc2")})
    loaded = {lyr.name(): lyr for lyr in QgsProject.instance().mapLayers().values()}
    classes_layers = [lyr for name, lyr in loaded.items() if name.endswith(" classes")]
    assert len(classes_layers) == 1, sorted(loaded)
    assert classes_layers[0].renderer().type() == "paletted"
    assert [label for label, _ in classes_layers[0].renderer().legendSymbologyItems()] == LOVEDA_NAMES
    assert any(name.endswith(" polygons") for name in loaded)


def test_processing_refuses_a_non_file_layer_with_a_clear_message(real_plugin, tmp_path):
    import processing
    from qgis.core import QgsProcessingException
    wms = QgsRasterLayer("crs=EPSG:3857&format=image/png&layers=osm&styles=&url=http://127.0.0.1:9/wms",
                         "basemap", "wms")
    QgsProject.instance().addMapLayer(wms)
    with pytest.raises(QgsProcessingException) as info:
        processing.run("skysense:landcover", {"INPUT": wms, "BANDS": [1, 2, 3], "OUTPUT_FOLDER": str(tmp_path)})
    assert "Layer 'basemap' is a wms layer, not a raster file" in str(info.value)
    assert not real_plugin.dock.manager.is_running()  # refused before the backend was even needed


def test_backend_killed_mid_job_is_detected_and_can_be_restarted(real_plugin, data_dir, landcover_model,
                                                                  plugin_helpers, tmp_path):
    big = plugin_helpers.write_georef_crop(data_dir / "loveda" / "img_dir" / "1.png", tmp_path / "big.tif",
                                           size=1024)
    dock = real_plugin.dock
    _setup_landcover(real_plugin, big, landcover_model)
    dock.landcover.tile_size.setValue(128)
    dock.landcover.run_button.click()
    plugin_helpers.wait_until(lambda: dock.task is not None and dock.task.job_id is not None, 120, "a submitted job")
    os.kill(dock.manager.process.pid, signal.SIGKILL)
    plugin_helpers.wait_until(lambda: dock.task is None, 60, "the plugin to notice the dead backend")
    assert dock.last_result is None
    assert dock.restart_button is not None, dock.job_panel.status.text()
    assert "exit code -9" in dock.backend.status.text()
    assert not list((tmp_path / "results").glob("landcover_*.tif"))
    dock.restart_button.click()
    plugin_helpers.wait_until(lambda: dock.manager.is_ready(), 120, "the restarted backend")
    assert dock.manager.client().health()["status"] == "ok"


def _add(path, name, provider="gdal"):
    layer = (QgsRasterLayer(str(path), name) if provider == "gdal" else QgsVectorLayer(str(path), name, "ogr"))
    assert layer.isValid(), path
    QgsProject.instance().addMapLayer(layer)
    return layer


def _wait_for_result(plugin, helpers, what):
    dock = plugin.dock
    helpers.wait_until(lambda: dock.task is None and (dock.last_result is not None
                                                      or "failed" in dock.job_panel.status.text()), 180, what)
    assert dock.last_result is not None, dock.job_panel.status.text()
    return {node.layer().name(): node.layer() for node in dock.last_group.findLayers()}


def test_change_detection_across_crs_with_an_aoi_drawn_in_another_crs(real_plugin, joplin_pair, plugin_helpers):
    from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsGeometry)
    pre_path, post_path = joplin_pair
    pre, post = _add(pre_path, "joplin pre"), _add(post_path, "joplin post")
    assert pre.crs().authid() == "EPSG:26915" and post.crs().authid() == "EPSG:4326"
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    inner = pre.extent().buffered(-30)  # 30 m inside the pre crop, expressed in lon/lat below
    aoi = QgsGeometry.fromRect(inner)
    aoi.transform(QgsCoordinateTransform(pre.crs(), wgs84, QgsProject.instance()))
    page = real_plugin.dock.change
    page.pre_layer.setLayer(pre)
    page.post_layer.setLayer(post)
    page.tile_size.setValue(256)
    page.device.setCurrentIndex(page.device.findData("cpu"))
    page.aoi.set_drawn(aoi, wgs84)
    page.run_button.click()
    layers = _wait_for_result(real_plugin, plugin_helpers, "the change job")
    mask = layers["change change"]
    by_value = {c.value: c for c in mask.renderer().classes()}
    assert mask.renderer().type() == "paletted" and by_value[0].color.alpha() == 0
    assert by_value[1].label == "change"
    assert mask.crs().authid() == "EPSG:26915"
    assert "change probability" in layers and "change polygons" in layers


def test_damage_assessment_gives_categorized_buildings(real_plugin, joplin_pair, data_dir, plugin_helpers):
    pre_path, post_path = joplin_pair
    page = real_plugin.dock.damage
    page.pre_layer.setLayer(_add(pre_path, "pre"))
    page.post_layer.setLayer(_add(post_path, "post"))
    page.buildings.setLayer(_add(data_dir / "joplin" / "buildings.geojson", "footprints", "ogr"))
    page.tile_size.setValue(256)
    page.device.setCurrentIndex(page.device.findData("cpu"))
    page.run_button.click()
    layers = _wait_for_result(real_plugin, plugin_helpers, "the damage job")
    buildings = layers["damage buildings"]
    renderer = buildings.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "damage"
    assert [c.label() for c in renderer.categories()] == ["no damage", "minor damage", "major damage", "destroyed"]
    assert buildings.featureCount() > 0 and buildings.crs().authid() == "EPSG:26915"
    assert {f["damage"] for f in buildings.getFeatures()} <= {1, 2, 3, 4}
    assert layers["damage damage"].renderer().type() == "paletted"


def _loveda_labels(data_dir, crop, tmp_path):
    """LoveDA's own annotation for the same window, polygonized into a GeoPackage (field 'cls')."""
    from osgeo import ogr, osr
    ref = gdal.Open(str(crop))
    mask = tmp_path / "labels.tif"
    gdal.Translate(str(mask), str(data_dir / "loveda" / "ann_dir" / "0.png"), srcWin=[0, 0, 256, 256],
                   outputSRS="EPSG:32650", outputBounds=_bounds(ref))
    src = gdal.Open(str(mask))
    out = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "labels.gpkg"))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32650)
    layer = out.CreateLayer("labels", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("cls", ogr.OFTInteger))
    gdal.Polygonize(src.GetRasterBand(1), src.GetRasterBand(1), layer, 0)
    out = None
    return tmp_path / "labels.gpkg"


def _bounds(ds):
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    return [x0, y0, x0 + dx * ds.RasterXSize, y0 + dy * ds.RasterYSize]


def _setup_finetune(plugin, crop, model, data_dir, tmp_path, epochs):
    page = plugin.dock.finetune
    page.raster.setLayer(_add(crop, "loveda"))
    page.labels.setLayer(_add(_loveda_labels(data_dir, crop, tmp_path), "labels", "ogr"))
    page.class_field.setField("cls")
    page.base_model.set_model_path(str(model))
    page.epochs.setValue(epochs)
    page.device.setCurrentIndex(page.device.findData("cpu"))
    plugin.dock.settings.set_last_finetune("", "")
    return page


def test_finetune_through_the_dock_shows_curve_accuracy_and_selects_the_model(
        real_plugin, loveda_crop, landcover_model, data_dir, tmp_path, plugin_helpers):
    dock = real_plugin.dock
    page = _setup_finetune(real_plugin, loveda_crop, landcover_model, data_dir, tmp_path, epochs=1)
    page.run_button.click()
    plugin_helpers.wait_until(lambda: dock.task is None and dock.job_panel.status.text() != "Starting the SkySense "
                              "backend…" and not dock._ready_timer.isActive(), 240, "the fine-tune job")
    assert dock.last_result is not None, dock.job_panel.status.text()
    model = dock.last_result["model"]
    assert os.path.isfile(model)
    assert len(page.plot.train) == 1 and len(page.plot.val) == 1
    assert page.accuracy.rowCount() >= 2
    assert "Overall accuracy" in page.summary.text() and "random-forest baseline" in page.summary.text()
    assert dock.landcover.model.model_path() == model
    assert dock.last_group is None  # a model is not a map layer: no empty group


def test_finetune_killed_after_an_epoch_resumes_from_its_checkpoint(
        real_plugin, loveda_crop, landcover_model, data_dir, tmp_path, plugin_helpers):
    dock = real_plugin.dock
    page = _setup_finetune(real_plugin, loveda_crop, landcover_model, data_dir, tmp_path, epochs=2)
    page.freeze.setChecked(True)  # decoder only: quicker epochs, same checkpoint/resume path
    page.run_button.click()
    plugin_helpers.wait_until(lambda: dock.settings.last_finetune()[1], 120, "the fine-tune to be submitted")
    output_dir, name = dock.settings.last_finetune()
    checkpoint = tmp_path / "results" / f"{name}_checkpoint.pth"
    assert output_dir == str(tmp_path / "results")
    plugin_helpers.wait_until(checkpoint.exists, 240, "the checkpoint of epoch 1")
    os.kill(dock.manager.process.pid, signal.SIGKILL)  # during epoch 2
    plugin_helpers.wait_until(lambda: dock.task is None, 60, "the plugin to notice the dead backend")
    assert dock.last_result is None and dock.restart_button is not None
    assert "tick 'Resume the last interrupted run'" in dock.backend.status.text()
    dock.restart_button.click()
    plugin_helpers.wait_until(lambda: dock.manager.is_ready(), 120, "the restarted backend")

    page.resume.setChecked(True)
    page.run_button.click()
    plugin_helpers.wait_until(lambda: dock.task is None and not dock._ready_timer.isActive(), 240, "the resumed run")
    result = dock.last_result
    assert result is not None, dock.job_panel.status.text()
    assert result["metrics"]["resumed_from_epoch"] == 1 and result["metrics"]["epochs_run"] == 2
    assert [p["epoch"] for p in result["loss_curve"]] == [1, 2]
    assert result["model"] == str(tmp_path / "results" / f"{name}.pth") and os.path.isfile(result["model"])
    assert "resumed after epoch 1" in page.summary.text()
    assert dock.settings.last_finetune() == ("", "")
