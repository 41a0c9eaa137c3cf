"""Dock behaviour against a small fake HTTP backend (UI unit tests; the real backend is tested in
test_plugin_real_backend.py)."""
import pytest
from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsFeature, QgsGeometry, QgsPointXY, QgsProject,
                       QgsRasterLayer, QgsRectangle, QgsVectorLayer)
from qgis.PyQt.QtCore import QDate

import skysense_qgis
from skysense_qgis.backend_client import BackendClient
from skysense_qgis.backend_manager import BackendManager, set_shared_manager


@pytest.fixture
def plugin(qgis_iface, qgis_new_project, fake_backend, tmp_path):
    manager = BackendManager(interpreter="/nonexistent/python", state_dir=str(tmp_path / "state"))
    manager.attach(BackendClient.for_port(fake_backend.port, fake_backend.token))
    set_shared_manager(manager)
    plugin = skysense_qgis.classFactory(qgis_iface)
    plugin.initGui()
    plugin.show_section(0)
    plugin.dock.output_dir.setFilePath(str(tmp_path / "out"))
    qgis_iface.messageBar().clear_messages()
    yield plugin
    plugin.unload()
    set_shared_manager(None)


def _add_raster(path, name):
    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


def _criticals(iface):
    return iface.messageBar().get_messages(Qgis.Critical)


def test_plugin_gui_has_dock_sections_menu_and_provider(plugin):
    from qgis.core import QgsApplication
    dock = plugin.dock
    titles = [dock.toolbox.itemText(i) for i in range(dock.toolbox.count())]
    assert titles == ["Land cover", "Change detection", "Damage assessment", "Fine-tune",
                      "Results and export", "Backend"]
    assert plugin.dock_action.isChecked()
    plugin.dock_action.trigger()  # toolbar button: hide, then show again
    assert plugin.dock.isHidden() and not plugin.dock_action.isChecked()
    plugin.dock_action.trigger()
    assert not plugin.dock.isHidden() and plugin.dock_action.isChecked()
    assert QgsApplication.processingRegistry().providerById("skysense") is not None
    # Backend section shows health and the model list reached the model choosers.
    assert "CPU" in dock.backend.status.text() and "Preparing" not in dock.backend.status.text()
    health = {"status": "ok", "version": "1", "device": "cpu", "torch": "2",
              "preparing": "OpenVINO for a.pth at tile 640"}
    dock.backend.show_health(health)  # a backend preparing OpenVINO in the background says so
    assert dock.backend.status.text().endswith(", CPU. Preparing OpenVINO for a.pth at tile 640 in the background: "
                                               "until it is done, the first CPU jobs may run slower")
    dock.refresh_backend()
    assert "Preparing" not in dock.backend.status.text()
    assert dock.landcover.model.combo.count() == 2
    assert dock.change.model.combo.count() == 1  # no change model listed: only the default entry
    # every task starts at the model file's own tile size
    assert {page.tile_size.text() for page in (dock.landcover, dock.change, dock.damage)} == {"Model's own"}


def test_map_land_cover_click_runs_job_and_adds_styled_group(plugin, fake_backend, loveda_crop, plugin_helpers,
                                                            tmp_path):
    dock = plugin.dock
    hr = _add_raster(loveda_crop, "loveda hr")
    s2 = _add_raster(loveda_crop, "S2A_MSIL2A_20230514T101031")
    page = dock.landcover
    page.hr_layer.setLayer(hr)
    assert page.tile_size.value() == 0 and page.tile_size.text() == "Model's own"
    assert page.params(str(tmp_path), "x")["tile_size"] is None
    page.tile_size.setValue(256)
    page.overlap.setValue(32)
    page.device.setCurrentIndex(page.device.findData("cpu"))
    page.runtime.setCurrentIndex(page.runtime.findData("compile"))
    row = page.s2_table.add_row(s2)
    assert page.s2_table.table.cellWidget(row, 1).date() == QDate(2023, 5, 14)
    page.aoi.set_drawn(QgsGeometry.fromRect(QgsRectangle(500010, 3399940, 500060, 3399990)),
                       QgsCoordinateReferenceSystem("EPSG:32650"))
    page.run_button.click()
    plugin_helpers.wait_until(lambda: dock.task is None and dock.last_result is not None, 30, "the land-cover job")

    path, body = [r for r in fake_backend.requests if r[0] == "/jobs"][-1]
    params = body["params"]
    assert body["kind"] == "landcover"
    assert params["hr"] == [{"path": str(loveda_crop), "bands": [1, 2, 3]}]
    assert params["s2"][0]["date"] == "2023-05-14"
    assert params["tile_size"] == 256 and params["overlap"] == 32 and params["device"] == "cpu"
    assert params["runtime"] == "compile"
    # how the job ran, as the backend reported it
    assert "0.1 MP in 0.5 s (0.13 MP/s) on cpu, bf16, OpenVINO." in dock.job_panel.status.text()
    assert params["aoi"]["crs"] == "EPSG:32650" and params["aoi"]["geometry"]["type"] == "Polygon"
    group = QgsProject.instance().layerTreeRoot().findGroup(params["name"])
    assert group is not None and params["name"].startswith("landcover_")
    (layer,) = [node.layer() for node in group.findLayers()]
    assert layer.renderer().type() == "paletted"
    assert "building" in [label for label, _ in layer.renderer().legendSymbologyItems()]
    assert dock.job_panel.progress.value() == 100
    assert not dock.job_panel.cancel_button.isEnabled()
    assert not _criticals(plugin.iface)


def test_backend_error_reaches_the_message_bar_in_plain_words(plugin, fake_backend, loveda_crop, plugin_helpers):
    fake_backend.fail_with = "The raster has no coordinate reference system."
    plugin.dock.landcover.hr_layer.setLayer(_add_raster(loveda_crop, "hr"))
    plugin.dock.landcover.run_button.click()
    plugin_helpers.wait_until(lambda: plugin.dock.task is None and _criticals(plugin.iface), 30, "the error")
    assert "The raster has no coordinate reference system." in " ".join(_criticals(plugin.iface))
    assert "no coordinate reference system" in plugin.dock.job_panel.status.text()


def test_cancel_button_cancels_the_backend_job(plugin, fake_backend, loveda_crop, plugin_helpers):
    fake_backend.job_seconds = 30
    dock = plugin.dock
    dock.landcover.hr_layer.setLayer(_add_raster(loveda_crop, "hr"))
    dock.landcover.run_button.click()
    plugin_helpers.wait_until(lambda: dock.task is not None and dock.task.job_id
                              and fake_backend.jobs[dock.task.job_id]["state"] == "running", 15, "a running job")
    job_id = dock.task.job_id
    assert dock.job_panel.cancel_button.isEnabled()
    dock.job_panel.cancel_button.click()
    plugin_helpers.wait_until(lambda: dock.task is None, 15, "the cancelled job to end")
    assert fake_backend.jobs[job_id]["state"] == "cancelled"
    assert ("/jobs/%s/cancel" % job_id) in [r[0] for r in fake_backend.requests]
    assert "cancelled" in dock.job_panel.status.text()
    assert not QgsProject.instance().layerTreeRoot().findGroups()


def test_backend_going_away_mid_job_offers_a_restart(plugin, fake_backend, loveda_crop, plugin_helpers):
    fake_backend.job_seconds = 30
    dock = plugin.dock
    dock.landcover.hr_layer.setLayer(_add_raster(loveda_crop, "hr"))
    dock.landcover.run_button.click()
    plugin_helpers.wait_until(lambda: dock.task is not None and dock.task.job_id, 15, "a submitted job")
    fake_backend.close()
    plugin_helpers.wait_until(lambda: dock.task is None, 30, "the job to notice the backend is gone")
    assert dock.restart_button is not None and dock.restart_button.text() == "Restart backend"
    assert "backend went away" in dock.job_panel.status.text() or "not reachable" in dock.job_panel.status.text()


def test_bad_inputs_are_refused_before_anything_is_sent(plugin, fake_backend, tmp_path, plugin_helpers):
    dock = plugin.dock
    dock.landcover.hr_layer.setLayer(None)
    dock.landcover.run_button.click()
    assert "No raster layer was chosen." in _criticals(plugin.iface)[-1]
    labels = QgsVectorLayer("Polygon?crs=EPSG:32650&field=cls:string", "labels", "memory")
    QgsProject.instance().addMapLayer(labels)
    dock.change.aoi.set_mode("selected")
    dock.change.aoi.polygon_layer.setLayer(labels)
    dock.change.pre_layer.setLayer(None)
    with pytest.raises(Exception, match="Select at least one polygon in layer 'labels'"):
        dock.change.aoi.aoi()
    assert not [r for r in fake_backend.requests if r[0] == "/jobs"]


def test_selected_polygons_become_the_aoi_in_their_own_crs(plugin):
    layer = QgsVectorLayer("Polygon?crs=EPSG:26915&field=id:integer", "aoi", "memory")
    f = QgsFeature(layer.fields())
    f.setGeometry(QgsGeometry.fromRect(QgsRectangle(363000, 4100000, 363100, 4100100)))
    f.setAttributes([1])
    layer.dataProvider().addFeatures([f])
    QgsProject.instance().addMapLayer(layer)
    layer.selectAll()
    aoi = plugin.dock.change.aoi
    aoi.set_mode("selected")
    aoi.polygon_layer.setLayer(layer)
    payload = aoi.aoi()
    assert payload["crs"] == "EPSG:26915"
    xs = [pt[0] for pt in payload["geometry"]["coordinates"][0]]
    assert min(xs) == 363000 and max(xs) == 363100


def test_finetune_page_shows_loss_curve_and_accuracy(plugin):
    page = plugin.dock.finetune
    page.job_started()
    for epoch, loss in ((1, 1.3), (1, 0.9), (2, 0.7), (2, 0.6), (3, 0.4)):
        page.progress_message(f"epoch {epoch}/3: loss {loss}")
    page.progress_message("epoch 3/3: val mIoU 0.512")  # not a loss: ignored
    assert page.plot.train == [0.9, 0.6, 0.4]
    page.show_result({"outputs": [{"path": "/m/model.pth", "kind": "model"}],
                      "metrics": {"history": [{"epoch": 1, "loss": 0.8, "val_loss": 0.9},
                                              {"epoch": 2, "loss": 0.5, "val_loss": 0.7}],
                                  "per_class_accuracy": {"forest": 0.91, "water": 0.75},
                                  "overall_accuracy": 0.85}})
    assert page.plot.train == [0.8, 0.5] and page.plot.val == [0.9, 0.7]
    assert page.accuracy.rowCount() == 2 and page.accuracy.item(0, 1).text() == "91.0 %"
    assert "85.0 %" in page.summary.text() and "/m/model.pth" in page.summary.text()
    image = page.plot.grab()
    assert not image.isNull()
    # The backend's own layout: loss_curve and per_class at the top level of the result.
    page.show_result({"outputs": [{"path": "/m/ft.pth", "kind": "model", "role": "model"}], "model": "/m/ft.pth",
                      "loss_curve": [{"epoch": 1, "train_loss": 1.2, "val_loss": 1.3},
                                     {"epoch": 2, "train_loss": 0.7, "val_loss": 0.9}],
                      "per_class": [{"value": 1, "name": "forest", "accuracy": 0.5, "iou": 0.4}],
                      "metrics": {"overall_accuracy": 0.6, "miou": 0.41, "random_forest": {"overall_accuracy": 0.55}}})
    assert page.plot.train == [1.2, 0.7] and page.plot.val == [1.3, 0.9]
    assert page.accuracy.rowCount() == 1 and page.accuracy.item(0, 0).text() == "forest"
    assert "random-forest baseline 55.0 %" in page.summary.text() and "mIoU 0.410" in page.summary.text()


def test_web_map_layer_is_refused_by_the_dock(plugin, fake_backend):
    wms = QgsRasterLayer("crs=EPSG:3857&format=image/png&layers=osm&styles=&url=http://127.0.0.1:9/wms",
                         "basemap", "wms")
    QgsProject.instance().addMapLayer(wms)
    plugin.dock.landcover.hr_layer.setLayer(wms)
    assert plugin.dock.landcover.hr_layer.currentLayer() is wms
    plugin.dock.landcover.run_button.click()
    assert "'basemap' is a wms layer, not a raster file" in _criticals(plugin.iface)[-1]
    assert not [r for r in fake_backend.requests if r[0] == "/jobs"]


def _mouse(canvas, kind, x, y, button=None):
    from qgis.gui import QgsMapMouseEvent
    from qgis.PyQt.QtCore import QEvent, QPoint, Qt
    button = button or Qt.LeftButton
    return QgsMapMouseEvent(canvas, kind, QPoint(x, y), button, button, Qt.NoModifier)


def test_rectangle_and_polygon_tools_set_the_aoi_in_the_canvas_crs(plugin, qgis_canvas):
    from qgis.PyQt.QtCore import QEvent, Qt
    qgis_canvas.resize(400, 400)
    qgis_canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    qgis_canvas.setExtent(QgsRectangle(0, 0, 4000, 4000))
    aoi = plugin.dock.landcover.aoi
    aoi.canvas = qgis_canvas
    aoi.draw_rect.click()
    tool = aoi.tool
    assert qgis_canvas.mapTool() is tool
    tool.canvasPressEvent(_mouse(qgis_canvas, QEvent.MouseButtonPress, 100, 100))
    tool.canvasMoveEvent(_mouse(qgis_canvas, QEvent.MouseMove, 200, 250))
    tool.canvasReleaseEvent(_mouse(qgis_canvas, QEvent.MouseButtonRelease, 200, 250))
    payload = aoi.aoi()
    assert payload["crs"] == "EPSG:3857" and payload["geometry"]["type"] == "Polygon"
    rect = QgsGeometry.fromPolygonXY([[QgsPointXY(*pt) for pt in payload["geometry"]["coordinates"][0]]])
    expected = QgsRectangle(tool.toMapCoordinates(_mouse(qgis_canvas, QEvent.MouseMove, 100, 100).pos()),
                            tool.toMapCoordinates(_mouse(qgis_canvas, QEvent.MouseMove, 200, 250).pos()))
    assert rect.boundingBox().toString(1) == expected.toString(1)

    aoi.set_mode("extent")
    view = aoi.aoi()
    assert view["crs"] == "EPSG:3857"
    xs = [pt[0] for pt in view["geometry"]["coordinates"][0]]
    assert min(xs) <= 0 and max(xs) >= 4000  # the whole visible map

    aoi.draw_poly.click()
    poly_tool = aoi.tool
    for x, y in ((50, 50), (300, 60), (200, 300)):
        poly_tool.canvasReleaseEvent(_mouse(qgis_canvas, QEvent.MouseButtonRelease, x, y))
    poly_tool.canvasReleaseEvent(_mouse(qgis_canvas, QEvent.MouseButtonRelease, 0, 0, Qt.RightButton))
    ring = aoi.aoi()["geometry"]["coordinates"][0]
    assert len(ring) == 4 and ring[0] == ring[-1]


# -- fine-tune: defaults and "Resume the last interrupted run" ------------------------------------
def _warnings(iface):
    return iface.messageBar().get_messages(Qgis.Warning)


def _setup_finetune(plugin, raster_path):
    labels = QgsVectorLayer("Polygon?crs=EPSG:32650&field=cls:string", "ft labels", "memory")
    f = QgsFeature(labels.fields())
    f.setGeometry(QgsGeometry.fromRect(QgsRectangle(500010, 3399940, 500060, 3399990)))
    f.setAttributes(["forest"])
    labels.dataProvider().addFeatures([f])
    QgsProject.instance().addMapLayer(labels)
    page = plugin.dock.finetune
    page.raster.setLayer(_add_raster(raster_path, "ft raster"))
    page.labels.setLayer(labels)
    page.class_field.setField("cls")
    page.device.setCurrentIndex(page.device.findData("cpu"))
    plugin.dock.settings.set_last_finetune("", "")  # QgsSettings outlive a test
    return page


def _finetune_requests(fake):
    return [body for path, body in fake.requests if path == "/jobs" and body["kind"] == "finetune"]


def test_finetune_defaults_train_the_whole_model_and_do_not_resume(plugin, loveda_crop, tmp_path):
    from skysense_qgis.job_params import finetune_params
    page = _setup_finetune(plugin, loveda_crop)
    assert not page.freeze.isChecked() and not page.resume.isChecked()
    assert "last saved epoch" in page.resume.toolTip()
    params = page.params(str(tmp_path / "out"), "finetune_x")
    assert params["freeze_encoder"] is False and params["resume"] is False
    defaults = finetune_params(page.raster.currentLayer(), page.labels.currentLayer(), "cls", str(tmp_path), "n")
    assert defaults["freeze_encoder"] is False


def test_killed_finetune_says_resume_and_resume_reuses_its_folder_and_name(plugin, fake_backend, loveda_crop,
                                                                          plugin_helpers, tmp_path):
    dock = plugin.dock
    page = _setup_finetune(plugin, loveda_crop)
    fake_backend.job_seconds = 30
    page.run_button.click()
    plugin_helpers.wait_until(lambda: dock.task is not None and dock.task.job_id, 15, "a submitted fine-tune")
    (first,) = _finetune_requests(fake_backend)
    first = first["params"]
    assert first["name"].startswith("finetune_") and first["resume"] is False
    checkpoint = tmp_path / "out" / f"{first['name']}_checkpoint.pth"
    plugin_helpers.wait_until(checkpoint.exists, 15, "the first epoch's checkpoint")
    fake_backend.close()  # the backend goes away mid-run
    plugin_helpers.wait_until(lambda: dock.task is None, 30, "the job to notice the backend is gone")
    assert dock.restart_button is not None
    assert "tick 'Resume the last interrupted run'" in dock.backend.status.text()

    # The backend is back (here: a new fake); the output folder was changed meanwhile.
    back = plugin_helpers.FakeBackend(job_seconds=0.3)
    try:
        dock.manager.attach(BackendClient.for_port(back.port, back.token))
        dock.output_dir.setFilePath(str(tmp_path / "elsewhere"))
        page.resume.setChecked(True)
        page.run_button.click()
        plugin_helpers.wait_until(lambda: dock.task is None and dock.last_result is not None, 30, "the resumed run")
        (resumed,) = _finetune_requests(back)
        resumed = resumed["params"]
    finally:
        back.close()
    assert resumed["resume"] is True
    assert (resumed["name"], resumed["output_dir"]) == (first["name"], first["output_dir"])
    assert "resumed after epoch 1" in page.summary.text()
    assert not page.resume.isChecked()  # finished: nothing left to resume
    assert dock.settings.last_finetune() == ("", "")


def test_resume_without_a_checkpoint_says_so_and_submits_nothing(plugin, fake_backend, loveda_crop, tmp_path):
    dock = plugin.dock
    page = _setup_finetune(plugin, loveda_crop)
    page.resume.setChecked(True)
    page.run_button.click()
    assert "There is no interrupted fine-tune to resume" in _warnings(plugin.iface)[-1]
    dock.settings.set_last_finetune(str(tmp_path / "out"), "finetune_20240101_120000")
    page.run_button.click()
    message = _warnings(plugin.iface)[-1]
    assert "Cannot resume the fine-tune 'finetune_20240101_120000': it has no checkpoint" in message
    assert str(tmp_path / "out" / "finetune_20240101_120000_checkpoint.pth") in message
    assert "Untick 'Resume the last interrupted run'" in message
    assert dock.task is None and not _finetune_requests(fake_backend)
    dock.settings.set_last_finetune("", "")  # leave no made-up run in the QGIS settings


def test_processing_finetune_resume_maps_to_resume_true(plugin, fake_backend, loveda_crop, tmp_path,
                                                        qgis_processing):
    import processing
    from qgis.core import QgsApplication, QgsProcessingException
    page = _setup_finetune(plugin, loveda_crop)
    alg = QgsApplication.processingRegistry().algorithmById("skysense:finetune")
    assert alg.parameterDefinition("FREEZE_ENCODER").defaultValue() is False
    assert alg.parameterDefinition("RESUME").defaultValue() is False
    assert "Resume" in alg.shortHelpString() and "_checkpoint.pth" in alg.shortHelpString()
    args = {"INPUT": page.raster.currentLayer(), "LABELS": page.labels.currentLayer(), "CLASS_FIELD": "cls",
            "DEVICE": 1, "OUTPUT_FOLDER": str(tmp_path / "pout"), "NAME": "my_run", "RESUME": True}
    with pytest.raises(QgsProcessingException, match="Nothing to resume: .*my_run_checkpoint.pth does not exist"):
        processing.run("skysense:finetune", args)
    with pytest.raises(QgsProcessingException, match="Resume needs the output name"):
        processing.run("skysense:finetune", {**args, "NAME": ""})
    assert not _finetune_requests(fake_backend)
    (tmp_path / "pout").mkdir(exist_ok=True)
    (tmp_path / "pout" / "my_run_checkpoint.pth").write_bytes(b"interrupted")
    out = processing.run("skysense:finetune", args)
    (body,) = _finetune_requests(fake_backend)
    params = body["params"]
    assert params["resume"] is True and params["name"] == "my_run" and params["freeze_encoder"] is False
    assert params["output_dir"] == str(tmp_path / "pout") and out["MODEL"] == str(tmp_path / "pout" / "my_run.pth")
    processing.run("skysense:finetune", {**args, "NAME": "", "RESUME": False})
    assert _finetune_requests(fake_backend)[-1]["params"]["resume"] is False


def test_batch_size_defaults_to_auto_and_is_sent_as_zero(plugin, fake_backend, loveda_crop, tmp_path):
    page = plugin.dock.landcover
    assert page.batch_size.value() == 0 and page.batch_size.text() == "Auto"
    page.hr_layer.setLayer(_add_raster(loveda_crop, "hr"))
    assert page.params(str(tmp_path), "lc")["batch_size"] == 0
    page.batch_size.setValue(6)
    assert page.batch_size.text() == "6" and page.params(str(tmp_path), "lc")["batch_size"] == 6
    page.batch_size.setValue(0)


def test_averaging_over_flips_is_off_by_default_and_sent_when_ticked(plugin, loveda_crop, tmp_path):
    page = plugin.dock.landcover
    page.hr_layer.setLayer(_add_raster(loveda_crop, "hr"))
    assert not page.tta.isChecked() and page.params(str(tmp_path), "lc")["tta"] is False
    page.tta.setChecked(True)
    assert page.params(str(tmp_path), "lc")["tta"] is True
    page.tta.setChecked(False)


def test_processing_landcover_runtime_is_an_advanced_choice_sent_to_the_backend(plugin, fake_backend, loveda_crop,
                                                                              tmp_path, qgis_processing):
    import processing
    from qgis.core import QgsApplication, QgsProcessingParameterDefinition
    alg = QgsApplication.processingRegistry().algorithmById("skysense:landcover")
    runtime = alg.parameterDefinition("RUNTIME")
    # indexes saved in models and batch files keep their meaning: new runtimes were appended
    assert runtime.options() == ["auto", "torch", "onnx", "compile", "openvino"] and runtime.defaultValue() == 0
    assert runtime.flags() & QgsProcessingParameterDefinition.FlagAdvanced
    layer = _add_raster(loveda_crop, "hr")
    args = {"INPUT": layer, "BANDS": [1, 2, 3], "TILE_SIZE": 256, "OVERLAP": 32, "DEVICE": 1, "VECTORIZE": False,
            "OUTPUT_FOLDER": str(tmp_path / "proc")}
    tta = alg.parameterDefinition("TTA")
    assert tta.defaultValue() is False and tta.flags() & QgsProcessingParameterDefinition.FlagAdvanced
    processing.run("skysense:landcover", {**args, "RUNTIME": 3})
    processing.run("skysense:landcover", {**args, "RUNTIME": 4, "TTA": True})
    processing.run("skysense:landcover", args)
    tile = alg.parameterDefinition("TILE_SIZE")
    assert tile.defaultValue() == 0 and "0 = the model's own" in tile.description()
    processing.run("skysense:landcover", {k: v for k, v in args.items() if k not in ("TILE_SIZE", "OVERLAP")})
    sent = [(body["params"]["runtime"], body["params"]["tta"], body["params"]["tile_size"])
            for path, body in fake_backend.requests if path == "/jobs" and body["kind"] == "landcover"]
    assert sent == [("compile", False, 256), ("openvino", True, 256), ("auto", False, 256), ("auto", False, None)]


def test_the_backend_starts_with_the_panel_only_when_asked_and_once_per_session(qgis_iface, qgis_new_project,
                                                                                tmp_path, monkeypatch):
    from skysense_qgis.settings import PluginSettings

    settings = PluginSettings()
    starts = []
    manager = BackendManager(interpreter="/nonexistent/python", state_dir=str(tmp_path / "state"))
    monkeypatch.setattr(manager, "start", lambda: starts.append("start"))
    monkeypatch.setattr(manager, "is_running", lambda: False)
    set_shared_manager(manager)
    try:
        for asked in (False, True):
            settings.set_start_with_panel(asked)
            plugin = skysense_qgis.classFactory(qgis_iface)
            plugin.initGui()
            try:
                plugin.show_section(0)  # the panel opens
                dock = plugin.dock
                assert dock.backend.start_with_panel.isChecked() == asked
                assert starts == (["start"] if asked else [])
                plugin.set_dock_visible(False)
                plugin.set_dock_visible(True)  # opened again (e.g. after a stop by hand): not started again
                assert starts == (["start"] if asked else [])
            finally:
                plugin.unload()
        plugin = skysense_qgis.classFactory(qgis_iface)
        plugin.initGui()
        try:
            plugin.show_section(5)
            plugin.dock.backend.start_with_panel.setChecked(False)  # kept for the next QGIS session
            assert not PluginSettings().start_with_panel()
        finally:
            plugin.unload()
    finally:
        settings.set_start_with_panel(False)
        set_shared_manager(None)
