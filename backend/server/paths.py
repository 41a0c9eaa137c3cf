"""Path checks for job params: inputs must be existing files, outputs stay inside
the job's output folder (and inside the allowed output roots), and no output may
replace an input."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from backend.errors import InputError
from backend.server.schemas import check_name

# Param keys (at any nesting depth) that hold input file paths.
INPUT_KEYS = frozenset({"path", "model", "landcover_model", "pre", "post", "buildings",
                        "raster", "labels", "base_model", "source", "scl"})
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qmd")


class PathRefused(InputError):
    """A job was refused because of one of its paths."""


@dataclass
class OutputPlan:
    """Where a job may write: files named ``<prefix>*`` inside ``output_dir``
    (``exact`` lists the files when they are known up front, as for export)."""
    output_dir: Path
    prefix: str
    exact: List[Path] = field(default_factory=list)

    def owns(self, entry_name: str) -> bool:
        """Whether a new entry of output_dir may be a (temporary) output of this job."""
        bare = entry_name.lstrip(".")
        return bare.startswith((self.prefix, "tmp", "skysense-"))


def _real(path: str) -> Path:
    return Path(os.path.realpath(path))


def iter_input_paths(params, where: str = "") -> Iterable[Tuple[str, str]]:
    """(label, path) for every input path in a params dict, e.g. ('hr[0].path', '/a.tif')."""
    if isinstance(params, dict):
        for key, value in params.items():
            label = f"{where}.{key}" if where else key
            if key in INPUT_KEYS and isinstance(value, str):
                yield label, value
            else:
                yield from iter_input_paths(value, label)
    elif isinstance(params, list):
        for i, value in enumerate(params):
            yield from iter_input_paths(value, f"{where}[{i}]")


def check_inputs(params: dict) -> List[Path]:
    """Every input path is absolute, exists and is a file; returns their real paths."""
    found = []
    for label, raw in iter_input_paths(params):
        if "\x00" in raw:
            raise PathRefused(f"{label}: the path contains a NUL character")
        if not os.path.isabs(raw):
            raise PathRefused(f"{label}: '{raw}' is not an absolute path")
        if not os.path.exists(raw):
            raise PathRefused(f"{label}: '{raw}' does not exist")
        if not os.path.isfile(raw):
            raise PathRefused(f"{label}: '{raw}' is not a file")
        found.append(_real(raw))
    return found


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output_dir(raw: str, roots: Optional[Sequence[Path]], label: str = "output_dir") -> Path:
    """An absolute folder inside one of the allowed roots; returns its real path."""
    if "\x00" in raw:
        raise PathRefused(f"{label}: the path contains a NUL character")
    if not os.path.isabs(raw):
        raise PathRefused(f"{label}: '{raw}' is not an absolute path")
    real = _real(raw)
    if roots:
        real_roots = [_real(str(r)) for r in roots]
        if not any(_inside(real, r) for r in real_roots):
            allowed = ", ".join(str(r) for r in real_roots)
            raise PathRefused(f"{label}: '{raw}' is outside the allowed output folders ({allowed})")
    if real.exists() and not real.is_dir():
        raise PathRefused(f"{label}: '{raw}' exists and is not a folder")
    return real


def plan_outputs(params: dict, roots: Optional[Sequence[Path]]) -> Optional[OutputPlan]:
    """The output plan of a job, or None for a kind that writes nothing."""
    if "output_dir" in params:
        out_dir = check_output_dir(str(params["output_dir"]), roots)
        name = str(params.get("name") or "output")
        try:
            check_name(name)
        except ValueError as exc:
            raise PathRefused(str(exc)) from None
        return OutputPlan(out_dir, name)
    if "dest" in params:
        dest_raw = str(params["dest"])
        if not os.path.isabs(dest_raw):
            raise PathRefused(f"dest: '{dest_raw}' is not an absolute path")
        out_dir = check_output_dir(os.path.dirname(dest_raw), roots, label="dest folder")
        dest = out_dir / os.path.basename(dest_raw)
        try:
            check_name(dest.stem)
        except ValueError as exc:
            raise PathRefused(f"dest: {exc}") from None
        if dest.exists() and not dest.is_file():
            raise PathRefused(f"dest: '{dest_raw}' exists and is not a file")
        exact = [dest]
        if dest.suffix.lower() == ".shp":
            exact = [dest.with_suffix(s) for s in SHAPEFILE_PARTS]
        return OutputPlan(out_dir, dest.stem, exact)
    return None


def _input_family(path: Path) -> List[Path]:
    """The files an input consists of (a shapefile is several files)."""
    if path.suffix.lower() in SHAPEFILE_PARTS:
        return [path.with_suffix(s) for s in SHAPEFILE_PARTS]
    return [path]


def check_no_overwrite(plan: OutputPlan, inputs: Sequence[Path]) -> None:
    """Refuse a job whose outputs could replace one of its inputs."""
    for src in inputs:
        for part in _input_family(src):
            if plan.exact:
                clash = any(part == out for out in plan.exact)
            else:
                clash = part.parent == plan.output_dir and part.name.startswith(plan.prefix)
            if clash:
                raise PathRefused(
                    f"the outputs would overwrite the input file '{src}': "
                    "choose another output name or folder")


def validate_job_paths(params: dict, roots: Optional[Sequence[Path]] = None) -> Optional[OutputPlan]:
    """All path checks of one job; raises PathRefused naming the problem."""
    inputs = check_inputs(params)
    plan = plan_outputs(params, roots)
    if plan is not None:
        check_no_overwrite(plan, inputs)
    return plan
