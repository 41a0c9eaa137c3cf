"""Progress reporting and cooperative cancellation shared by pipelines, the server and the CLI."""
from __future__ import annotations

import threading
from typing import Callable, Optional

from backend.errors import CancelledError


class Progress:
    """Carries a fraction + message to a callback and a cancel flag back to the work loop."""

    def __init__(self, callback: Optional[Callable[[float, str], None]] = None,
                 cancel_event: Optional[threading.Event] = None):
        self._callback = callback
        self.cancel_event = cancel_event or threading.Event()
        self.fraction = 0.0
        self.message = ""

    def update(self, fraction: float, message: str = "") -> None:
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        if message:
            self.message = message
        if self._callback is not None:
            self._callback(self.fraction, self.message)
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise CancelledError("the job was cancelled")

    def sub(self, start: float, end: float) -> "Progress":
        """A child reporter mapping 0..1 onto start..end of this one."""
        parent = self

        class _Sub(Progress):
            def update(self, fraction: float, message: str = "") -> None:
                parent.update(start + (end - start) * min(max(float(fraction), 0.0), 1.0), message)

            def check_cancelled(self) -> None:
                parent.check_cancelled()

        return _Sub(cancel_event=self.cancel_event)
