"""Every refusal of the HTTP API: token, browser origin, body size, schema, paths."""
from __future__ import annotations

import os

import pytest


def _landcover(path, out_dir, **extra):
    return {"kind": "landcover", "params": {"hr": [{"path": str(path)}], "output_dir": str(out_dir), **extra}}


@pytest.fixture
def scene(tmp_path):
    path = tmp_path / "inputs" / "scene.tif"
    path.parent.mkdir()
    path.write_bytes(b"not checked here")
    return path


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer"}, {"Authorization": "bearer "}])
def test_server_missing_or_wrong_token_is_401(client, headers):
    for method, path in [("get", "/health"), ("get", "/jobs"), ("get", "/models"), ("post", "/shutdown"),
                         ("get", "/openapi.json"), ("get", "/docs"), ("get", "/nonexistent")]:
        response = getattr(client, method)(path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert "token" in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"


def test_server_token_prefix_is_not_enough(client, helpers):
    response = client.get("/health", headers={"Authorization": f"Bearer {helpers.token[:-1]}"})
    assert response.status_code == 401


def test_server_right_token_passes(client, auth):
    response = client.get("/health", headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["device"] in ("cpu", "cuda")
    assert body["torch"].startswith("2.")
    assert (body["gpu_name"] is None) == (body["device"] == "cpu")


@pytest.mark.parametrize("header", [{"Origin": "http://evil.example"}, {"Origin": "null"},
                                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Mode": "cors"}])
def test_server_browser_requests_are_403_even_with_token(client, auth, header):
    response = client.get("/health", headers={**auth, **header})
    assert response.status_code == 403
    assert "browser" in response.json()["detail"]
    assert not any(k.lower().startswith("access-control") for k in response.headers)


def test_server_cors_preflight_refused(client):
    response = client.options("/jobs", headers={"Origin": "http://evil.example",
                                                "Access-Control-Request-Method": "POST"})
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


def test_server_oversized_body_is_413(client, auth, out_root):
    big = _landcover("/x.tif", out_root, name="a")
    big["params"]["hr"] = [{"path": "/" + "a" * 1000}] * 1100  # > 1 MiB of JSON
    response = client.post("/jobs", headers=auth, json=big)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


def test_server_oversized_chunked_body_is_413(client, auth):
    def chunks():
        for _ in range(20):
            yield b"x" * 100_000
    response = client.post("/jobs", headers={**auth, "Content-Type": "application/json"}, content=chunks())
    assert response.status_code == 413


def test_server_unknown_job_kind_is_422_naming_the_kinds(client, auth, out_root):
    response = client.post("/jobs", headers=auth, json={"kind": "bitcoin", "params": {"output_dir": str(out_root)}})
    assert response.status_code == 422
    text = str(response.json()["detail"])
    assert "bitcoin" in text and "landcover" in text


def test_server_unknown_param_field_is_422(client, auth, scene, out_root):
    response = client.post("/jobs", headers=auth, json=_landcover(scene, out_root, tile_sise=256))
    assert response.status_code == 422
    assert "tile_sise" in str(response.json()["detail"])


@pytest.mark.parametrize("params, words", [
    ({"tile_size": 100}, "multiple of 32"),
    ({"overlap": 300, "tile_size": 512}, "overlap"),
    ({"batch_size": -1}, "batch_size"),
    ({"batch_size": 257}, "batch_size"),
    ({"device": "tpu"}, "device"),
])
def test_server_bad_param_values_are_422(client, auth, scene, out_root, params, words):
    response = client.post("/jobs", headers=auth, json=_landcover(scene, out_root, **params))
    assert response.status_code == 422
    assert words in str(response.json()["detail"])


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "x\\y", ".hidden", "", "a" * 101, "nul\x00byte"])
def test_server_traversal_names_are_refused(client, auth, scene, out_root, name):
    response = client.post("/jobs", headers=auth, json=_landcover(scene, out_root, name=name))
    assert response.status_code == 422
    assert "name" in str(response.json()["detail"])
    assert os.listdir(out_root) == []


def test_server_output_outside_root_is_refused(client, auth, scene, tmp_path):
    outside = tmp_path / "elsewhere"
    response = client.post("/jobs", headers=auth, json=_landcover(scene, outside))
    assert response.status_code == 400
    assert "outside the allowed output folders" in response.json()["detail"]
    assert not outside.exists()


def test_server_output_dir_traversal_out_of_root_is_refused(client, auth, scene, out_root):
    sneaky = f"{out_root}/sub/../../escaped"
    response = client.post("/jobs", headers=auth, json=_landcover(scene, sneaky))
    assert response.status_code == 400
    assert "outside" in response.json()["detail"]


def test_server_symlink_out_of_root_is_refused(client, auth, scene, out_root, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (out_root / "link").symlink_to(target, target_is_directory=True)
    response = client.post("/jobs", headers=auth, json=_landcover(scene, out_root / "link"))
    assert response.status_code == 400
    assert "outside" in response.json()["detail"]


def test_server_relative_output_dir_is_refused(client, auth, scene):
    response = client.post("/jobs", headers=auth, json=_landcover(scene, "relative/out"))
    assert response.status_code == 400
    assert "not an absolute path" in response.json()["detail"]


def test_server_output_that_would_overwrite_input_is_refused(client, auth, out_root):
    scene = out_root / "landcover.tif"  # exactly what the job would write
    scene.write_bytes(b"precious input")
    response = client.post("/jobs", headers=auth, json=_landcover(scene, out_root))
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "overwrite" in detail and str(scene) in detail
    assert scene.read_bytes() == b"precious input"


def test_server_export_onto_its_own_source_is_refused(client, auth, out_root):
    src = out_root / "roads.shp"
    src.write_bytes(b"shape")
    for dest in (src, out_root / "roads.SHP"):
        body = {"kind": "export", "params": {"source": str(src), "dest": str(dest)}}
        response = client.post("/jobs", headers=auth, json=body)
        assert response.status_code == 400, dest
    # A sibling part of the same shapefile counts as the input too.
    body = {"kind": "export", "params": {"source": str(out_root / "roads.dbf"), "dest": str(src)}}
    (out_root / "roads.dbf").write_bytes(b"dbf")
    assert client.post("/jobs", headers=auth, json=body).status_code == 400


@pytest.mark.parametrize("bad, words", [("missing.tif", "does not exist"), ("folder", "is not a file"),
                                        ("relative.tif", "not an absolute path")])
def test_server_inputs_must_be_existing_files(client, auth, out_root, tmp_path, bad, words):
    (tmp_path / "folder").mkdir()
    path = "relative.tif" if bad == "relative.tif" else str(tmp_path / bad)
    response = client.post("/jobs", headers=auth, json=_landcover(path, out_root))
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert words in detail and "hr[0].path" in detail


def test_server_nested_model_path_checked(client, auth, scene, out_root, tmp_path):
    response = client.post("/jobs", headers=auth, json=_landcover(scene, out_root, model=str(tmp_path / "nope.pth")))
    assert response.status_code == 400
    assert "model" in response.json()["detail"]


def test_server_unknown_job_id_is_404(client, auth):
    for method, path in [("get", "/jobs/nope"), ("post", "/jobs/nope/cancel"), ("delete", "/jobs/nope")]:
        assert getattr(client, method)(path, headers=auth).status_code == 404


def test_server_host_header_checked_when_configured(tmp_path):
    from fastapi.testclient import TestClient

    from backend.server.app import create_app
    from backend.server.jobs import JobManager

    jobs = JobManager()
    app = create_app("t0k", jobs=jobs, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health", headers={"Authorization": "Bearer t0k"}).status_code == 200
        bad = c.get("/health", headers={"Authorization": "Bearer t0k", "Host": "attacker.example"})
        assert bad.status_code == 403
    jobs.close()
