"""The SkySense dock: sections for each task, the output folder, and the running job."""
from __future__ import annotations

import os
from typing import Callable, Optional

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import (QDockWidget, QLabel, QPushButton, QScrollArea, QToolBox, QVBoxLayout,
                                 QWidget)

from ..backend_client import BackendError
from ..backend_manager import BackendManager, BackendProcessError
from ..job_params import finetune_checkpoint, job_name
from ..job_task import SkySenseJobTask
from ..layer_sources import LayerSourceError
from ..result_layers import ResultLoadError, add_result_layers
from ..run_summary import run_summary
from ..settings import PluginSettings
from ..vector_export import ExportError
from .backend_page import BackendPage
from .change_page import ChangePage
from .damage_page import DamagePage
from .finetune_page import FinetunePage
from .job_panel import JobPanel
from .landcover_page import LandcoverPage
from .results_page import ResultsPage
from .widgets import folder_widget, form

TITLE = "SkySense"


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
    area.setFrameShape(QScrollArea.NoFrame)
    area.setWidget(widget)
    return area


class SkySenseDock(QDockWidget):
    """Builds job params from the sections, runs them as QgsTasks, and loads the styled results."""

    def __init__(self, iface, manager: BackendManager, parent: Optional[QWidget] = None):
        super().__init__(TITLE, parent)
        self.setObjectName("SkySenseDock")
        self.iface = iface
        self.manager = manager
        self.settings = PluginSettings()
        self.task: Optional[SkySenseJobTask] = None
        self.last_result: Optional[dict] = None
        self.last_group = None
        self.restart_button: Optional[QPushButton] = None
        self._pending: Optional[Callable[[], None]] = None
        self._ready_timer = QTimer(self)
        self._ready_timer.setInterval(250)
        self._ready_timer.timeout.connect(self._poll_backend_ready)

        canvas = iface.mapCanvas()
        self.landcover = LandcoverPage(canvas)
        self.change = ChangePage(canvas)
        self.damage = DamagePage(canvas)
        self.finetune = FinetunePage(canvas)
        self.results = ResultsPage()
        self.backend = BackendPage(manager.interpreter, str(manager.backend_root or ""))
        self.toolbox = QToolBox()
        for page, title in ((self.landcover, "Land cover"), (self.change, "Change detection"),
                            (self.damage, "Damage assessment"), (self.finetune, "Fine-tune"),
                            (self.results, "Results and export"), (self.backend, "Backend")):
            self.toolbox.addItem(_scrolled(page), title)
        self.output_dir = folder_widget(self.settings.output_dir())
        self.output_dir.fileChanged.connect(self.settings.set_output_dir)
        self.job_panel = JobPanel()

        body = QWidget()
        layout = QVBoxLayout(body)
        top = QWidget()
        f = form(top)
        f.setContentsMargins(0, 0, 0, 0)
        f.addRow(QLabel("Output folder"), self.output_dir)
        layout.addWidget(top)
        layout.addWidget(self.toolbox, 1)
        layout.addWidget(self.job_panel)
        self.setWidget(body)

        self.landcover.run_button.clicked.connect(lambda: self.run_page("landcover", self.landcover))
        self.change.run_button.clicked.connect(lambda: self.run_page("change", self.change))
        self.damage.run_button.clicked.connect(lambda: self.run_page("damage", self.damage))
        self.finetune.run_button.clicked.connect(lambda: self.run_page("finetune", self.finetune))
        self.results.export_button.clicked.connect(self.export_clicked)
        self.backend.start_button.clicked.connect(self.start_backend)
        self.backend.stop_button.clicked.connect(self.stop_backend)
        self.backend.refresh_button.clicked.connect(self.refresh_backend)
        self.job_panel.cancelRequested.connect(self.cancel_job)
        self.backend.start_with_panel.setChecked(self.settings.start_with_panel())
        self.backend.start_with_panel.toggled.connect(self.settings.set_start_with_panel)
        self._started_with_panel = False
        if self.manager.is_running():
            self.refresh_backend()

    # -- messages --------------------------------------------------------
    def _bar(self):
        return self.iface.messageBar()

    def notify(self, text: str, level=Qgis.Info, duration: int = 6) -> None:
        self._bar().pushMessage(TITLE, text, level, duration)

    def offer_restart(self, text: str) -> None:
        """Message bar entry with a 'Restart backend' button."""
        bar = self._bar()
        widget = bar.createMessage(TITLE, text)
        button = QPushButton("Restart backend", widget)
        button.clicked.connect(self.restart_backend)
        widget.layout().addWidget(button)
        bar.pushWidget(widget, Qgis.Critical)
        self.restart_button = button
        self.backend.show_health(None, text)

    # -- backend ---------------------------------------------------------
    def _apply_backend_settings(self) -> None:
        interpreter = self.backend.interpreter.filePath().strip()
        root = self.backend.backend_root.filePath().strip()
        if interpreter and interpreter != self.manager.interpreter:
            self.manager.interpreter = interpreter
            self.settings.set_interpreter(interpreter)
        if root and root != str(self.manager.backend_root or ""):
            from pathlib import Path
            self.manager.backend_root = Path(root)
            self.settings.set_backend_root(root)

    def panel_opened(self) -> None:
        """The user opened the panel: start the backend if they asked for that (once per QGIS session, so a
        backend that failed to start or was stopped by hand is not started again behind their back)."""
        if self._started_with_panel or not self.backend.start_with_panel.isChecked():
            return
        self._started_with_panel = True
        if not self.manager.is_running():
            self.start_backend()

    def start_backend(self, then: Optional[Callable[[], None]] = None) -> None:
        """Spawns the backend and polls for readiness without blocking QGIS."""
        self._pending = then if callable(then) else None
        self._apply_backend_settings()
        try:
            self.manager.start()
        except BackendProcessError as exc:
            self.notify(str(exc), Qgis.Critical, 0)
            self.backend.show_health(None, str(exc))
            self._pending = None
            return
        self.backend.show_health(None, "Starting the backend…")
        self.job_panel.status.setText("Starting the SkySense backend…")
        self._ready_timer.start()

    def _poll_backend_ready(self) -> None:
        try:
            ready = self.manager.is_ready()
        except BackendProcessError as exc:
            self._ready_timer.stop()
            self._pending = None
            self.offer_restart(f"The backend could not start. {exc}")
            return
        if not ready:
            return
        self._ready_timer.stop()
        self.refresh_backend()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending()

    def refresh_backend(self) -> Optional[dict]:
        """Health and model list; short local calls."""
        try:
            client = self.manager.client()
            health = client.health()
            models = client.models()
        except BackendError as exc:
            self.backend.show_health(None, str(exc))
            return None
        self.backend.show_health(health)
        for chooser in (self.landcover.model, self.change.model, self.damage.model, self.finetune.base_model):
            chooser.set_models(models)
        return health

    def stop_backend(self) -> None:
        self._ready_timer.stop()
        self.manager.stop()
        self.backend.show_health(None, "Backend stopped.")

    def restart_backend(self) -> None:
        self._bar().clearWidgets()
        self.manager.stop()
        self.start_backend()

    # -- jobs --------------------------------------------------------------
    def run_page(self, kind: str, page) -> Optional[SkySenseJobTask]:
        """Validates the section's inputs, then runs the job (starting the backend first if needed)."""
        if self.task is not None:
            self.notify("A SkySense job is already running; wait for it or cancel it.", Qgis.Warning)
            return None
        name, output_dir = job_name(kind), self.output_dir.filePath()
        if kind == "finetune" and page.resume.isChecked():
            target = self._finetune_to_resume()
            if target is None:
                return None
            output_dir, name = target
        try:
            params = page.params(output_dir, name)
        except (LayerSourceError, ValueError) as exc:
            self.notify(str(exc), Qgis.Critical, 10)
            return None
        except OSError as exc:  # e.g. the output folder cannot be created
            self.notify(f"Cannot use the output folder: {exc}", Qgis.Critical, 10)
            return None
        if not self.manager.is_running() or self.manager.has_exited():
            self.start_backend(then=lambda: self.submit(kind, params, name))
            return None
        return self.submit(kind, params, name)

    def _finetune_to_resume(self) -> Optional[tuple]:
        """(output folder, name) of the interrupted fine-tune, or None after saying why it cannot resume."""
        output_dir, name = self.settings.last_finetune()
        untick = "Untick 'Resume the last interrupted run' to start a new fine-tune."
        if not name:
            self.notify(f"There is no interrupted fine-tune to resume. {untick}", Qgis.Warning, 0)
            return None
        checkpoint = finetune_checkpoint(output_dir, name)
        if not os.path.isfile(checkpoint):
            self.notify(f"Cannot resume the fine-tune '{name}': it has no checkpoint ({checkpoint} does not "
                        f"exist; no epoch was completed, or the run was cancelled). {untick}", Qgis.Warning, 0)
            return None
        return output_dir, name

    def submit(self, kind: str, params: dict, name: str) -> SkySenseJobTask:
        task = SkySenseJobTask(f"SkySense {kind}: {name}", self.manager, kind, params)
        task.progressMessage.connect(self.job_panel.job_progress)
        task.succeeded.connect(lambda result, k=kind, n=name: self._job_succeeded(k, n, result))
        task.failedWithError.connect(lambda ek, msg, k=kind, p=params: self._job_failed(k, ek, msg, p))
        if kind == "finetune":
            self.settings.set_last_finetune(params["output_dir"], params["name"])  # what "Resume" continues
            self.finetune.job_started()
            task.progressMessage.connect(lambda f, m: self.finetune.progress_message(m))
        self.task = task
        self.job_panel.job_started(f"Running {kind} ({name})…")
        QgsApplication.taskManager().addTask(task)
        return task

    def cancel_job(self) -> None:
        if self.task is not None:
            self.job_panel.status.setText("Cancelling…")
            self.task.cancel()

    def _job_succeeded(self, kind: str, name: str, result: dict) -> None:
        self.task = None
        self.last_result = result
        try:
            self.last_group, layers = add_result_layers(result, name, kind)
        except ResultLoadError as exc:
            self.job_panel.job_ended(str(exc), False)
            self.notify(str(exc), Qgis.Critical, 0)
            return
        if kind == "finetune":
            if self.settings.last_finetune()[1] == name:
                self.settings.set_last_finetune("", "")  # finished: nothing left to resume
            self.finetune.resume.setChecked(False)
            self.finetune.show_result(result)
            self.refresh_backend()
            model = result.get("model") or next(
                (o["path"] for o in result.get("outputs") or [] if o.get("kind") == "model"), None)
            if model:  # ready to map land cover with the new model straight away
                self.landcover.model.set_model_path(model)
        how = run_summary(result)
        how = f" {how}." if how else ""
        if layers:
            self.job_panel.job_ended(f"{kind} finished: {len(layers)} layer(s) added in group '{name}'.{how}", True)
            self.notify(f"{kind} finished: results in group '{name}'.", Qgis.Success, 5)
        else:
            self.job_panel.job_ended(f"{kind} finished.{how}", True)
            self.notify(f"{kind} finished.", Qgis.Success, 5)
        if layers and kind != "finetune":
            self.iface.mapCanvas().refresh()

    def _job_failed(self, kind: str, error_kind: str, message: str, params: Optional[dict] = None) -> None:
        self.task = None
        self.job_panel.job_ended(message, False)
        if error_kind == "cancelled":
            self.notify(message, Qgis.Info)
        elif error_kind == "died":
            detail = self.manager.exit_message() if self.manager.has_exited() else message
            if (kind == "finetune" and params
                    and os.path.isfile(finetune_checkpoint(params["output_dir"], params["name"]))):
                detail += (" Its last completed epoch is saved: once the backend is back, tick 'Resume the last "
                           "interrupted run' and press Fine-tune to continue from there.")
            self.offer_restart(f"The {kind} job stopped because the backend went away. {detail}")
        else:
            self.notify(f"The {kind} job failed: {message}", Qgis.Critical, 0)

    # -- export ------------------------------------------------------------
    def export_clicked(self) -> None:
        path = self.results.ask_destination()
        if path:
            self.export_to(path)

    def export_to(self, path: str) -> Optional[str]:
        try:
            written = self.results.export_to(path)
        except ExportError as exc:
            self.notify(str(exc), Qgis.Critical, 0)
            return None
        self.notify(f"Saved {os.path.basename(written)}.", Qgis.Success, 5)
        return written

    def cleanup(self) -> None:
        """Called on unload: no map tool or rubber band of ours may outlive the dock."""
        self._ready_timer.stop()
        canvas = self.iface.mapCanvas()
        for aoi in (self.landcover.aoi, self.change.aoi, self.damage.aoi):
            if aoi.tool is not None:
                aoi.clear()
                if canvas.mapTool() is aoi.tool:
                    canvas.unsetMapTool(aoi.tool)
                aoi.tool = None

    def closeEvent(self, event):  # noqa: N802
        self._ready_timer.stop()
        super().closeEvent(event)
