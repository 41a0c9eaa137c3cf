"""Fixtures for the training tests: georeferenced real LoveDA tiles, label layers, a small base model."""
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from backend.datasets.loveda import georeference_loveda, loveda_palette, loveda_polygons


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def loveda_tifs(data_dir, tmp_path_factory):
    """{tile_id: (image_tif, mask_tif)} for the real LoveDA tiles, georeferenced in EPSG:32650."""
    out = tmp_path_factory.mktemp("loveda_tifs")
    return {image.stem.split("_")[1]: (image, mask) for image, mask in georeference_loveda(data_dir, out)}


@pytest.fixture(scope="session")
def loveda_label_layer(loveda_tifs, tmp_path_factory):
    """Polygons from the top-left 384x384 of LoveDA tile 1's mask, in EPSG:4326, class names as text."""
    out = tmp_path_factory.mktemp("loveda_labels") / "labels.gpkg"
    return loveda_polygons(loveda_tifs["1"][1], out, window=Window(0, 0, 384, 384), min_pixels=150,
                           crs="EPSG:4326")


@pytest.fixture(scope="session")
def small_base_model(tmp_path_factory):
    """A randomly initialised skysense_seg_tiny LoveDA model file (keeps tests independent of training)."""
    from models.registry import create_model
    from backend.trainers.model_file import save_segmentation_model, segmentation_meta
    from backend.trainers.train_defaults import IMAGENET_NORMALIZATION

    torch.manual_seed(0)
    classes = loveda_palette()["classes"]
    model = create_model("skysense_seg_tiny", num_classes=len(classes), in_chans=3)
    path = tmp_path_factory.mktemp("base") / "base.pth"
    meta = segmentation_meta(model, classes, IMAGENET_NORMALIZATION, bands=[1, 2, 3], tile_size=256, gsd=0.3)
    return save_segmentation_model(path, model, meta)


def write_raster(path: Path, array: np.ndarray, crs="EPSG:32650", origin=(500000.0, 3400000.0), pixel=1.0):
    """A small north-up GeoTIFF from a [C, H, W] array."""
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1],
                       count=array.shape[0], dtype=array.dtype, crs=crs,
                       transform=from_origin(origin[0], origin[1], pixel, pixel)) as dst:
        dst.write(array)
    return path
