"""SkySense for QGIS: a QGIS plugin driving the local SkySense backend (PyQGIS + requests only)."""


def classFactory(iface):  # noqa: N802 (QGIS API)
    from .plugin import SkySensePlugin
    return SkySensePlugin(iface)
