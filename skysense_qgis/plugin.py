"""Plugin entry object: toolbar action, menu, dock toggle and the Processing provider."""
from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QAction

from .backend_manager import shared_manager
from .icons import icon

MENU = "&SkySense"


class SkySensePlugin:
    def __init__(self, iface):
        self.iface = iface
        self.dock = None
        self.provider = None
        self.actions = []
        self.toolbar = None

    def initProcessing(self):  # noqa: N802 (QGIS API)
        from .processing.provider import SkySenseProvider
        if self.provider is None:
            registry = QgsApplication.processingRegistry()
            stale = registry.providerById("skysense")
            if stale is not None:  # left over from a plugin reload: replace it
                registry.removeProvider(stale)
            self.provider = SkySenseProvider()
            registry.addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        self.toolbar = self.iface.addToolBar("SkySense")
        self.toolbar.setObjectName("SkySenseToolbar")
        self.dock_action = QAction(icon("skysense"), "SkySense panel", self.iface.mainWindow())
        self.dock_action.setCheckable(True)
        self.dock_action.setToolTip("Show or hide the SkySense panel")
        # triggered (user clicks) and not toggled: the dock's visibilityChanged also fires when it is merely
        # tabbed behind another panel, and that must not hide it for good.
        self.dock_action.triggered.connect(self.set_dock_visible)
        self.toolbar.addAction(self.dock_action)
        self.iface.addPluginToMenu(MENU, self.dock_action)
        self.actions.append(self.dock_action)
        for name, title, section in (("landcover", "Map land cover…", 0), ("change", "Detect changes…", 1),
                                     ("damage", "Assess damage…", 2), ("finetune", "Fine-tune a model…", 3)):
            action = QAction(icon(name), title, self.iface.mainWindow())
            action.triggered.connect(lambda _=False, s=section: self.show_section(s))
            self.iface.addPluginToMenu(MENU, action)
            self.actions.append(action)

    def _ensure_dock(self):
        if self.dock is None:
            from .ui.dock import SkySenseDock
            self.dock = SkySenseDock(self.iface, shared_manager(), self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
            self.dock.visibilityChanged.connect(self.dock_action.setChecked)
        return self.dock

    def set_dock_visible(self, visible: bool):
        if visible:
            self._ensure_dock().show()
            self.dock.raise_()
            self.dock.panel_opened()
        elif self.dock is not None:
            self.dock.hide()

    def show_section(self, index: int):
        self.set_dock_visible(True)
        self.dock_action.setChecked(True)
        self.dock.toolbox.setCurrentIndex(index)

    def unload(self):
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
        self.actions = []
        if self.toolbar is not None:
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.dock is not None:
            if self.dock.task is not None:
                self.dock.task.cancel()
            self.dock.cleanup()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.provider is not None:
            registry = QgsApplication.processingRegistry()
            if registry.providerById("skysense") is not None:
                registry.removeProvider("skysense")
            self.provider = None
        shared_manager().stop()
