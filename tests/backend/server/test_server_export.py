"""Export pipeline: vector copies to GPKG / shapefile keep CRS and attributes, are atomic,
and run as a job through the API."""
from __future__ import annotations

import datetime
import os

import fiona
import pytest

from backend.errors import InputError
from backend.pipelines.export import export_vector, shapefile_field_names
from backend.progress import Progress

LONG_FIELDS = {"landcover_class_name": "str", "landcover_class_value": "int", "area_m2": "float",
               "observed": "datetime", "verified": "bool"}


@pytest.fixture
def layer(tmp_path):
    """A GPKG layer in UTM with long field names, mixed Polygon/MultiPolygon, a datetime."""
    path = tmp_path / "src" / "classes.gpkg"
    path.parent.mkdir()
    schema = {"geometry": "Unknown", "properties": LONG_FIELDS}
    with fiona.open(path, "w", driver="GPKG", schema=schema, crs="EPSG:32633", layer="polygons") as dst:
        for i in range(5):
            ring = [(500000 + i * 10, 4000000), (500010 + i * 10, 4000000), (500010 + i * 10, 4000010),
                    (500000 + i * 10, 4000000)]
            geom = {"type": "Polygon", "coordinates": [ring]} if i % 2 else {"type": "MultiPolygon",
                                                                             "coordinates": [[ring]]}
            dst.write(fiona.Feature(geometry=fiona.Geometry.from_dict(geom), properties=fiona.Properties.from_dict({
                "landcover_class_name": f"class é{i}", "landcover_class_value": i, "area_m2": 50.0 + i,
                "observed": datetime.datetime(2024, 5, i + 1, 12, 0), "verified": bool(i % 2)})))
    return path


def test_server_export_gpkg_to_shapefile_keeps_crs_and_attributes(layer, tmp_path):
    dest = tmp_path / "out" / "classes.shp"
    dest.parent.mkdir()
    result = export_vector(layer, dest)
    assert result["features"] == 5 and result["format"] == "ESRI Shapefile"
    assert result["renamed_fields"] == {"landcover_class_name": "landcover_", "landcover_class_value": "landcove_1"}
    assert sorted(os.listdir(dest.parent)) == ["classes.cpg", "classes.dbf", "classes.prj", "classes.shp", "classes.shx"]
    with fiona.open(dest) as out:
        assert out.crs.to_epsg() == 32633
        rows = sorted((dict(f.properties) for f in out), key=lambda p: p["landcove_1"])
        assert len(rows) == 5
    assert rows[2]["landcover_"] == "class é2" and rows[2]["area_m2"] == 52.0
    assert rows[2]["observed"].startswith("2024-05-03") and rows[1]["verified"] == 1


def test_server_export_shapefile_back_to_gpkg(layer, tmp_path):
    shp = tmp_path / "mid.shp"
    export_vector(layer, shp)
    gpkg = tmp_path / "back.gpkg"
    result = export_vector(shp, gpkg, driver="GPKG")
    assert result["outputs"][0]["layer"] == "mid"
    with fiona.open(gpkg) as out:
        assert out.crs.to_epsg() == 32633 and len(out) == 5
        assert set(out.schema["properties"]) == {"landcover_", "landcove_1", "area_m2", "observed", "verified"}


def test_server_export_keeps_layer_name_and_picks_layer(layer, tmp_path):
    with fiona.open(layer, "w", driver="GPKG", schema={"geometry": "Point", "properties": {"n": "int"}},
                    crs="EPSG:4326", layer="points") as dst:
        dst.write(fiona.Feature(geometry=fiona.Geometry(type="Point", coordinates=(1.0, 2.0)),
                                properties=fiona.Properties(n=7)))
    result = export_vector(layer, tmp_path / "pts.gpkg", layer="points")
    assert result["features"] == 1
    assert fiona.listlayers(tmp_path / "pts.gpkg") == ["points"]
    with pytest.raises(InputError, match="layer 'roads' is not in 'classes.gpkg'.*polygons, points"):
        export_vector(layer, tmp_path / "x.gpkg", layer="roads")


def test_server_export_failure_keeps_previous_file(layer, tmp_path):
    dest = tmp_path / "keep.gpkg"
    export_vector(layer, dest)
    before = dest.read_bytes()

    class Stop(Progress):
        def check_cancelled(self):
            from backend.errors import CancelledError
            raise CancelledError("the job was cancelled")

    from backend.errors import CancelledError
    with pytest.raises(CancelledError):
        export_vector(layer, dest, progress=Stop())
    assert dest.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.gpkg", "src"]


@pytest.mark.parametrize("dest, driver, words", [
    ("out.txt", None, "use a .gpkg or .shp name"),
    ("out.gpkg", "ESRI Shapefile", "extension of GPKG"),
    ("out.gpkg", "GeoJSON", "unsupported export format"),
])
def test_server_export_bad_format_requests(layer, tmp_path, dest, driver, words):
    with pytest.raises(InputError, match=words):
        export_vector(layer, tmp_path / dest, driver=driver)


def test_server_export_non_vector_source(tmp_path):
    src = tmp_path / "photo.gpkg"
    src.write_bytes(os.urandom(2000))
    with pytest.raises(InputError, match="photo.gpkg"):
        export_vector(src, tmp_path / "x.gpkg")


def test_server_shapefile_names_are_unique_and_short():
    names = ["population_2020", "population_2021", "Population_2022", "short", "x" * 30]
    mapped = shapefile_field_names(names)
    assert all(len(v) <= 10 for v in mapped.values())
    assert len({v.lower() for v in mapped.values()}) == len(names)
    assert mapped["short"] == "short"


def test_server_export_job_through_api(client, auth, helpers, layer, out_root):
    dest = out_root / "exported.shp"
    body = {"kind": "export", "params": {"source": str(layer), "layer": "polygons", "dest": str(dest)}}
    response = client.post("/jobs", headers=auth, json=body)
    assert response.status_code == 200, response.text
    info = helpers.wait_job(client, response.json()["id"])
    assert info["state"] == "done", info["error"]
    assert info["result"]["outputs"][0]["path"] == str(dest)
    with fiona.open(dest) as out:
        assert len(out) == 5 and out.crs.to_epsg() == 32633


def test_server_export_job_outside_root_refused(client, auth, layer, tmp_path):
    body = {"kind": "export", "params": {"source": str(layer), "dest": str(tmp_path / "x.gpkg")}}
    response = client.post("/jobs", headers=auth, json=body)
    assert response.status_code == 400 and "outside" in response.json()["detail"]
    body["params"]["dest"] = "relative.gpkg"
    assert client.post("/jobs", headers=auth, json=body).status_code == 400
