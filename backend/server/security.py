"""Token handling and the ASGI guard in front of every request.

The server only listens on 127.0.0.1, but any local process or web page could
still talk to it; so every request needs the bearer token, browser requests are
refused outright (a web page cannot read the token, and there is no CORS), and
request bodies are bounded.
"""
from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Iterable, Optional

MAX_BODY_BYTES = 1024 * 1024
# Headers only browsers send: a request carrying one comes from a web page.
BROWSER_HEADERS = (b"origin", b"sec-fetch-site", b"sec-fetch-mode")


def generate_token() -> str:
    return secrets.token_urlsafe(32)


def write_private_file(path: Path, text: str) -> None:
    """Write text readable by the user only (0600), atomically (temp name + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, but make the intent explicit
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def token_matches(authorization: Optional[bytes], token: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(given.strip(), token.encode("utf-8"))


async def _send_json(send, status: int, detail: str, extra_headers: Iterable = ()) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SecurityGuard:
    """ASGI middleware: browser check (403), host check (403), token (401), body size (413)."""

    def __init__(self, app, token: str, max_body: int = MAX_BODY_BYTES,
                 allowed_hosts: Optional[Iterable[str]] = None):
        self.app = app
        self.token = token
        self.max_body = max_body
        self.allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # no websockets here
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        headers = {}
        for key, value in scope.get("headers", []):
            headers.setdefault(key.lower(), value)
        if any(h in headers for h in BROWSER_HEADERS):
            await _send_json(send, 403, "requests from web browsers are refused")
            return
        if self.allowed_hosts is not None:
            host = headers.get(b"host", b"").decode("latin-1").rsplit(":", 1)[0].strip("[]").lower()
            if host not in self.allowed_hosts:
                await _send_json(send, 403, "unexpected Host header")
                return
        if not token_matches(headers.get(b"authorization"), self.token):
            await _send_json(send, 401, "missing or wrong token (send Authorization: Bearer <token>)",
                             [(b"www-authenticate", b"Bearer")])
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, "bad Content-Length header")
                return
            if size > self.max_body:
                await _send_json(send, 413, f"request body larger than {self.max_body} bytes")
                return
        # Read the (bounded) body up front, so chunked uploads are bounded too.
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                await _send_json(send, 413, f"request body larger than {self.max_body} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
