"""Pydantic schemas for job parameters, job requests and API answers.

One params model per job kind; the server, the OpenAPI document and the CLI all
validate against these, so a job means the same thing whichever way it arrives.
Unknown fields are refused (``extra="forbid"``) so a typo never silently falls
back to a default.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Names become file stems inside output_dir: letters, digits, space, '-', '_', '.'.
_NAME_RE = re.compile(r"^[\w][\w .\-]{0,99}$", re.UNICODE)

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
Device = Literal["auto", "cpu", "cuda"]


def check_name(value: str) -> str:
    """Refuse output names that could leave output_dir or hide files."""
    if "/" in value or "\\" in value or "\x00" in value:
        raise ValueError(f"name {value!r} must not contain path separators")
    if ".." in value:
        raise ValueError(f"name {value!r} must not contain '..'")
    if not _NAME_RE.match(value) or value != value.strip():
        raise ValueError(
            f"name {value!r} may only use letters, digits, spaces, '-', '_' and '.', "
            "must start with a letter or digit and be at most 100 characters")
    return value


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RasterInput(StrictModel):
    """One raster file; bands are 1-based indexes (null = the model's default bands)."""
    path: str = Field(..., min_length=1, description="absolute path of a raster file")
    bands: Optional[List[int]] = Field(None, min_length=1, max_length=64)

    @field_validator("bands")
    @classmethod
    def _bands_positive(cls, value):
        if value is not None and any(b < 1 for b in value):
            raise ValueError("band indexes are 1-based and must be >= 1")
        return value


class DatedRaster(StrictModel):
    """One acquisition of a time series (Sentinel-2: 10 bands [+ SCL]; Sentinel-1: VV, VH)."""
    path: str = Field(..., min_length=1, description="absolute path of a raster file")
    date: Optional[_dt.date] = Field(None, description="acquisition date YYYY-MM-DD (else read from the file)")
    bands: Optional[List[int]] = Field(None, description="accepted for symmetry with hr; the sensor's band "
                                                         "order is fixed (S2: 10 bands, S1: VV, VH)")
    scl: Optional[str] = Field(None, description="Sentinel-2 scene classification raster used as cloud mask")


class AOI(StrictModel):
    """Area of interest: a GeoJSON geometry and the CRS its coordinates are in."""
    geometry: Dict[str, Any] = Field(..., description="GeoJSON geometry object")
    crs: str = Field(..., min_length=1, description="authority string (EPSG:4326) or WKT")

    @field_validator("geometry")
    @classmethod
    def _geojson_shape(cls, value):
        if not isinstance(value.get("type"), str):
            raise ValueError("aoi.geometry must be a GeoJSON geometry with a 'type'")
        if value["type"] == "GeometryCollection":
            if not isinstance(value.get("geometries"), list):
                raise ValueError("aoi.geometry GeometryCollection needs 'geometries'")
        elif not isinstance(value.get("coordinates"), list):
            raise ValueError("aoi.geometry needs a 'coordinates' list")
        return value


class OutputParams(StrictModel):
    """Where results go: files are named <output_dir>/<name>.* ."""
    output_dir: str = Field(..., min_length=1, description="absolute folder for the outputs")
    name: str = Field(..., description="file stem of the outputs")

    _check_name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))


class InferenceOptions(StrictModel):
    tile_size: Optional[int] = Field(None, ge=32, le=4096,
                                     description="tile edge in pixels, a multiple of 32; null = the model's own")
    overlap: int = Field(64, ge=0, le=2048, description="overlap between tiles in pixels")
    batch_size: int = Field(0, ge=0, le=256, description="tiles per batch; 0 = automatic (8 on CUDA, 2 on CPU)")
    device: Device = "auto"

    @model_validator(mode="after")
    def _tile_geometry(self):
        if self.tile_size is None:  # the model's own tile size
            return self
        if self.tile_size % 32:
            raise ValueError(f"tile_size {self.tile_size} must be a multiple of 32")
        if self.overlap * 2 >= self.tile_size:
            raise ValueError(f"overlap {self.overlap} must be less than half of tile_size {self.tile_size}")
        return self


class VectorOptions(StrictModel):
    vectorize: bool = Field(True, description="also write polygons to a GeoPackage")
    min_area: float = Field(0.0, ge=0, description="drop polygons smaller than this (map units^2)")
    simplify: float = Field(0.0, ge=0, description="simplification tolerance (map units)")


class LandcoverParams(OutputParams, InferenceOptions, VectorOptions):
    """Land-cover mapping from very-high-resolution imagery, optionally with S2/S1 time series."""
    hr: List[RasterInput] = Field(default_factory=list, max_length=64)
    s2: List[DatedRaster] = Field(default_factory=list, max_length=366)
    s1: List[DatedRaster] = Field(default_factory=list, max_length=366)
    model: Optional[str] = Field(None, description="model file (.pth, or .onnx exported from one); null = default "
                                 "model (a 'temporal' .pth model is required with s2/s1)")
    aoi: Optional[AOI] = None
    name: str = "landcover"
    shapefile: bool = Field(False, description="also write the polygons as <name>.shp")
    confidence: bool = Field(False, description="also write <name>_confidence.tif (max probability, %)")
    allow_pixel_grid: bool = Field(False, description="accept images without CRS (pixel grid)")
    max_invalid_fraction: float = Field(0.5, ge=0, le=1, description="skip S2/S1 frames with more invalid pixels")
    runtime: Literal["auto", "torch", "onnx", "compile", "openvino"] = Field(
        "auto", description="auto = on CPU, OpenVINO for large jobs where installed (else ONNX Runtime on CPUs "
                            "without native bf16), bf16 PyTorch on CPUs with native bf16, PyTorch otherwise; "
                            "openvino = OpenVINO on CPU (bf16 where the CPU does bf16 natively); "
                            "compile = PyTorch through torch.compile (minutes to compile the first time for a "
                            "model and tile size, then faster per tile)")
    tta: bool = Field(False, description="average predictions over flips (slower, smoother)")

    @model_validator(mode="after")
    def _some_imagery(self):
        if not (self.hr or self.s2 or self.s1):
            raise ValueError("landcover needs at least one input raster in hr, s2 or s1")
        return self


ImageInput = Union[str, RasterInput, List[RasterInput]]
_IMAGE_DESC = "a raster path, {path, bands}, or a list of tiles of one date (mosaicked)"


class PairOptions(InferenceOptions):
    """Pre/post inference: tile_size null = the model's own; a smaller default overlap."""
    tile_size: Optional[int] = Field(None, ge=32, le=4096, description="null = the model's tile size")
    overlap: int = Field(32, ge=0, le=2048)
    landcover_model: Optional[str] = Field(None, description="land-cover model (from-to classes / building localisation)")
    landcover_tile_size: Optional[int] = Field(None, ge=32, le=4096)


class ChangeParams(OutputParams, PairOptions, VectorOptions):
    """Bi-temporal change detection between two images (the post image is aligned to the pre grid)."""
    pre: ImageInput = Field(..., description="before: " + _IMAGE_DESC)
    post: ImageInput = Field(..., description="after: " + _IMAGE_DESC)
    model: Optional[str] = Field(None, description="change model file; null = default")
    aoi: Optional[AOI] = None
    threshold: float = Field(0.5, ge=0, le=1, description="change probability threshold")
    symmetric: bool = Field(True, description="average pre->post and post->pre predictions")
    window: int = Field(4096, ge=256, le=65536, multiple_of=256,
                        description="post-processing window (px): bounds memory; polygons split at its edges")
    name: str = "change"


class DamageParams(OutputParams, PairOptions):
    """Per-building damage assessment (xBD scale) from pre/post disaster imagery."""
    pre: ImageInput = Field(..., description="before: " + _IMAGE_DESC)
    post: ImageInput = Field(..., description="after: " + _IMAGE_DESC)
    buildings: Optional[str] = Field(None, description="building footprints (vector); null = localise with the land-cover model")
    model: Optional[str] = Field(None, description="change or damage model file; null = default")
    aoi: Optional[AOI] = None
    ring_m: float = Field(2.0, ge=0, le=100, description="ring around each footprint (m)")
    min_coverage: float = Field(0.5, ge=0, le=1)
    min_building_area: float = Field(20.0, ge=0, description="m^2, localised buildings only")
    window: int = Field(4096, ge=256, le=65536, multiple_of=256,
                        description="post-processing window (px): bounds memory; results do not depend on it")
    name: str = "damage"


class FinetuneParams(OutputParams):
    """Fine-tune a land-cover model on a raster and user-drawn label polygons."""
    raster: str = Field(..., min_length=1)
    labels: str = Field(..., min_length=1, description="vector file with label polygons")
    class_field: str = Field(..., min_length=1, description="attribute holding the class value")
    layer: Optional[str] = Field(None, description="layer of a multi-layer labels file")
    base_model: Optional[str] = Field(None, description="null = the default land-cover model")
    epochs: int = Field(10, ge=1, le=1000)
    chip_size: int = Field(256, ge=64, le=2048, description="training chip edge, a multiple of 32")
    chips_per_epoch: int = Field(32, ge=1, le=100_000)
    batch_size: int = Field(4, ge=1, le=256)
    lr: Optional[float] = Field(None, gt=0, lt=1, description="learning rate; null = trainer default")
    patience: int = Field(5, ge=0, le=1000, description="early-stop after this many epochs without gain")
    val_fraction: float = Field(0.25, ge=0.05, le=0.5)
    seed: int = Field(0, ge=0, le=2 ** 31 - 1)
    freeze_encoder: bool = False
    resume: bool = False
    compare_random_forest: bool = True
    rf_trees: int = Field(60, ge=1, le=1000, description="trees in the random-forest baseline")
    device: Device = "auto"
    name: str = "finetuned"

    @field_validator("chip_size")
    @classmethod
    def _chip_multiple(cls, value):
        if value % 32:
            raise ValueError(f"chip_size {value} must be a multiple of 32")
        return value


class ExportParams(StrictModel):
    """Copy a vector layer to GeoPackage or ESRI Shapefile."""
    source: str = Field(..., min_length=1)
    layer: Optional[str] = Field(None, description="layer in a multi-layer source (GeoPackage)")
    dest: str = Field(..., min_length=1, description="absolute output file (.gpkg or .shp)")
    format: Optional[Literal["GPKG", "ESRI Shapefile"]] = Field(
        None, description="null = from the dest extension")

    @field_validator("dest")
    @classmethod
    def _dest_name(cls, value):
        parts = value.replace("\\", "/").split("/")
        if ".." in parts:
            raise ValueError(f"dest {value!r} must not contain '..'")
        stem = parts[-1]
        check_name(stem.rsplit(".", 1)[0] if "." in stem else stem)
        return value


PARAMS_MODELS: Dict[str, type] = {
    "landcover": LandcoverParams,
    "change": ChangeParams,
    "damage": DamageParams,
    "finetune": FinetuneParams,
    "export": ExportParams,
}


class JobInfo(BaseModel):
    """What GET /jobs/{id} answers."""
    id: str
    kind: str
    state: JobState
    progress: float = Field(..., ge=0, le=1)
    message: str
    result: Optional[Dict[str, Any]] = None
    error: Optional[str] = None
    created: float = Field(..., description="UNIX time the job was submitted")
    started: Optional[float] = None
    finished: Optional[float] = None
    queue_position: Optional[int] = Field(None, description="jobs ahead of this one while queued")


class JobCreated(BaseModel):
    id: str
    state: JobState


class JobStateAnswer(BaseModel):
    id: str
    state: JobState


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    device: Literal["cpu", "cuda"]
    gpu_name: Optional[str]
    torch: str
    cuda: Optional[str] = None
    pid: int
    jobs_queued: int
    jobs_running: int
    # what the backend prepares in the background for faster CPU jobs (openvino_warmup), if anything
    preparing: Optional[str] = None


class ModelEntry(BaseModel):
    path: str
    name: str
    task: Optional[str]
    classes: List[Dict[str, Any]] = Field(default_factory=list)
    bands: Dict[str, Any] = Field(default_factory=dict)
    source: Literal["project", "user"]
    tile_size: Optional[int] = None
    gsd: Optional[float] = None
    metrics: Dict[str, Any] = Field(default_factory=dict)
    error: Optional[str] = Field(None, description="why the file could not be read (then task is null)")
