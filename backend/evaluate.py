"""`make eval`: accuracy tables on the real sample data.

1. Land cover: the committed default model on the held-out strips of the LoveDA tiles (the right-most columns
   of each tile, never used in training; see train_defaults.split_regions), each strip written as its own
   georeferenced GeoTIFF and mapped through the product's own land-cover pipeline; one confusion matrix.
2. Fine-tuning vs random forest: polygons digitised (polygonised from the mask, shrunk inwards) on the left
   half of tile 2; both methods scored on held-out whole polygons and, densely, on tile 2's held-out strip,
   which neither the polygons nor the default (base) model's training touched. The held-out polygons lie
   inside the default model's training region, so that figure flatters the fine-tuned model.
3. Change detection / damage: the change engineer's evaluators when present.
4. Tile sizes: the default model at several tile sizes (and at its own tile with averaging over flips), each
   scored two ways on the held-out pixels: the strips mapped on their own, and the whole tiles mapped and
   scored on their strips. This is the evidence behind the model file's tile_size (README, Performance).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _fmt(value, digits: int = 3) -> str:
    return "  n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _scores_against_mask(prediction_values: np.ndarray, mask: np.ndarray, classes: list[dict]) -> dict:
    """Score a class-value raster against a LoveDA mask; classes matched by name to LoveDA codes."""
    from backend.datasets.loveda import loveda_palette
    from backend.trainers.metrics import ConfusionAccumulator

    code_of = {c["name"]: c["value"] for c in loveda_palette()["classes"]}
    index_of_code = {code_of[c["name"]]: i for i, c in enumerate(classes) if c["name"] in code_of}
    index_of_value = {c["value"]: i for i, c in enumerate(classes)}
    truth = np.full(mask.shape, -1, np.int64)
    for code, index in index_of_code.items():
        truth[mask == code] = index
    predicted = np.full(prediction_values.shape, len(classes) - 1, np.int64)
    for value, index in index_of_value.items():
        predicted[prediction_values == value] = index
    accumulator = ConfusionAccumulator(len(classes))
    accumulator.update(truth, predicted)
    scores = accumulator.scores([c["name"] for c in classes])
    # mIoU over the classes that occur in the truth: comparable between models with other class lists (a
    # model's extra classes count only as errors of the classes present, not as extra IoU-0 terms)
    present = [iou for iou, n in zip(scores["iou"], scores["support"]) if n and iou is not None]
    scores["miou_present"] = float(np.mean(present)) if present else None
    return scores


def _write_window(source_tif: Path, window, out_tif: Path) -> Path:
    """A georeferenced GeoTIFF of a (row slice, column slice) window of another one."""
    import rasterio
    from rasterio.windows import Window

    rows, cols = window
    box = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
    with rasterio.open(source_tif) as src:
        profile = {**src.profile, "width": box.width, "height": box.height,
                   "transform": src.window_transform(box)}
        data = src.read(window=box)
    with rasterio.open(out_tif, "w", **profile) as dst:
        dst.write(data)
    return out_tif


def landcover_row(data_dir: Path, work: Path, model_path: Path) -> dict:
    """Default model through run_landcover on each tile's held-out strip (mapped on its own); one score."""
    import rasterio
    from backend.datasets.loveda import georeference_loveda, read_loveda_tile
    from backend.pipelines.landcover import run_landcover
    from backend.trainers.train_defaults import TEST_COLS, TILES, heldout_window

    predictions, masks, seconds = [], [], 0.0
    for image_tif, _ in georeference_loveda(data_dir, work / "loveda", tile_ids=list(TILES)):
        tile_id = image_tif.stem.split("_")[1]
        _, mask = read_loveda_tile(data_dir, tile_id)
        window = heldout_window(*mask.shape)
        strip_tif = _write_window(image_tif, window, work / "loveda" / f"loveda_{tile_id}_heldout.tif")
        started = time.perf_counter()
        result = run_landcover({"hr": [{"path": str(strip_tif)}], "model": str(model_path),
                                "output_dir": str(work / "lc"), "name": f"heldout_{tile_id}", "vectorize": False,
                                "device": "cpu"})
        seconds += time.perf_counter() - started
        raster = next(o["path"] for o in result["outputs"] if o["role"] == "classes")
        with rasterio.open(raster) as src:
            predictions.append(src.read(1))
        masks.append(mask[window])
    mask = np.concatenate(masks, axis=1)
    scores = _scores_against_mask(np.concatenate(predictions, axis=1), mask, result["classes"])
    scores["seconds"] = round(seconds, 1)
    # Reference point: a map that is one class everywhere (the most frequent one) scores this OA.
    counts = np.bincount(mask[mask > 0].ravel())
    scores["majority_class_oa"] = float(counts.max() / counts.sum())
    scores["dataset"] = (f"LoveDA tiles {', '.join(TILES)}, held-out strips (right-most {TEST_COLS} columns of each, "
                         f"{mask.shape[0]}x{TEST_COLS} px, each mapped on its own)")
    return scores


def tile_rows(data_dir: Path, work: Path, model_path: Path, tiles=(512, 640, 768, 1024), overlap: int = 64) -> dict:
    """{"<tile>": {"strips": scores, "whole": scores}, "<own tile> tta": ...}: the held-out LoveDA pixels mapped
    through run_landcover at each tile size, once strip by strip and once as whole tiles."""
    import rasterio
    from backend.datasets.loveda import georeference_loveda, read_loveda_tile
    from backend.pipelines.landcover import run_landcover
    from backend.trainers.train_defaults import TILES, heldout_window
    from models.checkpoint import read_model_meta

    scenes = []
    for image_tif, _ in georeference_loveda(data_dir, work / "loveda_tiles", tile_ids=list(TILES)):
        tile_id = image_tif.stem.split("_")[1]
        mask = read_loveda_tile(data_dir, tile_id)[1]
        window = heldout_window(*mask.shape)
        strip = _write_window(image_tif, window, work / "loveda_tiles" / f"strip_{tile_id}.tif")
        scenes.append((tile_id, image_tif, strip, window, mask[window]))
    own = int(read_model_meta(model_path).get("tile_size") or 512)
    runs = [(str(t), t, False) for t in tiles] + [(f"{own} tta", own, True)]
    rows = {}
    for key, tile, tta in runs:
        rows[key] = {}
        for mode in ("strips", "whole"):
            predictions, masks = [], []
            for tile_id, image, strip, window, mask in scenes:
                result = run_landcover({"hr": [{"path": str(strip if mode == "strips" else image)}],
                                        "model": str(model_path), "output_dir": str(work / "tiles_out"),
                                        "name": f"{mode}_{tile_id}_{tile}_{int(tta)}", "vectorize": False,
                                        "device": "cpu", "tile_size": tile, "overlap": overlap, "tta": tta})
                with rasterio.open(next(o["path"] for o in result["outputs"] if o["role"] == "classes")) as src:
                    labels = src.read(1)
                predictions.append(labels if mode == "strips" else labels[window])
                masks.append(mask)
            scores = _scores_against_mask(np.concatenate(predictions, axis=1), np.concatenate(masks, axis=1),
                                          result["classes"])
            rows[key][mode] = {"overall_accuracy": scores["overall_accuracy"], "miou": scores["miou"]}
    rows["own_tile"] = own
    return rows


def finetune_rows(data_dir: Path, work: Path, model_path: Path, epochs: int) -> dict:
    """Fine-tune the default model and a random forest on polygons from the left half of tile 2; dense scores on
    tile 2's held-out strip."""
    import rasterio
    from rasterio.windows import Window
    from backend.datasets.chips import normalise
    from backend.datasets.loveda import georeference_loveda, loveda_polygons, read_loveda_tile
    from backend.datasets.polygons import build_polygon_dataset
    from backend.trainers.finetune import adapt_head, finetune_on_polygons, load_base_model
    from backend.trainers.predict import predict_classes
    from backend.trainers.random_forest import predict_scene, train_random_forest
    from backend.trainers.train_defaults import heldout_window

    tile_id = "2"
    (image_tif, mask_tif), = georeference_loveda(data_dir, work / "loveda", tile_ids=[tile_id])
    # Sparse "digitising": up to 10 pieces per class, cut on a 128 px grid, shrunk 0.9 m from class borders.
    labels = loveda_polygons(mask_tif, work / "user_polygons.gpkg", window=Window(0, 0, 512, 1024),
                             min_pixels=300, shrink=0.9, crs="EPSG:4326", cell=128, max_per_class=10)
    result = finetune_on_polygons(image_tif, labels, "class", work / "finetune", name="finetuned",
                                  base_model=model_path, epochs=epochs, chips_per_epoch=32, patience=4,
                                  compare_random_forest=True,
                                  log=lambda message: print(f"  fine-tune: {message}", flush=True))
    # Dense accuracy on the held-out strip, which neither the polygons nor the default model's training touched.
    image, mask = read_loveda_tile(data_dir, tile_id)
    window = heldout_window(*mask.shape)
    right_image, right_mask = image[(slice(None), *window)], mask[window]
    model, meta = load_base_model(result["model"])
    norm = meta["normalization"]["hr"]
    classes = result["classes"]
    values = np.array([c["value"] for c in classes])
    fine_pred = values[predict_classes(model, normalise(right_image, norm["mean"], norm["std"]), tile=512, overlap=64)]
    dataset = build_polygon_dataset(image_tif, labels, "class", bands=[1, 2, 3], palette_classes=meta["classes"])
    forest = train_random_forest(dataset.train, dataset.val, [c["name"] for c in dataset.classes])
    rf_pred = values[predict_scene(forest.classifier, right_image)]
    base_model, base_meta = load_base_model(model_path)
    base_norm = base_meta["normalization"]["hr"]
    base_values = np.array([c["value"] for c in base_meta["classes"]])
    base_input = normalise(right_image, base_norm["mean"], base_norm["std"])
    base_pred = base_values[predict_classes(base_model, base_input, tile=512, overlap=64)]
    # The default model limited to the polygons' classes (its own classifier weights for them): what the
    # fine-tune starts from, so the fair reference for what fine-tuning added.
    restricted, _ = adapt_head(base_model, base_meta, classes)
    restricted_pred = values[predict_classes(restricted, base_input, tile=512, overlap=64)]
    return {
        "classes": classes,
        "polygons": {"train": len(result["train_polygons"]), "val": len(result["val_polygons"])},
        "heldout_polygons": {"finetuned": result["metrics"], "random_forest": result["metrics"]["random_forest"],
                             "default_model_same_classes": result["metrics"]["base_model"]},
        "per_class": result["per_class"],
        "heldout_strip": {"finetuned": _scores_against_mask(fine_pred, right_mask, classes),
                       "random_forest": _scores_against_mask(rf_pred, right_mask, classes),
                       "default_model": _scores_against_mask(base_pred, right_mask, base_meta["classes"]),
                       "default_model_same_classes": _scores_against_mask(restricted_pred, right_mask, classes)},
        "loss_curve": result["loss_curve"],
        "epochs_run": result["metrics"]["epochs_run"],
        "best_epoch": result["metrics"]["best_epoch"],
    }


def change_rows(data_dir: Path) -> dict:
    """Rows from the change engineer's evaluators; a note where one is missing or fails."""
    rows = {}
    try:
        from backend.trainers.change import evaluate_levir
    except ImportError as exc:
        rows["change"] = {"note": f"skipped: backend.trainers.change.evaluate_levir not available ({exc})"}
    else:
        try:
            rows["change"] = evaluate_levir(data_dir)
        except Exception as exc:   # report, do not hide the other tables
            rows["change"] = {"note": f"failed: {type(exc).__name__}: {exc}"}
    try:
        import backend.trainers.damage as damage
    except ImportError:
        rows["damage"] = {"note": "skipped: backend.trainers.damage is not available"}
    else:
        evaluator = next((getattr(damage, name) for name in ("evaluate_damage", "evaluate_joplin", "evaluate")
                          if callable(getattr(damage, name, None))), None)
        if evaluator is None:
            rows["damage"] = {"note": "skipped: backend.trainers.damage has no evaluate_damage(data_dir)"}
        else:
            try:
                rows["damage"] = evaluator(data_dir)
            except Exception as exc:
                rows["damage"] = {"note": f"failed: {type(exc).__name__}: {exc}"}
    return rows


def print_report(report: dict) -> None:
    lc = report.get("landcover")
    print("\n=== Land cover: default model, held-out LoveDA strips (product pipeline) ===")
    if lc and "note" not in lc:
        print(f"model {report['model']}\n{lc['dataset']}, mapped in {lc['seconds']} s")
        print(f"OA {_fmt(lc['overall_accuracy'])}   mIoU {_fmt(lc['miou'])}   kappa {_fmt(lc['kappa'])}   "
              f"(one-class map OA {_fmt(lc['majority_class_oa'])})")
        print(f"{'class':<14}{'IoU':>8}{'recall':>8}{'precision':>10}{'pixels':>10}")
        for name, iou, rec, prec, n in zip(lc["class_names"], lc["iou"], lc["producers_accuracy"],
                                           lc["users_accuracy"], lc["support"]):
            print(f"{name:<14}{_fmt(iou):>8}{_fmt(rec):>8}{_fmt(prec):>10}{n:>10}")
    else:
        print(lc["note"] if lc else "not run")

    ft = report.get("finetune")
    print("\n=== Fine-tuning vs random forest: polygons on the left half of LoveDA tile 2 ===")
    if ft and "note" not in ft:
        print(f"{ft['polygons']['train']} training / {ft['polygons']['val']} validation polygons; "
              f"{ft['epochs_run']} epochs, best epoch {ft.get('best_epoch', '?')} (0 = base model kept)")
        fine, forest = ft["heldout_polygons"]["finetuned"], ft["heldout_polygons"]["random_forest"]
        same = ft["heldout_polygons"].get("default_model_same_classes") or {}
        right = ft["heldout_strip"]
        strip_same = right.get("default_model_same_classes") or {}
        print(f"{'':<36}{'fine-tuned':>11}{'random forest':>15}{'default model':>15}{'default, same classes':>23}")

        def row(label, finetuned, forest_value, default="", default_same=None):
            print(f"{label:<36}{_fmt(finetuned):>11}{_fmt(forest_value):>15}"
                  f"{(_fmt(default) if default != '' else ''):>15}{_fmt(default_same):>23}")

        row("OA, held-out polygons", fine["overall_accuracy"], forest["overall_accuracy"], "",
            same.get("overall_accuracy"))
        row("mIoU, held-out polygons", fine["miou"], forest["miou"], "", same.get("miou"))
        strips = (right["finetuned"], right["random_forest"], right["default_model"])
        row("OA, held-out strip (dense)", *(x["overall_accuracy"] for x in strips),
            strip_same.get("overall_accuracy"))
        row("mIoU, held-out strip (dense)", *(x["miou"] for x in strips), strip_same.get("miou"))
        row("mIoU, strip, classes present", *(x.get("miou_present") for x in strips), strip_same.get("miou_present"))
        default_iou = dict(zip(right["default_model"]["class_names"], right["default_model"]["iou"]))
        for index, cls in enumerate(ft["classes"]):
            row(f"IoU {cls['name']}, strip", right["finetuned"]["iou"][index], right["random_forest"]["iou"][index],
                default_iou.get(cls["name"]), (strip_same.get("iou") or [None] * (index + 1))[index])
        print("loss curve: " + ", ".join(f"{p['epoch']}: {p['train_loss']:.3f}/{p['val_loss']:.3f}"
                                         for p in ft["loss_curve"]) + "  (epoch: train/val loss)")
    else:
        print(ft["note"] if ft else "not run")

    tiles = report.get("tiles")
    if tiles:
        print(f"\n=== Tile size: held-out LoveDA pixels, overlap 64 (the model file's own tile: {tiles['own_tile']}) ===")
        print(f"{'tile':<10}{'strips OA':>11}{'strips mIoU':>13}{'whole OA':>10}{'whole mIoU':>12}")
        for key, row in tiles.items():
            if key != "own_tile":
                print(f"{key:<10}{_fmt(row['strips']['overall_accuracy']):>11}{_fmt(row['strips']['miou']):>13}"
                      f"{_fmt(row['whole']['overall_accuracy']):>10}{_fmt(row['whole']['miou']):>12}")
        print("strips: each held-out strip mapped on its own; whole: the whole tiles mapped, scored on their strips")

    print("\n=== Change detection and damage ===")
    for key, row in (report.get("change") or {}).items():
        if "note" in row:
            print(f"{key:<8} {row['note']}")
        else:
            scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            print(f"{key:<8} " + "  ".join(f"{k} {_fmt(float(v))}" for k, v in scalars.items())
                  + (f"  ({len(row['pairs'])} held-out pairs)" if isinstance(row.get("pairs"), list) else ""))


def main(argv=None) -> int:
    from backend.trainers.train_defaults import DEFAULT_MODEL_PATH

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("SKYSENSE_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--finetune-epochs", type=int, default=6)
    parser.add_argument("--json", default=str(REPO / "build" / "eval" / "eval.json"), help="also write the figures here")
    parser.add_argument("--skip", nargs="*", default=[], choices=["landcover", "finetune", "change", "tiles"])
    args = parser.parse_args(argv)
    data_dir, model_path = Path(args.data), Path(args.model)
    if not data_dir.is_dir():
        print(f"sample data not found at {data_dir} (set SKYSENSE_DATA or --data)", file=sys.stderr)
        return 2
    report = {"model": str(model_path), "data": str(data_dir)}
    with tempfile.TemporaryDirectory(prefix="skysense_eval_") as tmp:
        work = Path(tmp)
        if not model_path.exists():
            note = {"note": f"skipped: {model_path} missing (run `make train-default`)"}
            report["landcover"] = report["finetune"] = note
        else:
            if "landcover" not in args.skip:
                report["landcover"] = landcover_row(data_dir, work, model_path)
            if "finetune" not in args.skip:
                report["finetune"] = finetune_rows(data_dir, work, model_path, args.finetune_epochs)
            if "tiles" not in args.skip:
                report["tiles"] = tile_rows(data_dir, work, model_path)
        if "change" not in args.skip:
            report["change"] = change_rows(data_dir)
    print_report(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
