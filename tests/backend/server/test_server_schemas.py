"""The job schemas accept the params documented in ARCHITECTURE.md and sent by the plugin
(skysense_qgis/job_params.py), fill defaults the pipelines rely on, and refuse the rest."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.pipelines import params_model, pipeline_kinds
from backend.server.schemas import PARAMS_MODELS

AOI = {"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}, "crs": "EPSG:4326"}

DOCUMENTED = {
    "landcover": {"hr": [{"path": "/d/a.tif", "bands": [1, 2, 3]}],
                  "s2": [{"path": "/d/s2.tif", "bands": None, "date": "2021-06-01"}], "s1": [],
                  "model": None, "output_dir": "/o", "name": "landcover_20240101_120000", "tile_size": 512,
                  "overlap": 64, "batch_size": 4, "device": "auto", "aoi": AOI, "vectorize": True,
                  "min_area": 0.0, "simplify": 0.0},
    "change": {"pre": "/d/pre.tif", "post": "/d/post.tif", "aoi": None, "model": None, "landcover_model": None,
               "output_dir": "/o", "name": "change", "tile_size": 256, "overlap": 32, "device": "cpu",
               "vectorize": True},
    "damage": {"pre": [{"path": "/d/p1.tif"}, {"path": "/d/p2.tif"}], "post": {"path": "/d/post.tif", "bands": [1, 2, 3]},
               "buildings": "/d/b.geojson", "aoi": None, "model": None, "output_dir": "/o", "name": "damage",
               "tile_size": 256, "overlap": 32, "device": "auto"},
    "finetune": {"raster": "/d/r.tif", "labels": "/d/l.gpkg", "class_field": "class", "base_model": None,
                 "epochs": 3, "freeze_encoder": True, "resume": False, "device": "auto", "output_dir": "/o",
                 "name": "ft"},
    "export": {"source": "/d/a.gpkg", "layer": None, "dest": "/o/a.shp", "format": "ESRI Shapefile"},
}


def test_server_every_builtin_kind_has_a_schema():
    assert set(PARAMS_MODELS) == {"landcover", "change", "damage", "finetune", "export"}
    assert set(PARAMS_MODELS) <= set(pipeline_kinds())


@pytest.mark.parametrize("kind", sorted(DOCUMENTED))
def test_server_documented_params_validate(kind):
    params = params_model(kind)(**DOCUMENTED[kind]).model_dump(mode="json")
    for key, value in DOCUMENTED[kind].items():
        if key not in ("s2", "pre", "post", "aoi"):
            assert params[key] == value, key


def test_server_defaults_reach_the_pipelines():
    lc = params_model("landcover")(hr=[{"path": "/a.tif"}], output_dir="/o").model_dump(mode="json")
    assert (lc["name"], lc["tile_size"], lc["overlap"], lc["vectorize"], lc["device"]) == ("landcover", None, 64, True, "auto")
    assert lc["batch_size"] == 0  # automatic: the engine picks for the device
    ch = params_model("change")(pre="/a.tif", post="/b.tif", output_dir="/o").model_dump(mode="json")
    assert ch["tile_size"] is None and ch["overlap"] == 32 and ch["threshold"] == 0.5
    assert ch["window"] == 4096  # the pipeline's own default post-processing window
    dmg = params_model("damage")(pre="/a.tif", post="/b.tif", output_dir="/o").model_dump(mode="json")
    assert dmg["window"] == 4096
    s2 = params_model("landcover")(s2=[{"path": "/s.tif", "date": "2020-02-29"}], output_dir="/o").model_dump(mode="json")
    assert s2["s2"][0]["date"] == "2020-02-29"


@pytest.mark.parametrize("kind, change, words", [
    ("landcover", {"s2": [{"path": "/s.tif", "date": "2021-02-30"}]}, "date"),
    ("landcover", {"aoi": {"geometry": {"type": "Polygon"}, "crs": "EPSG:4326"}}, "coordinates"),
    ("landcover", {"hr": [{"path": "/a.tif", "bands": [0]}]}, "1-based"),
    ("landcover", {"hr": [], "s2": [], "s1": []}, "at least one input raster"),
    ("change", {"threshold": 1.5}, "threshold"),
    ("change", {"window": 1000}, "multiple of 256"),
    ("damage", {"window": 100}, "window"),
    ("landcover", {"batch_size": -1}, "batch_size"),
    ("finetune", {"chip_size": 100}, "multiple of 32"),
    ("finetune", {"epochs": 0}, "epochs"),
    ("export", {"format": "KML"}, "format"),
    ("export", {"dest": "/o/../x.gpkg"}, "'..'"),
    ("damage", {"surprise": 1}, "surprise"),
])
def test_server_schema_refusals_name_the_field(kind, change, words):
    with pytest.raises(ValidationError) as info:
        params_model(kind)(**{**DOCUMENTED[kind], **change})
    assert words in str(info.value)


def test_server_openapi_documents_each_kind(client, auth):
    spec = client.get("/openapi.json", headers=auth).json()
    schemas = spec["components"]["schemas"]
    for name in ("LandcoverParams", "ChangeParams", "DamageParams", "FinetuneParams", "ExportParams"):
        assert schemas[name]["additionalProperties"] is False, name
    body = spec["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"]["propertyName"] == "kind"


def test_plugin_sends_the_backends_pair_overlap_when_it_leaves_the_tile_to_the_model():
    """The plugin (which cannot import the backend) names the pair overlap it sends with 'Model's own'."""
    import ast
    from pathlib import Path

    source = Path(__file__).resolve().parents[3] / "skysense_qgis" / "job_params.py"
    (plugin_overlap,) = [ast.literal_eval(node.value) for node in ast.parse(source.read_text()).body
                         if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PAIR_OVERLAP"
                                                                 for t in node.targets)]
    assert plugin_overlap == params_model("change").model_fields["overlap"].default == 32
    assert params_model("damage").model_fields["overlap"].default == 32
