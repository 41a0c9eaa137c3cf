"""Shared plumbing for SkySense Processing algorithms: backend start, job loop, result loading."""
from __future__ import annotations

from typing import Optional

from qgis.core import (QgsFeatureRequest, QgsGeometry, QgsProcessingAlgorithm, QgsProcessingContext,
                       QgsProcessingException, QgsProcessingLayerPostProcessorInterface)

from ..aoi_tools import aoi_payload
from ..backend_client import BackendError
from ..backend_manager import shared_manager
from ..icons import icon
from ..job_runner import run_job
from ..layer_sources import LayerSourceError
from ..result_layers import style_raster, style_vector

DEVICE_OPTIONS = ["auto", "cpu", "cuda"]


class _StyleResult(QgsProcessingLayerPostProcessorInterface):
    """Applies the SkySense style once Processing has loaded an output layer."""

    def __init__(self, output: dict, result: dict, kind: str):
        super().__init__()
        self.output, self.result, self.kind = output, result, kind

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        if self.output.get("kind") == "vector":
            style_vector(layer, self.output, self.result, self.kind)
        else:
            style_raster(layer, self.output, self.result, self.kind)


# Post-processors must outlive processAlgorithm (QGIS only keeps a raw pointer).
_KEEP_ALIVE = []


class SkySenseAlgorithm(QgsProcessingAlgorithm):
    """Subclasses define kind, parameters and build_params(); this class runs the job."""

    kind = ""
    icon_name = "skysense"

    def createInstance(self):  # noqa: N802
        return type(self)()

    def group(self):
        return "SkySense"

    def groupId(self):  # noqa: N802
        return "skysense"

    def icon(self):
        return icon(self.icon_name)

    def run_backend_job(self, params: dict, feedback) -> dict:
        """Starts the backend when needed and follows the job; honours feedback.isCanceled()."""
        manager = shared_manager()
        last = {"message": ""}

        def on_progress(fraction: float, message: str) -> None:
            feedback.setProgress(100.0 * fraction)
            if message and message != last["message"]:
                last["message"] = message
                feedback.pushInfo(message)

        try:
            feedback.pushInfo("Connecting to the SkySense backend…")
            client = manager.ensure_running()
            return run_job(client, self.kind, params, on_progress=on_progress,
                           is_cancelled=feedback.isCanceled, backend_exited=manager.has_exited)
        except (BackendError, LayerSourceError) as exc:
            raise QgsProcessingException(str(exc)) from exc

    def load_outputs(self, result: dict, context: QgsProcessingContext, group_name: str) -> dict:
        """Queues result layers to load (styled) when the algorithm completes; returns {role: path}."""
        paths = {}
        for output in result.get("outputs") or []:
            role = str(output.get("role") or output.get("kind"))
            path = output["path"]
            paths[role] = path
            if output.get("kind") not in ("raster", "vector"):
                continue
            uri = path + (f"|layername={output['layer']}" if output.get("layer") else "")
            details = QgsProcessingContext.LayerDetails(f"{group_name} {role}", context.project(), role)
            post = _StyleResult(output, result, self.kind)
            _KEEP_ALIVE.append(post)
            del _KEEP_ALIVE[:-200]  # Processing is done with old ones long before this
            details.setPostProcessor(post)
            details.forceName = True
            context.addLayerToLoadOnCompletion(uri, details)
        return paths


def aoi_from_source(algorithm: QgsProcessingAlgorithm, parameters, name: str, context) -> Optional[dict]:
    """Union of all features of an optional polygon source, with its CRS."""
    source = algorithm.parameterAsSource(parameters, name, context)
    if source is None:
        return None
    geoms = [f.geometry() for f in source.getFeatures(QgsFeatureRequest()) if f.hasGeometry()]
    if not geoms:
        raise QgsProcessingException("The area-of-interest layer has no polygons.")
    try:
        return aoi_payload(QgsGeometry.unaryUnion(geoms), source.sourceCrs())
    except LayerSourceError as exc:
        raise QgsProcessingException(str(exc)) from exc
