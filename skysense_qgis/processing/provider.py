"""The SkySense Processing provider."""
from __future__ import annotations

from qgis.core import QgsProcessingProvider

from ..icons import icon
from .algorithms import ALGORITHMS


class SkySenseProvider(QgsProcessingProvider):
    def id(self):
        return "skysense"

    def name(self):
        return "SkySense"

    def longName(self):  # noqa: N802
        return "SkySense remote-sensing foundation model"

    def icon(self):
        return icon("skysense")

    def loadAlgorithms(self):  # noqa: N802
        for algorithm_class in ALGORITHMS:
            self.addAlgorithm(algorithm_class())
