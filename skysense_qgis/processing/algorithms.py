"""One Processing algorithm per task: land cover, change, damage, fine-tune, export."""
from __future__ import annotations

import json
import os

from qgis.core import (QgsProcessing, QgsProcessingException, QgsProcessingOutputFile,
                       QgsProcessingOutputFolder, QgsProcessingOutputRasterLayer, QgsProcessingOutputString,
                       QgsProcessingOutputVectorLayer, QgsProcessingParameterBand, QgsProcessingParameterDefinition,
                       QgsProcessingParameterBoolean, QgsProcessingParameterEnum, QgsProcessingParameterField,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterFile,
                       QgsProcessingParameterFileDestination, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterMultipleLayers, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString,
                       QgsProcessingParameterVectorLayer)

from .. import job_params
from ..layer_sources import LayerSourceError, guess_date
from ..vector_export import ExportError, export_vector_layer
from .base import DEVICE_OPTIONS, SkySenseAlgorithm, aoi_from_source

MODEL_FILTER = "SkySense models (*.pth *.onnx)"


def _model_param(name="MODEL", description="Model file (empty: bundled default)"):
    return QgsProcessingParameterFile(name, description, QgsProcessingParameterFile.File,
                                      fileFilter=MODEL_FILTER, optional=True)


def _device_param():
    return QgsProcessingParameterEnum("DEVICE", "Device", options=DEVICE_OPTIONS, defaultValue=0)


def _runtime_param():
    param = QgsProcessingParameterEnum("RUNTIME", "Runtime (auto: fastest for this computer; compile: minutes "
                                       "of compiling the first time, then faster tiles)",
                                       options=list(job_params.RUNTIMES), defaultValue=0)
    param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return param


def _tile_param():
    """0 (the default) = the model file's own tile size, which is tuned per model."""
    return QgsProcessingParameterNumber("TILE_SIZE", "Tile size (pixels, 0 = the model's own)",
                                        QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0,
                                        maxValue=4096)


def _folder_param():
    return QgsProcessingParameterFolderDestination("OUTPUT_FOLDER", "Output folder")


def _checked(build):
    """Runs a params builder, turning bad input into a Processing error with the same words."""
    try:
        return build()
    except (LayerSourceError, ValueError) as exc:
        raise QgsProcessingException(str(exc)) from exc


class LandcoverAlgorithm(SkySenseAlgorithm):
    kind = "landcover"
    icon_name = "landcover"

    def name(self):
        return "landcover"

    def displayName(self):  # noqa: N802
        return "Map land cover"

    def shortHelpString(self):  # noqa: N802
        return ("Classifies a high-resolution raster into land-cover classes with SkySense, optionally "
                "fused with Sentinel-2 / Sentinel-1 time series (dates read from layer names such as "
                "S2A_20230514). Writes a class GeoTIFF (paletted, class names in the legend) and polygons.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "High-resolution raster"))
        self.addParameter(QgsProcessingParameterBand("BANDS", "Bands (R, G, B)", defaultValue=[1, 2, 3],
                                                     parentLayerParameterName="INPUT", allowMultiple=True))
        self.addParameter(QgsProcessingParameterMultipleLayers("S2", "Sentinel-2 layers (dated by name)",
                                                               QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterMultipleLayers("S1", "Sentinel-1 layers (dated by name)",
                                                               QgsProcessing.TypeRaster, optional=True))
        self.addParameter(_model_param())
        self.addParameter(_tile_param())
        self.addParameter(QgsProcessingParameterNumber("OVERLAP", "Tile overlap (pixels)",
                                                       QgsProcessingParameterNumber.Integer, 64, minValue=0))
        self.addParameter(_device_param())
        self.addParameter(_runtime_param())
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AOI", "Area of interest (polygons)", [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterBoolean("VECTORIZE", "Also write polygons", True))
        tta = QgsProcessingParameterBoolean("TTA", "Average over flips (test-time augmentation, about 2-3x the "
                                            "time; high-resolution maps only)", False)
        tta.setFlags(tta.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(tta)
        self.addParameter(_folder_param())
        self.addOutput(QgsProcessingOutputRasterLayer("CLASSES", "Land-cover classes"))
        self.addOutput(QgsProcessingOutputVectorLayer("POLYGONS", "Land-cover polygons"))
        self.addOutput(QgsProcessingOutputFolder("OUTPUT_FOLDER", "Output folder"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        hr = self.parameterAsRasterLayer(parameters, "INPUT", context)
        bands = self.parameterAsInts(parameters, "BANDS", context) or [1, 2, 3]
        folder = self.parameterAsString(parameters, "OUTPUT_FOLDER", context)
        name = job_params.job_name(self.kind)

        def stack(key):
            layers = self.parameterAsLayerList(parameters, key, context)
            return [(layer, guess_date(layer.name()) or guess_date(layer.source())) for layer in layers]

        params = _checked(lambda: job_params.landcover_params(
            hr, folder, name, bands=bands, s2=stack("S2"), s1=stack("S1"),
            model=self.parameterAsFile(parameters, "MODEL", context) or None,
            tile_size=self.parameterAsInt(parameters, "TILE_SIZE", context),
            overlap=self.parameterAsInt(parameters, "OVERLAP", context),
            device=DEVICE_OPTIONS[self.parameterAsEnum(parameters, "DEVICE", context)],
            runtime=job_params.RUNTIMES[self.parameterAsEnum(parameters, "RUNTIME", context)],
            aoi=aoi_from_source(self, parameters, "AOI", context),
            vectorize=self.parameterAsBool(parameters, "VECTORIZE", context),
            tta=self.parameterAsBool(parameters, "TTA", context)))
        result = self.run_backend_job(params, feedback)
        paths = self.load_outputs(result, context, name)
        return {"CLASSES": paths.get("classes"), "POLYGONS": paths.get("polygons"), "OUTPUT_FOLDER": folder}


class ChangeAlgorithm(SkySenseAlgorithm):
    kind = "change"
    icon_name = "change"

    def name(self):
        return "change"

    def displayName(self):  # noqa: N802
        return "Detect changes"

    def shortHelpString(self):  # noqa: N802
        return ("Finds changes between a 'before' and an 'after' raster (any CRSs; the after image is read on "
                "the before image's grid) inside an optional area of interest. Writes a change mask.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("PRE", "Before"))
        self.addParameter(QgsProcessingParameterRasterLayer("POST", "After"))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AOI", "Area of interest (polygons)", [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(_model_param())
        self.addParameter(_tile_param())
        self.addParameter(_device_param())
        self.addParameter(_folder_param())
        self.addOutput(QgsProcessingOutputRasterLayer("CHANGE", "Change mask"))
        self.addOutput(QgsProcessingOutputVectorLayer("POLYGONS", "Change polygons"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        name = job_params.job_name(self.kind)
        tile = self.parameterAsInt(parameters, "TILE_SIZE", context)
        params = _checked(lambda: job_params.change_params(
            self.parameterAsRasterLayer(parameters, "PRE", context),
            self.parameterAsRasterLayer(parameters, "POST", context),
            self.parameterAsString(parameters, "OUTPUT_FOLDER", context), name,
            aoi=aoi_from_source(self, parameters, "AOI", context),
            model=self.parameterAsFile(parameters, "MODEL", context) or None, tile_size=tile,
            device=DEVICE_OPTIONS[self.parameterAsEnum(parameters, "DEVICE", context)]))
        result = self.run_backend_job(params, feedback)
        paths = self.load_outputs(result, context, name)
        raster = next((p for r, p in paths.items() if r in ("change", "mask", "classes")), None)
        return {"CHANGE": raster, "POLYGONS": paths.get("polygons")}


class DamageAlgorithm(SkySenseAlgorithm):
    kind = "damage"
    icon_name = "damage"

    def name(self):
        return "damage"

    def displayName(self):  # noqa: N802
        return "Assess building damage"

    def shortHelpString(self):  # noqa: N802
        return ("Classes building damage (no damage / minor / major / destroyed) from pre- and post-event "
                "imagery; with building footprints, each building gets its damage class.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("PRE", "Pre-event raster"))
        self.addParameter(QgsProcessingParameterRasterLayer("POST", "Post-event raster"))
        self.addParameter(QgsProcessingParameterVectorLayer(
            "BUILDINGS", "Building footprints", [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(_model_param())
        self.addParameter(_tile_param())
        self.addParameter(_device_param())
        self.addParameter(_folder_param())
        self.addOutput(QgsProcessingOutputRasterLayer("DAMAGE", "Damage classes"))
        self.addOutput(QgsProcessingOutputVectorLayer("BUILDINGS_OUT", "Buildings with damage class"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        name = job_params.job_name(self.kind)
        tile = self.parameterAsInt(parameters, "TILE_SIZE", context)
        params = _checked(lambda: job_params.damage_params(
            self.parameterAsRasterLayer(parameters, "PRE", context),
            self.parameterAsRasterLayer(parameters, "POST", context),
            self.parameterAsString(parameters, "OUTPUT_FOLDER", context), name,
            buildings=self.parameterAsVectorLayer(parameters, "BUILDINGS", context),
            model=self.parameterAsFile(parameters, "MODEL", context) or None, tile_size=tile,
            device=DEVICE_OPTIONS[self.parameterAsEnum(parameters, "DEVICE", context)]))
        result = self.run_backend_job(params, feedback)
        outputs = result.get("outputs") or []
        self.load_outputs(result, context, name)
        raster = next((o["path"] for o in outputs if o.get("kind") == "raster"), None)
        vector = next((o["path"] for o in outputs if o.get("kind") == "vector"), None)
        return {"DAMAGE": raster, "BUILDINGS_OUT": vector}


class FinetuneAlgorithm(SkySenseAlgorithm):
    kind = "finetune"
    icon_name = "finetune"

    def name(self):
        return "finetune"

    def displayName(self):  # noqa: N802
        return "Fine-tune a land-cover model"

    def shortHelpString(self):  # noqa: N802
        return ("Trains a SkySense land-cover model on your labelled polygons (a field holds the class). "
                "By default the whole model is fine-tuned; with a frozen encoder only the decoder head is "
                "trained (faster, safer with very few labels). "
                "The backend saves a checkpoint (<name>_checkpoint.pth) in the output folder after every epoch: "
                "to continue a run that was interrupted (e.g. the backend was killed), run again with Resume "
                "ticked, the same output folder and output name, and the same raster, labels, class field, "
                "epochs and encoder setting; "
                "training goes on after the last saved epoch. "
                "Returns the new model file (<name>.pth) and its accuracy metrics (JSON).")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster"))
        self.addParameter(QgsProcessingParameterVectorLayer(
            "LABELS", "Labelled polygons", [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField("CLASS_FIELD", "Class field", parentLayerParameterName="LABELS"))
        self.addParameter(_model_param("BASE_MODEL", "Base model (empty: bundled default)"))
        self.addParameter(QgsProcessingParameterNumber("EPOCHS", "Epochs", QgsProcessingParameterNumber.Integer,
                                                       10, minValue=1, maxValue=1000))
        self.addParameter(QgsProcessingParameterBoolean("FREEZE_ENCODER", "Freeze the encoder", False))
        self.addParameter(QgsProcessingParameterString(
            "NAME", "Output name (empty: finetune_<date>_<time>; needed to resume)", optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            "RESUME", "Resume an interrupted run (same output folder and name) from its last saved epoch", False))
        self.addParameter(_device_param())
        self.addParameter(_folder_param())
        self.addOutput(QgsProcessingOutputFile("MODEL", "Fine-tuned model"))
        self.addOutput(QgsProcessingOutputString("METRICS", "Metrics (JSON)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        resume = self.parameterAsBool(parameters, "RESUME", context)
        name = self.parameterAsString(parameters, "NAME", context).strip()
        if resume and not name:
            raise QgsProcessingException("Resume needs the output name of the interrupted run (NAME).")
        name = name or job_params.job_name(self.kind)
        params = _checked(lambda: job_params.finetune_params(
            self.parameterAsRasterLayer(parameters, "INPUT", context),
            self.parameterAsVectorLayer(parameters, "LABELS", context),
            self.parameterAsString(parameters, "CLASS_FIELD", context),
            self.parameterAsString(parameters, "OUTPUT_FOLDER", context), name,
            base_model=self.parameterAsFile(parameters, "BASE_MODEL", context) or None,
            epochs=self.parameterAsInt(parameters, "EPOCHS", context),
            freeze_encoder=self.parameterAsBool(parameters, "FREEZE_ENCODER", context), resume=resume,
            device=DEVICE_OPTIONS[self.parameterAsEnum(parameters, "DEVICE", context)]))
        checkpoint = job_params.finetune_checkpoint(params["output_dir"], params["name"])
        if resume and not os.path.isfile(checkpoint):
            raise QgsProcessingException(f"Nothing to resume: {checkpoint} does not exist (no epoch of a run named "
                                         f"'{params['name']}' was completed in that folder). Untick Resume to "
                                         "start a new run.")
        result = self.run_backend_job(params, feedback)
        model = next((o["path"] for o in result.get("outputs") or [] if o.get("kind") == "model"), None)
        return {"MODEL": model, "METRICS": json.dumps(result.get("metrics") or {})}


class ExportAlgorithm(SkySenseAlgorithm):
    kind = "export"
    icon_name = "export"

    def name(self):
        return "export"

    def displayName(self):  # noqa: N802
        return "Export vector result"

    def shortHelpString(self):  # noqa: N802
        return ("Saves a vector layer (e.g. SkySense polygons or damaged buildings) as a GeoPackage or "
                "shapefile, keeping its CRS and attributes. The target is replaced only once fully written.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterVectorLayer("INPUT", "Vector layer"))
        self.addParameter(QgsProcessingParameterBoolean("SELECTED_ONLY", "Selected features only", False))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Destination", "GeoPackage (*.gpkg);;ESRI Shapefile (*.shp)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self.parameterAsVectorLayer(parameters, "INPUT", context)
        dest = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        try:
            written = export_vector_layer(layer, dest, self.parameterAsBool(parameters, "SELECTED_ONLY", context))
        except ExportError as exc:
            raise QgsProcessingException(str(exc)) from exc
        feedback.pushInfo(f"Wrote {written}")
        return {"OUTPUT": written}


ALGORITHMS = [LandcoverAlgorithm, ChangeAlgorithm, DamageAlgorithm, FinetuneAlgorithm, ExportAlgorithm]
