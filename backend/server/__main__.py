"""Start the local backend: ``python -m backend.server --port 0 --state-file PATH``.

Binds 127.0.0.1 only, writes a fresh token to a 0600 token file, then, once
listening, writes the state file {"port", "pid", "token_file", "version"} that the
QGIS plugin reads. Both files are removed again on a clean stop.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import backend

HOST = "127.0.0.1"
log = logging.getLogger("skysense.server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend.server",
                                description="SkySense local HTTP backend (127.0.0.1 only, token protected)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default)")
    p.add_argument("--host", default=HOST, help="must be 127.0.0.1: the server never listens on other addresses")
    p.add_argument("--state-file", type=Path, required=True,
                   help="JSON file written once listening: port, pid, token_file, version")
    p.add_argument("--token-file", type=Path, default=None,
                   help="where to write the token (mode 0600); default: next to the state file")
    p.add_argument("--output-root", type=Path, action="append", default=[],
                   help="allowed folder for job outputs (repeatable); default: any absolute folder")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="user model folder listed by GET /models (default $SKYSENSE_MODELS_DIR or ~/.skysense/models)")
    p.add_argument("--log-file", type=Path, default=None, help="server log (default: stderr)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--parent-pid", type=int, default=None,
                   help="stop when this process (QGIS) is gone")
    return p


def _setup_logging(log_file: Optional[Path], level: str) -> None:
    handler = logging.FileHandler(log_file, encoding="utf-8") if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.set_inheritable(True)
    return sock


def _watch_parent(pid: int, stop) -> None:
    def loop():
        while True:
            time.sleep(2.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log.info("parent process %s is gone; stopping", pid)
                stop()
                return
            except PermissionError:
                pass
    threading.Thread(target=loop, name="skysense-parent-watch", daemon=True).start()


# Job kinds whose modules (and what they import: rasterio, fiona, openvino...) are loaded at the start, so
# the first job does not wait for them (0.2-0.3 s of a 1.5 s land-cover job at 2048²)
PRELOADED_KINDS = ("landcover", "change")


def _warm_up_in_background(jobs=None) -> None:
    """Off the start-up path (it imports torch): have OpenVINO prepared for the bundled models by a
    low-priority child process (backend.inference.openvino_warmup), load the main pipelines and run the
    engine once on a tiny raster, then have the job worker compile OpenVINO for the last job's model and
    tile of an earlier backend (`jobs`: the server's JobManager)."""
    def start():
        try:
            from backend.inference.openvino_warmup import warm_bundled_models
            warm_bundled_models()
        except Exception:  # jobs run without it as before
            log.exception("could not start preparing OpenVINO in the background")
        from backend.pipelines import get_runner
        for kind in PRELOADED_KINDS:
            try:
                get_runner(kind)
            except Exception as exc:  # the job of that kind reports it
                log.warning("could not load the %s pipeline ahead: %s", kind, exc)
        try:
            from backend.inference.engine_warmup import warm_up_engine
            warm_up_engine()
        except Exception as exc:  # only the first job's head start is lost
            log.warning("could not run the engine once ahead: %s", exc)
        if jobs is None:
            return
        try:
            from backend.inference.runtime import want_last_sessions_job
            wanted = want_last_sessions_job()
        except Exception:  # the first job compiles it instead
            log.exception("could not read what the last job ran")
            return
        if wanted:
            log.info("compiling OpenVINO for the last job's model (%s) before the first job", wanted)
            jobs.prepare_while_idle()
    threading.Thread(target=start, name="skysense-warmup-start", daemon=True).start()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.host != HOST:
        print(f"error: refusing to listen on {args.host!r}: the SkySense server only binds {HOST}",
              file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a TCP port", file=sys.stderr)
        return 2
    for root in args.output_root:
        if not root.is_absolute():
            print(f"error: --output-root {root} must be an absolute path", file=sys.stderr)
            return 2
    _setup_logging(args.log_file, args.log_level)

    import uvicorn

    from backend.server.app import create_app
    from backend.server.jobs import JobManager
    from backend.server.model_index import ModelIndex
    from backend.server.security import generate_token, write_private_file

    state_file = args.state_file.resolve()
    token_file = (args.token_file or state_file.with_name(state_file.stem + ".token")).resolve()
    state_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token = generate_token()
    write_private_file(token_file, token + "\n")

    try:
        sock = _bind(args.port)
    except OSError as exc:
        print(f"error: cannot listen on {HOST}:{args.port}: {exc}", file=sys.stderr)
        token_file.unlink(missing_ok=True)
        return 1
    port = sock.getsockname()[1]

    jobs = JobManager()
    server_box = {}

    def stop() -> None:
        server = server_box.get("server")
        if server is not None:
            server.should_exit = True

    app = create_app(token, jobs=jobs, output_roots=args.output_root or None,
                     models=ModelIndex(user_dir=args.models_dir), on_shutdown=stop,
                     allowed_hosts=[HOST, "localhost"])

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if not self.should_exit:  # listening now: tell the plugin where
                state = {"port": port, "pid": os.getpid(), "token_file": str(token_file),
                         "version": backend.__version__}
                write_private_file(state_file, json.dumps(state))
                log.info("listening on http://%s:%d (state file %s)", HOST, port, state_file)

    config = uvicorn.Config(app, log_config=None, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=5, server_header=False)
    server = _Server(config)
    server_box["server"] = server
    if args.parent_pid:
        _watch_parent(args.parent_pid, stop)
    _warm_up_in_background(jobs)
    signal.signal(signal.SIGTERM, lambda *_: stop())
    try:
        server.run(sockets=[sock])
    finally:
        from backend.inference.openvino_warmup import background_warmer
        background_warmer().close()
        jobs.close(timeout=10.0)
        for path in (state_file, token_file):
            path.unlink(missing_ok=True)
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
