"""The API as gradio_client sees it: clean parameter names, and every parameter with a sensible default optional."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from gradio_client import handle_file
from PIL import Image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

# The inputs a call cannot do without; every other parameter has a default.
REQUIRED = {
    "/predict": ["files"], "/classify_image": ["image"], "/delete_run": ["model"], "/load_hub_model": ["repo"],
    "/push_to_hub": ["repo"], "/review": ["run"],
}  # fmt: skip
# The documented API (docs/api.md); the page's own handlers are private.
DOCUMENTED = {
    "/predict", "/classify_image", "/architecture_table", "/architecture", "/load_dataset", "/suggest_settings",
    "/train", "/stop", "/continue_training", "/list_runs", "/delete_run", "/download_run", "/estimate", "/export_onnx",
    "/export_run_onnx", "/load_hub_model", "/push_to_hub", "/review",
}  # fmt: skip


def test_the_api_is_the_documented_endpoints_each_described(client, app_server):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == DOCUMENTED
    with urllib.request.urlopen(f"{app_server.url}gradio_api/info", timeout=30) as r:
        described = {name: info["description"] for name, info in json.load(r)["named_endpoints"].items()}
    for name in DOCUMENTED:  # a sentence that says what it does, not Python's own doc of a partial or a lambda
        assert len(described[name]) > 30 and "partial" not in described[name] and "lambda" not in described[name], name
    with pytest.raises(ValueError, match="Cannot find a function"):  # the page's own handlers are not callable
        client.predict(None, None, api_name="/classify")


def test_every_endpoint_names_its_parameters_and_only_the_inputs_are_required(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name, endpoint in endpoints.items():
        names = [p["parameter_name"] for p in endpoint["parameters"]]
        assert all(re.fullmatch(r"[a-z][a-z_]*", n) and not n.startswith("param_") for n in names), (name, names)
        required = [p["parameter_name"] for p in endpoint["parameters"] if not p["parameter_has_default"]]
        assert required == REQUIRED.get(name, []), name
    defaults = {p["parameter_name"]: p["parameter_default"] for p in endpoints["/predict"]["parameters"][1:]}
    assert defaults == {
        "model": "densenet121", "weights_choice": "ImageNet", "weights_file": None, "top_k": 5, "show_cam": True,
        "backend": "auto",
    }  # fmt: skip
    tool = {p["parameter_name"]: p["parameter_default"] for p in endpoints["/classify_image"]["parameters"][1:]}
    assert tool == {"model": "densenet121", "weights_choice": "ImageNet", "top_k": 5, "backend": "auto"}


def test_predict_needs_only_the_image(client, tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (30, 160, 40)).save(photo)
    label, gallery, table, info = client.predict([handle_file(str(photo))], api_name="/predict")
    assert len(label["confidences"]) == 5 and len(gallery) == 1 and "densenet121" in info


def test_the_architecture_table_needs_only_a_model(client):
    summary, table = client.predict("densenet_bc100_k12", api_name="/architecture_table")
    assert "769,162" in summary and len(table["data"]) > 48
