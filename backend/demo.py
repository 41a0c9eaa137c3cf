"""`make demo`: map land cover on a real LoveDA tile the default model never saw, and score it.

Writes a georeferenced copy of the tile, the class GeoTIFF + QML, polygons (GeoPackage and shapefile),
a PNG preview and a side-by-side comparison PNG, then prints the accuracy against the tile's labels.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import rasterio

from backend.datasets.loveda import georeference_loveda_tile, loveda_palette, loveda_paths, read_loveda_tile
from backend.errors import SkySenseError
from backend.progress import Progress
from backend.trainers.metrics import ConfusionAccumulator, format_scores
from backend.trainers.train_defaults import DEFAULT_MODEL_PATH, HELDOUT_TILE

REPO = Path(__file__).resolve().parents[1]


def _console_progress() -> Progress:
    state = {"last": -1}

    def report(fraction: float, message: str) -> None:
        percent = int(fraction * 100)
        if percent // 10 != state["last"] // 10 or percent == 100:
            state["last"] = percent
            print(f"  {percent:3d}%  {message}", flush=True)

    return Progress(report)


def score_against_labels(class_raster: Path, mask: np.ndarray, classes: list[dict]) -> dict:
    """Confusion-matrix scores of a written class raster against a LoveDA mask (0 = unlabelled)."""
    values = [c["value"] for c in classes]
    with rasterio.open(class_raster) as dataset:
        predicted_values = dataset.read(1)
    lookup = np.full(256, -1, dtype=np.int64)
    for index, value in enumerate(values):
        lookup[value] = index
    truth = lookup[mask.astype(np.uint8)]
    predicted = lookup[predicted_values.astype(np.uint8)]
    labelled = (truth >= 0) & (predicted >= 0)
    accumulator = ConfusionAccumulator(len(values))
    accumulator.update(truth[labelled], predicted[labelled])
    return accumulator.scores([c["name"] for c in classes])


def comparison_png(image: np.ndarray, mask: np.ndarray, class_raster: Path, classes: list[dict], out: Path) -> Path:
    """Image | reference labels | prediction, side by side, for the README and a quick look."""
    from PIL import Image

    palette = np.zeros((256, 3), dtype=np.uint8)
    for entry in classes:
        colour = entry["color"].lstrip("#")
        palette[entry["value"]] = [int(colour[i:i + 2], 16) for i in (0, 2, 4)]
    with rasterio.open(class_raster) as dataset:
        predicted = dataset.read(1)
    panels = [np.moveaxis(image[:3], 0, -1), palette[mask], palette[predicted]]
    strip = np.concatenate([np.pad(p, ((4, 4), (4, 4), (0, 0)), constant_values=40) for p in panels], axis=1)
    picture = Image.fromarray(strip).resize((strip.shape[1] // 2, strip.shape[0] // 2))
    tmp = out.with_suffix(".tmp.png")
    picture.save(tmp)
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="real sample data folder")
    parser.add_argument("--out", default="demo_output", help="output folder")
    parser.add_argument("--tile", default=HELDOUT_TILE, help="LoveDA tile id (default: the held-out one)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)

    from backend.pipelines.landcover import run as run_landcover

    out_dir = Path(args.out).resolve()
    (out_dir / "input").mkdir(parents=True, exist_ok=True)
    png, _ = loveda_paths(args.data, args.tile)
    image, mask = read_loveda_tile(args.data, args.tile)
    classes = loveda_palette()["classes"]
    try:
        tif = georeference_loveda_tile(png, out_dir / "input" / f"loveda_{args.tile}.tif", tile_id=args.tile)
        print(f"SkySense demo: land cover of real LoveDA tile {args.tile} ({image.shape[2]}x{image.shape[1]} px, "
              f"georeferenced copy {tif})")
        print(f"model: {DEFAULT_MODEL_PATH.relative_to(REPO)}")
        started = time.perf_counter()
        result = run_landcover({
            "hr": [{"path": str(tif), "bands": [1, 2, 3]}],
            "model": str(DEFAULT_MODEL_PATH),
            "output_dir": str(out_dir),
            "name": "landcover",
            "tile_size": 512, "overlap": 64, "batch_size": 4, "device": args.device,
            "vectorize": True, "shapefile": True, "min_area": 20.0, "simplify": 0.5,
        }, _console_progress())
        seconds = time.perf_counter() - started
    except SkySenseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    raster = next(Path(o["path"]) for o in result["outputs"] if o["kind"] == "raster" and o.get("role") == "classes")
    scores = score_against_labels(raster, mask, classes)
    compare = comparison_png(image, mask, raster, classes, out_dir / "comparison.png")
    print(f"\ndone in {seconds:.1f} s on {result.get('device', '?')}; outputs:")
    for output in result["outputs"]:
        print(f"  {output['kind']:7s} {output['path']}" + (f"  (style {output['qml']})" if output.get("qml") else ""))
    print(f"  picture {compare}  (image | labels | prediction)")
    print()
    print(format_scores(scores, f"accuracy against the held-out labels of LoveDA tile {args.tile}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
