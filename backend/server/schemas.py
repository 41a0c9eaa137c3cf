"""Pydantic schemas for job parameters, job requests and API answers.

One params model per job kind; the server, the OpenAPI document and the CLI all
validate against these, so a job means the same thing whichever way it arrives.
Unknown fields are refused (``extra="forbid"``) so a typo never silently falls
back to a default.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Dict, List, Literal, Optional

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


class DatedRaster(RasterInput):
    """One acquisition of a time series (Sentinel-2 or Sentinel-1)."""
    date: Optional[_dt.date] = Field(None, description="acquisition date YYYY-MM-DD")


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
    tile_size: int = Field(512, ge=32, le=4096, description="tile edge in pixels, a multiple of 32")
    overlap: int = Field(64, ge=0, le=2048, description="overlap between tiles in pixels")
    batch_size: int = Field(4, ge=1, le=256)
    device: Device = "auto"

    @model_validator(mode="after")
    def _tile_geometry(self):
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
    model: Optional[str] = Field(None, description="project model file (.pth); null = default model")
    aoi: Optional[AOI] = None
    name: str = "landcover"

    @model_validator(mode="after")
    def _some_imagery(self):
        if not (self.hr or self.s2 or self.s1):
            raise ValueError("landcover needs at least one input raster in hr, s2 or s1")
        return self


class ChangeParams(OutputParams, InferenceOptions, VectorOptions):
    """Bi-temporal change detection between two co-registered images."""
    pre: str = Field(..., min_length=1, description="raster before the change")
    post: str = Field(..., min_length=1, description="raster after the change")
    model: Optional[str] = None
    landcover_model: Optional[str] = Field(None, description="optional model to label from-to classes")
    aoi: Optional[AOI] = None
    name: str = "change"


class DamageParams(OutputParams, InferenceOptions, VectorOptions):
    """Building damage assessment from pre/post disaster imagery."""
    pre: str = Field(..., min_length=1)
    post: str = Field(..., min_length=1)
    buildings: Optional[str] = Field(None, description="building footprints (vector) to score per building")
    model: Optional[str] = None
    aoi: Optional[AOI] = None
    name: str = "damage"


class FinetuneParams(OutputParams):
    """Fine-tune a model on a raster and user-drawn label polygons."""
    raster: str = Field(..., min_length=1)
    labels: str = Field(..., min_length=1, description="vector file with label polygons")
    class_field: str = Field(..., min_length=1, description="attribute holding the class value")
    base_model: Optional[str] = None
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(4, ge=1, le=256)
    tile_size: int = Field(256, ge=32, le=2048)
    learning_rate: float = Field(1e-4, gt=0, le=1.0)
    freeze_encoder: bool = True
    resume: bool = False
    device: Device = "auto"
    name: str = "finetuned"


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
        stem = value.replace("\\", "/").rsplit("/", 1)[-1]
        check_name(stem)
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
