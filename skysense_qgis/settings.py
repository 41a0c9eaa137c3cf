"""Plugin settings stored in QgsSettings under SkySense/."""
from __future__ import annotations

import os

from qgis.core import QgsSettings

from .backend_manager import default_backend_root, default_interpreter

PREFIX = "SkySense/"


class PluginSettings:
    """Named accessors so keys are spelled in one place only."""

    def __init__(self):
        self._s = QgsSettings()

    def _get(self, key: str, default: str = "") -> str:
        value = self._s.value(PREFIX + key, default)
        return str(value) if value is not None else default

    def _set(self, key: str, value: str) -> None:
        self._s.setValue(PREFIX + key, value)

    def interpreter(self) -> str:
        # The environment variable wins so tests and packagers can pin the interpreter.
        return os.environ.get("SKYSENSE_BACKEND_PYTHON") or self._get("backend/interpreter") or default_interpreter()

    def set_interpreter(self, path: str) -> None:
        self._set("backend/interpreter", path)

    def backend_root(self) -> str:
        root = self._get("backend/root")
        if root:
            return root
        found = default_backend_root()
        return str(found) if found else ""

    def set_backend_root(self, path: str) -> None:
        self._set("backend/root", path)

    def start_with_panel(self) -> bool:
        """Whether the backend starts when the SkySense panel is shown (off unless the user ticks it)."""
        return self._get("backend/start_with_panel", "false").lower() == "true"

    def set_start_with_panel(self, on: bool) -> None:
        self._set("backend/start_with_panel", "true" if on else "false")

    def output_dir(self) -> str:
        return self._get("output_dir") or os.path.join(os.path.expanduser("~"), "skysense_outputs")

    def set_output_dir(self, path: str) -> None:
        self._set("output_dir", path)

    def last_finetune(self) -> tuple:
        """(output folder, job name) of the last fine-tune started from the dock and not finished; ('', '') if none."""
        return self._get("finetune/last_output_dir"), self._get("finetune/last_name")

    def set_last_finetune(self, output_dir: str, name: str) -> None:
        self._set("finetune/last_output_dir", output_dir)
        self._set("finetune/last_name", name)
