"""BackendClient against canned HTTP answers: token header, plain error sentences, broken answers."""
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from skysense_qgis.backend_client import BackendClient, BackendError, BackendUnavailable

ANSWERS = {
    "/health": (200, json.dumps({"status": "ok"})),
    "/denied": (401, json.dumps({"detail": "missing or wrong token"})),
    "/invalid": (422, json.dumps({"detail": [{"loc": ["body", "params", "tile_size"],
                                              "msg": "tile_size 100 must be a multiple of 32"}]})),
    "/refused": (400, json.dumps({"detail": "hr[0].path: /x.tif does not exist"})),
    "/cut": (200, '{"id": "abc", "sta'),
}


@pytest.fixture
def canned():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            seen.append(dict(self.headers))
            code, body = ANSWERS[self.path]
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield BackendClient.for_port(server.server_address[1], "tok123"), seen
    server.shutdown()
    server.server_close()


def test_every_request_carries_the_token_and_no_origin(canned):
    client, seen = canned
    assert client.health() == {"status": "ok"}
    assert seen[-1]["Authorization"] == "Bearer tok123"
    assert "Origin" not in seen[-1]


@pytest.mark.parametrize("path, words", [
    ("/denied", "refused the request (wrong or missing token): missing or wrong token"),
    ("/invalid", "params.tile_size: tile_size 100 must be a multiple of 32"),
    ("/refused", "hr[0].path: /x.tif does not exist"),
])
def test_error_bodies_become_one_plain_sentence(canned, path, words):
    client, _ = canned
    with pytest.raises(BackendError) as info:
        client._request("GET", path)
    assert words in str(info.value)
    assert not isinstance(info.value, BackendUnavailable)


def test_a_cut_off_answer_counts_as_a_broken_connection(canned):
    client, _ = canned
    with pytest.raises(BackendUnavailable, match="unreadable answer"):
        client._request("GET", "/cut")


def test_nothing_listening_is_backend_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackendUnavailable, match="not reachable"):
        BackendClient.for_port(port, "t", timeout=2).health()
