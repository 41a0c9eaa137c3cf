"""Local HTTP backend for the QGIS plugin: `python -m backend.server` (see docs/api_server.md)."""
