"""QgsTask wrapper around job_runner.run_job, so QGIS stays responsive while a job runs."""
from __future__ import annotations

from typing import Any, Dict, Optional

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .backend_client import BackendError
from .backend_manager import BackendManager
from .job_runner import BackendDied, JobCancelled, run_job


class SkySenseJobTask(QgsTask):
    """Runs one backend job; signals carry the outcome back to the GUI thread."""

    progressMessage = pyqtSignal(float, str)
    succeeded = pyqtSignal(dict)
    failedWithError = pyqtSignal(str, str)  # (error kind: failed|cancelled|died, plain message)

    def __init__(self, description: str, manager: BackendManager, kind: str, params: Dict[str, Any]):
        super().__init__(description, QgsTask.CanCancel)
        self.manager = manager
        self.kind = kind
        self.params = params
        self.job_id: Optional[str] = None
        self.result: Optional[Dict[str, Any]] = None
        self.error_kind = ""
        self.error_message = ""
        self.last_message = ""

    def run(self) -> bool:  # worker thread: no GUI calls here
        try:
            client = self.manager.client()
            self.result = run_job(client, self.kind, self.params,
                                  on_progress=self._on_progress,
                                  is_cancelled=self.isCanceled,
                                  on_submitted=self._on_submitted,
                                  backend_exited=self.manager.has_exited)
            return True
        except JobCancelled as exc:
            self.error_kind, self.error_message = "cancelled", str(exc)
        except BackendDied as exc:
            self.error_kind, self.error_message = "died", str(exc)
        except BackendError as exc:
            self.error_kind, self.error_message = "failed", str(exc)
        except Exception as exc:  # a bug must surface as a message, not a silent dead task
            self.error_kind, self.error_message = "failed", f"Unexpected error: {exc!r}"
        return False

    def _on_submitted(self, job_id: str) -> None:
        self.job_id = job_id

    def _on_progress(self, fraction: float, message: str) -> None:
        self.setProgress(100.0 * fraction)
        self.last_message = message
        self.progressMessage.emit(fraction, message)

    def finished(self, ok: bool) -> None:  # GUI thread
        if ok:
            self.succeeded.emit(self.result or {})
        else:
            if not self.error_kind and self.isCanceled():
                self.error_kind, self.error_message = "cancelled", f"The {self.kind} job was cancelled."
            self.failedWithError.emit(self.error_kind or "failed", self.error_message or "The job failed.")
