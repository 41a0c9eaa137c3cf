"""HTTP client for the local SkySense backend (token-protected, 127.0.0.1 only).

Pure `requests`: safe to call from QgsTask threads and Processing algorithms.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import requests

# Short calls (health, job status) must never freeze QGIS for long.
DEFAULT_TIMEOUT_S = 10.0


class BackendError(Exception):
    """The backend answered, but refused or failed the request; message is for the user."""


class BackendUnavailable(BackendError):
    """The backend could not be reached (not started, crashed, or wrong port)."""


class BackendClient:
    """Thin wrapper over the HTTP API documented in docs/ARCHITECTURE.md."""

    def __init__(self, base_url: str, token: str, timeout: float = DEFAULT_TIMEOUT_S):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        # Proxies configured in the environment must not see a localhost token.
        self._session.trust_env = False
        self._session.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def for_port(cls, port: int, token: str, timeout: float = DEFAULT_TIMEOUT_S) -> "BackendClient":
        return cls(f"http://127.0.0.1:{int(port)}", token, timeout)

    # -- API -------------------------------------------------------------
    def health(self) -> Dict[str, Any]:
        return self._request("GET", "/health")

    def models(self) -> List[Dict[str, Any]]:
        return self._request("GET", "/models")

    def submit(self, kind: str, params: Dict[str, Any]) -> Dict[str, Any]:
        return self._request("POST", "/jobs", json={"kind": kind, "params": params})

    def job(self, job_id: str) -> Dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}")

    def jobs(self) -> List[Dict[str, Any]]:
        return self._request("GET", "/jobs")

    def cancel(self, job_id: str) -> Dict[str, Any]:
        return self._request("POST", f"/jobs/{job_id}/cancel")

    # -- plumbing --------------------------------------------------------
    def _request(self, method: str, path: str, json: Optional[dict] = None) -> Any:
        url = self.base_url + path
        try:
            response = self._session.request(method, url, json=json, timeout=self.timeout)
        except requests.ConnectionError as exc:
            raise BackendUnavailable(f"The SkySense backend at {self.base_url} is not reachable "
                                     f"(it may have stopped): {_short(exc)}") from exc
        except requests.Timeout as exc:
            raise BackendUnavailable(f"The SkySense backend at {self.base_url} did not answer "
                                     f"within {self.timeout:.0f} s.") from exc
        except requests.RequestException as exc:  # e.g. the connection broke mid-answer
            raise BackendUnavailable(f"The connection to the SkySense backend broke: {_short(exc)}") from exc
        if response.status_code >= 400:
            raise BackendError(_error_text(response))
        try:
            return response.json()
        except ValueError as exc:
            # A cut-off body means the connection broke (typically the process died mid-answer);
            # callers retry or report a dead backend, as for a refused connection.
            raise BackendUnavailable(f"The backend sent an unreadable answer to {method} {path}.") from exc


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 160 else text[:157] + "..."


def _error_text(response: "requests.Response") -> str:
    """Turns FastAPI-style error bodies into one plain sentence."""
    detail: Any = None
    try:
        body = response.json()
        detail = body.get("detail", body.get("error")) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text.strip() or None
    if isinstance(detail, list):  # pydantic validation errors
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{where}: {item.get('msg', '')}".strip(": "))
            else:
                parts.append(str(item))
        detail = "; ".join(parts)
    if response.status_code in (401, 403):
        prefix = "The backend refused the request (wrong or missing token)"
    elif response.status_code == 404:
        prefix = "The backend does not know this resource"
    else:
        prefix = f"The backend reported an error ({response.status_code})"
    return f"{prefix}: {detail}" if detail else prefix + "."
