"""`make demo`: map land cover on a whole real LoveDA tile and score it on the pixels the default model never saw.

The default model trained on the left 768 columns of every sample tile (backend/trainers/train_defaults.py);
only each tile's right-most strip is held out. The demo maps one whole tile (by default the one whose held-out
strip has the most varied classes), writes a georeferenced copy of the tile, the class GeoTIFF + QML, polygons
(GeoPackage and shapefile), a PNG preview and a side-by-side comparison PNG (the held-out strip is marked),
then prints the accuracy on the held-out strip only, and, for reference, on the whole tile (which includes
pixels seen in training).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import rasterio

from backend.datasets.loveda import (georeference_loveda_tile, loveda_palette, loveda_paths, loveda_tile_ids,
                                     read_loveda_tile)
from backend.errors import SkySenseError
from backend.progress import Progress
from backend.trainers.metrics import ConfusionAccumulator, format_scores
from backend.trainers.train_defaults import DEFAULT_MODEL_PATH, TILES, heldout_window

REPO = Path(__file__).resolve().parents[1]


def _console_progress() -> Progress:
    state = {"last": -1}

    def report(fraction: float, message: str) -> None:
        percent = int(fraction * 100)
        if percent // 10 != state["last"] // 10 or percent == 100:
            state["last"] = percent
            print(f"  {percent:3d}%  {message}", flush=True)

    return Progress(report)


def most_varied_heldout_tile(data_dir) -> str:
    """The sample tile whose held-out strip has the most even class mix (highest entropy of its labels)."""
    def entropy(tile_id: str) -> float:
        _, mask = read_loveda_tile(data_dir, tile_id)
        strip = mask[heldout_window(*mask.shape)]
        counts = np.bincount(strip[strip > 0].ravel()).astype(float)
        shares = counts[counts > 0] / counts.sum()
        return float(-(shares * np.log(shares)).sum())

    return max((t for t in loveda_tile_ids(data_dir) if t in TILES), key=entropy)


def score_against_labels(class_raster: Path, mask: np.ndarray, classes: list[dict], window=None) -> dict:
    """Confusion-matrix scores of a written class raster against a LoveDA mask (0 = unlabelled),
    optionally inside a (row slice, column slice) window only."""
    values = [c["value"] for c in classes]
    with rasterio.open(class_raster) as dataset:
        predicted_values = dataset.read(1)
    if window is not None:
        predicted_values, mask = predicted_values[window], mask[window]
    lookup = np.full(256, -1, dtype=np.int64)
    for index, value in enumerate(values):
        lookup[value] = index
    truth = lookup[mask.astype(np.uint8)]
    predicted = lookup[predicted_values.astype(np.uint8)]
    labelled = (truth >= 0) & (predicted >= 0)
    accumulator = ConfusionAccumulator(len(values))
    accumulator.update(truth[labelled], predicted[labelled])
    return accumulator.scores([c["name"] for c in classes])


def comparison_png(image: np.ndarray, mask: np.ndarray, class_raster: Path, classes: list[dict], out: Path,
                   marked_column: int | None = None) -> Path:
    """Image | reference labels | prediction, side by side, for the README and a quick look; a magenta line at
    `marked_column` (the edge of the held-out strip)."""
    from PIL import Image

    palette = np.zeros((256, 3), dtype=np.uint8)
    for entry in classes:
        colour = entry["color"].lstrip("#")
        palette[entry["value"]] = [int(colour[i:i + 2], 16) for i in (0, 2, 4)]
    with rasterio.open(class_raster) as dataset:
        predicted = dataset.read(1)
    panels = [np.moveaxis(image[:3], 0, -1).copy(), palette[mask], palette[predicted]]
    if marked_column is not None:
        for panel in panels:
            panel[:, max(marked_column - 2, 0):marked_column + 2] = (255, 0, 255)   # in no class colour
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
    parser.add_argument("--tile", default=None,
                        help="LoveDA tile id (default: the tile whose held-out strip has the most varied classes)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)

    from backend.pipelines.landcover import run as run_landcover

    out_dir = Path(args.out).resolve()
    args.tile = args.tile or most_varied_heldout_tile(args.data)
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
            "tile_size": None, "overlap": 64, "batch_size": 0,  # the model file's tile (640), automatic batch
            "device": args.device,
            "vectorize": True, "shapefile": True, "min_area": 20.0, "simplify": 0.5,
        }, _console_progress())
        seconds = time.perf_counter() - started
    except SkySenseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    raster = next(Path(o["path"]) for o in result["outputs"] if o["kind"] == "raster" and o.get("role") == "classes")
    rows, cols = heldout_window(*mask.shape)
    heldout_scores = score_against_labels(raster, mask, classes, (rows, cols))
    tile_scores = score_against_labels(raster, mask, classes)
    compare = comparison_png(image, mask, raster, classes, out_dir / "comparison.png", marked_column=cols.start)
    print(f"\ndone in {seconds:.1f} s on {result.get('device', '?')}; outputs:")
    for output in result["outputs"]:
        print(f"  {output['kind']:7s} {output['path']}" + (f"  (style {output['qml']})" if output.get("qml") else ""))
    print(f"  picture {compare}  (image | labels | prediction; magenta line = left edge of the held-out strip)")
    print()
    strip = f"columns {cols.start}-{cols.stop - 1}, {rows.stop - rows.start}x{cols.stop - cols.start} px"
    print(format_scores(heldout_scores, f"ACCURACY ON HELD-OUT PIXELS ONLY: LoveDA tile {args.tile}, right-most strip "
                                        f"({strip}), never used to train or select the model"))
    print("  (mapped as part of the whole tile, so the strip's edge sees training pixels as context; the model "
          "file's stored figures score each strip on its own, over all tiles)")
    print()
    print(format_scores(tile_scores, f"for reference only: whole tile {args.tile}, includes pixels seen in training "
                                     f"(not a measure of accuracy on new imagery)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
