"""Headless command line: the same jobs as the server, run in-process.

    python -m backend.cli landcover --hr scene.tif --output-dir out/
    python -m backend.cli export --source a.gpkg --dest b.shp
    python -m backend.cli finetune --raster r.tif --labels l.gpkg --class-field cls --output-dir out/ [--resume]
    python -m backend.cli serve --port 0 --state-file state.json
    python -m backend.cli models
    python -m backend.cli export-onnx model.pth model.onnx [--tile-size 512]

Flags are generated from the job's pydantic params model (``--tile-size`` for
``tile_size``...), so the CLI accepts exactly what the HTTP API accepts.
The result is printed as JSON; ``finetune`` prints the loss-curve / accuracy table instead (``--json``
for the JSON). Exit codes: 0 done, 1 failed, 2 bad input, 130 cancelled (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import typing
from typing import Any, Dict, List, Optional

from pydantic import ValidationError

from backend.errors import CancelledError, InputError, SkySenseError

JOB_KINDS = ("landcover", "change", "damage", "finetune", "export")
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130
PATH_FIELDS = frozenset({"model", "landcover_model", "pre", "post", "buildings", "raster", "labels",
                         "base_model", "source", "dest", "output_dir"})
# Fields with their own hand-written flags (lists of rasters, the AOI, pre/post images).
CUSTOM_FIELDS = frozenset({"hr", "s2", "s1", "aoi", "pre", "post"})


class UsageError(InputError):
    """Bad command-line input."""


# --------------------------------------------------------------------------- flags from schemas
def _scalar_type(annotation):
    """(python type, choices) of a scalar field, or None for complex fields."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else None
    if origin is typing.Literal:
        return str, list(typing.get_args(annotation))
    if annotation in (str, int, float, bool):
        return annotation, None
    return None


def add_schema_flags(parser: argparse.ArgumentParser, model) -> None:
    """One flag per scalar field; defaults stay unset so only given flags override."""
    for name, field in model.model_fields.items():
        if name in CUSTOM_FIELDS:
            continue
        scalar = _scalar_type(field.annotation)
        if scalar is None:
            continue
        kind, choices = scalar
        flag = "--" + name.replace("_", "-")
        desc = (field.description or "").replace("%", "%%")  # argparse formats help with %
        if kind is bool:
            default = field.default
            if default is True:
                parser.add_argument("--no-" + name.replace("_", "-"), dest=name, action="store_false",
                                    default=argparse.SUPPRESS, help=f"turn off {name} {desc}".strip())
            else:
                parser.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS,
                                    help=desc or None)
            continue
        required = field.is_required()
        default_txt = "" if required else f" (default: {field.get_default(call_default_factory=True)})"
        parser.add_argument(flag, dest=name, type=kind, choices=choices, default=argparse.SUPPRESS,
                            metavar=None if choices else name.upper(),
                            help=(desc + default_txt + (" [required]" if required else "")).strip())


def _raster_list(values: Optional[List[str]], bands: Optional[str], dated: bool) -> List[dict]:
    out = []
    band_list = None
    if bands:
        try:
            band_list = [int(b) for b in bands.split(",") if b.strip()]
        except ValueError:
            raise UsageError(f"band list {bands!r} must be comma-separated integers like 1,2,3") from None
    for value in values or []:
        path, date = value, None
        if dated and "@" in value:
            path, date = value.rsplit("@", 1)
        item: Dict[str, Any] = {"path": os.path.abspath(path)}
        if dated:
            item["date"] = date or None
        else:
            item["bands"] = band_list
        out.append(item)
    return out


def read_aoi(path: str, crs: Optional[str] = None) -> dict:
    """AOI params from any vector file: the union of its geometries and its CRS."""
    import fiona
    import shapely.geometry
    from shapely.ops import unary_union

    try:
        with fiona.open(path) as src:
            geoms = [shapely.geometry.shape(f.geometry) for f in src if f.geometry is not None]
            file_crs = src.crs.to_string() if src.crs else None
    except Exception as exc:  # noqa: BLE001 - fiona raises many kinds for bad files
        raise UsageError(f"--aoi {path}: not a readable vector file ({exc})") from None
    if not geoms:
        raise UsageError(f"--aoi {path}: the file holds no geometry")
    crs = crs or file_crs
    if not crs:
        raise UsageError(f"--aoi {path}: the file has no CRS; give --aoi-crs")
    return {"geometry": shapely.geometry.mapping(unary_union(geoms)), "crs": crs}


def add_custom_flags(parser: argparse.ArgumentParser, kind: str) -> None:
    if kind == "landcover":
        parser.add_argument("--hr", action="append", metavar="PATH", help="high-resolution raster (repeatable)")
        parser.add_argument("--hr-bands", metavar="1,2,3", help="1-based bands of the hr rasters")
        parser.add_argument("--s2", action="append", metavar="PATH[@YYYY-MM-DD]", help="Sentinel-2 scene (repeatable)")
        parser.add_argument("--s1", action="append", metavar="PATH[@YYYY-MM-DD]", help="Sentinel-1 scene (repeatable)")
    if kind in ("change", "damage"):
        for key, when in (("pre", "before"), ("post", "after")):
            parser.add_argument(f"--{key}", action="append", metavar="PATH",
                                help=f"image {when} the event; repeat for tiles of one date (mosaicked)")
            parser.add_argument(f"--{key}-bands", metavar="1,2,3", help=f"1-based bands of the {key} image")
    if kind in ("landcover", "change", "damage"):
        parser.add_argument("--aoi", metavar="VECTOR", help="area of interest (GeoJSON, GeoPackage, shapefile)")
        parser.add_argument("--aoi-crs", metavar="CRS", help="CRS of --aoi when the file has none")


def params_from_args(kind: str, args: argparse.Namespace) -> dict:
    """The params dict a job of this kind gets from these command-line arguments."""
    params: Dict[str, Any] = {}
    if getattr(args, "params_json", None):
        try:
            with open(args.params_json, encoding="utf-8") as fh:
                params = json.load(fh)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--params-json {args.params_json}: {exc}") from None
        if not isinstance(params, dict):
            raise UsageError(f"--params-json {args.params_json}: expected a JSON object")
    from backend.pipelines import params_model
    for name in params_model(kind).model_fields:
        if name in CUSTOM_FIELDS or not hasattr(args, name):
            continue
        value = getattr(args, name)
        if name in PATH_FIELDS and isinstance(value, str):
            value = os.path.abspath(value)
        params[name] = value
    if kind == "landcover":
        for key, dated in (("hr", False), ("s2", True), ("s1", True)):
            items = _raster_list(getattr(args, key), getattr(args, f"{key}_bands", None), dated)
            if items:
                params[key] = items
    if kind in ("change", "damage"):
        for key in ("pre", "post"):
            items = _raster_list(getattr(args, key), getattr(args, f"{key}_bands"), False)
            if len(items) == 1:
                params[key] = items[0] if items[0]["bands"] else items[0]["path"]
            elif items:
                params[key] = items
    if getattr(args, "aoi", None):
        params["aoi"] = read_aoi(args.aoi, args.aoi_crs)
    return params


def _flag_of(loc) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in CUSTOM_FIELDS:
        return "--" + parts[0] + ("" if len(parts) == 1 else f" ({'.'.join(parts[1:])})")
    return "--" + "-".join(parts).replace("_", "-") if parts else "params"


def describe_validation(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{_flag_of(err['loc'])}: {msg}" if err["loc"] else msg)
    return "; ".join(lines)


# --------------------------------------------------------------------------- running a job
class _ProgressBar:
    def __init__(self, quiet: bool):
        self.bar = None
        if not quiet:
            from tqdm import tqdm
            self.bar = tqdm(total=1000, unit="", bar_format="{percentage:3.0f}%|{bar:30}| {elapsed}<{remaining} {desc}",
                            file=sys.stderr, leave=True)

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is not None:
            self.bar.n = int(round(fraction * 1000))
            self.bar.set_description_str(message[:60], refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_kind(kind: str, args: argparse.Namespace) -> int:
    from backend.pipelines import params_model
    from backend.progress import Progress
    from backend.server.paths import validate_job_paths
    from backend.server.runner import run_job

    try:
        raw = params_from_args(kind, args)
        params = params_model(kind)(**raw).model_dump(mode="json")
        plan = validate_job_paths(params, None)
    except ValidationError as exc:
        return _fail(EXIT_BAD_INPUT, describe_validation(exc))
    except SkySenseError as exc:
        return _fail(EXIT_BAD_INPUT, str(exc))

    cancel = threading.Event()

    def on_sigint(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        cancel.set()
        print("\ncancelling at the next progress check (Ctrl-C again to abort)...", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    bar = _ProgressBar(args.quiet)
    try:
        result = run_job(kind, params, plan, Progress(bar, cancel))
    except CancelledError as exc:
        bar.close()
        return _fail(EXIT_CANCELLED, f"cancelled: {exc}; partial outputs removed")
    except InputError as exc:
        bar.close()
        return _fail(EXIT_BAD_INPUT, str(exc))
    except SkySenseError as exc:
        bar.close()
        return _fail(EXIT_FAILED, str(exc))
    finally:
        signal.signal(signal.SIGINT, previous)
    bar.close()
    if kind == "finetune" and not getattr(args, "json", False):
        from backend.trainers.finetune import format_finetune_result
        print(format_finetune_result(result))  # loss curve, fine-tuned vs random forest
    else:
        print(json.dumps(result, indent=2))
    return EXIT_OK


def _fail(code: int, message: str) -> int:
    print(f"error: {message}" if code != EXIT_CANCELLED else message, file=sys.stderr)
    return code


# --------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse already exits 2; keep one consistent prefix
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from backend.pipelines import params_model

    parser = _Parser(prog="python -m backend.cli", description="SkySense jobs without QGIS.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for kind in JOB_KINDS:
        model = params_model(kind)
        p = sub.add_parser(kind, help=(model.__doc__ or kind).strip().splitlines()[0],
                           description=(model.__doc__ or "").strip())
        add_custom_flags(p, kind)
        add_schema_flags(p, model)
        p.add_argument("--params-json", metavar="FILE",
                       help="a JSON object with the params (flags given too override it)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        if kind == "finetune":
            p.add_argument("--json", action="store_true",
                           help="print the whole result as JSON instead of the summary table")
    serve = sub.add_parser("serve", help="start the local HTTP server (options of python -m backend.server)",
                           add_help=False)
    serve.add_argument("server_args", nargs=argparse.REMAINDER)
    models = sub.add_parser("models", help="list the project's and the user's model files as JSON")
    models.add_argument("--models-dir", help="user model folder")
    onnx = sub.add_parser("export-onnx", help="export a model file (.pth) to .onnx for ONNX Runtime, keeping its "
                          "metadata (classes, bands, normalisation)",
                          description="Export a segmentation, change or damage model file to ONNX (fixed tile "
                                      "size, dynamic batch). The .onnx file can be chosen as 'model' in any job "
                                      "and is listed by 'models'.")
    onnx.add_argument("model", help="project model file (.pth)")
    onnx.add_argument("out", help="ONNX file to write (.onnx)")
    onnx.add_argument("--tile-size", type=int, default=None,
                      help="tile size of the graph, a multiple of 32 (default: the model file's tile_size, else 512)")
    return parser


def export_onnx_command(model_path: str, out_path: str, tile_size: Optional[int] = None) -> int:
    """`export-onnx MODEL.pth OUT.onnx [--tile-size N]`: prints {"path", "task", "tile_size", "inputs"}."""
    from pathlib import Path

    from models.checkpoint import CheckpointError, load_model_file
    from models.onnx_export import OnnxExportError, export_onnx, read_onnx_meta

    src, dest = Path(model_path).absolute(), Path(out_path).absolute()
    if not src.is_file():
        return _fail(EXIT_BAD_INPUT, f"model file not found: {src}")
    if src.suffix.lower() == ".onnx":
        return _fail(EXIT_BAD_INPUT, f"{src} is already an ONNX model; export-onnx needs a project model file (.pth)")
    if dest.suffix.lower() != ".onnx":
        return _fail(EXIT_BAD_INPUT, f"the output file must end in .onnx, got {dest.name}")
    try:
        model, meta = load_model_file(src)
        tile = int(tile_size or meta.get("tile_size") or 512)
        export_onnx(model, dest, tile_size=tile, in_chans=getattr(model, "in_chans", None), meta=meta)
        written = read_onnx_meta(dest)
    except (CheckpointError, OnnxExportError) as exc:
        return _fail(EXIT_BAD_INPUT, str(exc))
    print(json.dumps({"path": str(dest), "task": written["task"], "tile_size": written["tile_size"],
                      "inputs": written["inputs"], "classes": len(written.get("classes") or [])}, indent=2))
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":  # hand everything over, --help included
        from backend.server.__main__ import main as serve_main
        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "models":
        from pathlib import Path

        from backend.server.model_index import ModelIndex
        index = ModelIndex(user_dir=Path(args.models_dir) if args.models_dir else None)
        print(json.dumps(index.list(), indent=2))
        return EXIT_OK
    if args.command == "export-onnx":
        return export_onnx_command(args.model, args.out, args.tile_size)
    return run_kind(args.command, args)


if __name__ == "__main__":
    sys.exit(main())
