"""Model manager: where model files live, and installing them by path or by URL with a sha256.

Official SkySense weights are non-commercial and are never bundled: users point at a file they
downloaded, or give a URL plus its sha256, and the file is verified before it is kept.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from backend.errors import InputError, OutputError
from backend.io.atomic import pid_alive

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODELS_DIR = REPO_ROOT / "resources" / "models"
# The one list of model-file suffixes: the model listings (here and GET /models) and installs use it.
MODEL_SUFFIXES = (".pth", ".pt", ".onnx")
_CHUNK = 1 << 20


def user_models_dir() -> Path:
    """Per-user folder for installed models (SKYSENSE_HOME overrides ~/.skysense)."""
    home = Path(os.environ.get("SKYSENSE_HOME", Path.home() / ".skysense"))
    return home / "models"


def model_dirs() -> list[Path]:
    return [BUNDLED_MODELS_DIR, user_models_dir()]


@dataclass
class ModelEntry:
    path: Path
    source: str  # "bundled" or "user"


def is_model_file(path: Path) -> bool:
    return Path(path).suffix.lower() in MODEL_SUFFIXES and Path(path).is_file()


def model_files_in(folder: Path) -> list[Path]:
    """Model files (MODEL_SUFFIXES) directly inside `folder`, sorted by name; [] if it is no folder."""
    folder = Path(folder)
    return [p for p in sorted(folder.iterdir()) if is_model_file(p)] if folder.is_dir() else []


def list_model_files(dirs: Optional[Iterable[Path]] = None) -> list[ModelEntry]:
    """Model files (*.pth, *.pt, *.onnx) in the bundled and user folders, bundled first."""
    dirs = list(dirs) if dirs is not None else model_dirs()
    entries = []
    for folder in dirs:
        if not folder.is_dir():
            continue
        source = "bundled" if folder.resolve() == BUNDLED_MODELS_DIR.resolve() else "user"
        entries.extend(ModelEntry(path=path, source=source) for path in model_files_in(folder))
    return entries


def read_model_meta(path: os.PathLike | str) -> dict:
    """Metadata of any model file without building the model: .onnx through
    models.onnx_export.read_onnx_meta (no session), others through models.checkpoint.read_model_meta
    (torch.load(weights_only=True)). Same dict shape either way (task, classes, bands, normalization,
    tile_size, gsd, metrics...); errors (CheckpointError / OnnxExportError) name the file."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from models.onnx_export import read_onnx_meta
        return read_onnx_meta(path)
    from models.checkpoint import read_model_meta as read_checkpoint_meta
    return read_checkpoint_meta(path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256_text(sha256: str) -> str:
    value = sha256.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InputError(f"sha256 must be 64 hexadecimal characters, got {sha256!r}")
    return value


def _destination(name: str, dest_dir: Optional[Path]) -> Path:
    clean = Path(name).name
    if not clean or clean in (".", "..") or clean != name:
        raise InputError(f"model name {name!r} must be a plain file name")
    if Path(clean).suffix.lower() not in MODEL_SUFFIXES:
        raise InputError(f"model name {name!r} must end in {', '.join(MODEL_SUFFIXES)}")
    folder = dest_dir or user_models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / clean


def install_from_path(source: os.PathLike | str, name: Optional[str] = None,
                      sha256: Optional[str] = None, dest_dir: Optional[Path] = None) -> Path:
    """Copy a local model file into the user models folder (verifying sha256 when given)."""
    source = Path(source)
    if not source.is_file():
        raise InputError(f"model file not found: {source}")
    dest = _destination(name or source.name, dest_dir)
    if sha256:
        expected = _check_sha256_text(sha256)
        actual = sha256_of(source)
        if actual != expected:
            raise InputError(f"sha256 mismatch for {source}: expected {expected}, file has {actual}")
    _atomic_copy(lambda out: _copy_stream(open(source, "rb"), out), dest)
    return dest


def install_from_url(url: str, sha256: str, name: Optional[str] = None,
                     dest_dir: Optional[Path] = None,
                     progress: Optional[Callable[[int, Optional[int]], None]] = None,
                     timeout: float = 60.0) -> Path:
    """Download a model file, verify its sha256, then move it into place.

    The hash is mandatory: a file that does not match is deleted and nothing is installed.
    """
    expected = _check_sha256_text(sha256)
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("https", "http", "file"):
        raise InputError(f"unsupported URL scheme in {url!r} (use https, http or file)")
    dest = _destination(name or Path(urllib.parse.unquote(parsed.path)).name, dest_dir)

    def fetch(out) -> str:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked above
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                done = 0
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except OSError as exc:
            raise InputError(f"could not download {url}: {exc}") from exc
        actual = digest.hexdigest()
        if actual != expected:
            raise InputError(f"sha256 mismatch for {url}: expected {expected}, download has {actual}")
        return actual

    _atomic_copy(fetch, dest)
    return dest


def _copy_stream(src, out) -> None:
    with src:
        shutil.copyfileobj(src, out, _CHUNK)


def _part_prefix(dest: Path) -> str:
    return f".{dest.name}."


def remove_stale_parts(dest: Path) -> list:
    """Remove the partial files of `dest` left by a copy or download whose process died (a checkpoint can be
    gigabytes); returns their names. Each part file names its host and pid: .NAME.HOST~PID.RANDOM.part."""
    host, removed = socket.gethostname(), []
    prefix = _part_prefix(dest)
    try:
        parts = [p for p in dest.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".part")]
    except OSError:
        return removed
    for part in parts:
        owner_host, sep, rest = part.name[len(prefix):].rpartition("~")
        pid = rest.split(".", 1)[0]
        if sep and owner_host == host and pid.isdigit() and not pid_alive(int(pid)):
            try:
                part.unlink()
            except OSError:  # gone already, or not ours to remove: leave it
                continue
            removed.append(part.name)
    return removed


def _atomic_copy(write: Callable, dest: Path) -> None:
    """Write through `write(handle)` into a temp file beside dest, then rename over it."""
    remove_stale_parts(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{_part_prefix(dest)}{socket.gethostname()}~{os.getpid()}.",
                                    suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, dest)
    except OSError as exc:
        _remove_quietly(tmp_name)
        raise OutputError(f"could not write model file {dest}: {exc}") from exc
    except BaseException:
        _remove_quietly(tmp_name)
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
