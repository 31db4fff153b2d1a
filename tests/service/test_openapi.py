"""The OpenAPI document against the real app: valid, every route, limits from the config, and the
real responses match its schemas."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from openapi_spec_validator import validate

from service.app import create_app
from service.config import ServiceConfig
from service.model.contract import IMAGE_SIDE, MODEL_NAME, N_CLASSES, N_PIXELS, PIXEL_MAX
from service.openapi import ApiLimits, build_document
from tests.conftest import COMMITTED_MODELS
from tests.service.conftest import schema_validator

#: url rules deliberately left out of the document, each with its reason
UNDOCUMENTED_RULES = {
    # V2's catch-all that answers unknown /v2 paths with a 404 in the protocol's error shape
    "/v2/<path:rest>",
}
IGNORED_METHODS = {"HEAD", "OPTIONS"}
# Limits unlike the defaults, so a number copied into the document instead of read would show.
CONFIG = ServiceConfig(
    model_dir=COMMITTED_MODELS, max_batch=96, max_body_bytes=1_234_567, max_image_bytes=345_678
)


@pytest.fixture(scope="module")
def app() -> Any:
    return create_app(CONFIG)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture(scope="module")
def document(app: Any) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    document: dict[str, Any] = response.get_json()
    return document


@pytest.fixture(scope="module")
def selftest() -> dict[str, Any]:
    selftest: dict[str, Any] = json.loads(
        (COMMITTED_MODELS / MODEL_NAME / "1" / "selftest.json").read_text()
    )
    return selftest


def openapi_path(rule: str) -> str:
    """Flask's /v2/models/<model> as OpenAPI's /v2/models/{model}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_document_is_valid_openapi_3_1(document: Any) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)
    assert "${" not in json.dumps(document)  # every placeholder of openapi.yaml filled


def test_an_unknown_placeholder_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    template = {"openapi": "3.1.0", "info": {"title": "x", "version": "${no_such_limit}"}}
    monkeypatch.setattr("service.openapi.document_template", lambda: template)
    with pytest.raises(ValueError, match="no_such_limit"):
        build_document(ApiLimits(max_batch=3, max_body_bytes=1000), version="1")


def test_every_route_is_documented_and_nothing_else(app: Any, document: Any) -> None:
    served = {
        (openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule not in UNDOCUMENTED_RULES
        for method in rule.methods - IGNORED_METHODS
    }
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert served == documented
    # the exclusions are routes that exist, not stale names
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert "/v2/<path:rest>" in rules


def test_operation_ids_are_unique_and_every_response_names_the_request_id(document: Any) -> None:
    operations = [
        operation
        for item in document["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    ]
    ids = [operation["operationId"] for operation in operations]
    assert len(ids) == len(set(ids))
    for operation in operations:
        for response in operation["responses"].values():
            assert "X-Request-ID" in response["headers"]


def test_limits_come_from_the_config_and_the_contract(document: Any) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["PredictRequest"]["properties"]["images"]["maxItems"] == CONFIG.max_batch
    assert schemas["PredictResponse"]["properties"]["predictions"]["maxItems"] == CONFIG.max_batch
    assert schemas["FlatPixels"]["minItems"] == schemas["FlatPixels"]["maxItems"] == N_PIXELS
    assert schemas["FlatPixels"]["items"]["maximum"] == PIXEL_MAX
    assert schemas["PixelRows"]["maxItems"] == IMAGE_SIDE
    assert schemas["TritonModelConfig"]["properties"]["max_batch_size"]["const"] == CONFIG.max_batch
    assert str(CONFIG.max_image_bytes) in schemas["EncodedImage"]["description"]
    assert schemas["EncodedImage"]["maxLength"] > CONFIG.max_image_bytes * 4 // 3
    predict = document["paths"]["/predict"]["post"]
    assert str(CONFIG.max_body_bytes) in predict["description"]
    top_k = next(p for p in predict["parameters"] if p.get("name") == "top_k")
    assert top_k["schema"]["maximum"] == N_CLASSES
    from service.api import ACCEPTED_TYPES

    assert set(predict["requestBody"]["content"]) == set(ACCEPTED_TYPES)


def test_document_depends_on_limits_not_constants() -> None:
    small = build_document(ApiLimits(max_batch=3, max_body_bytes=1000), version="1")
    large = build_document(ApiLimits(max_batch=700, max_body_bytes=10**7), version="1")
    path = ("components", "schemas", "PredictRequest", "properties", "images", "maxItems")

    def dig(document: dict[str, Any]) -> Any:
        for key in path:
            document = document[key]
        return document

    assert (dig(small), dig(large)) == (3, 700)


def test_request_examples_match_their_schemas(document: Any) -> None:
    content = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    validator = schema_validator(document, "PredictRequest")
    for example in content["examples"].values():
        validator.validate(example["value"])


def test_schemas_reject_what_the_service_rejects(document: Any) -> None:
    validator = schema_validator(document, "PredictRequest")
    bad: dict[str, Any]
    for bad in (
        {"images": []},
        {"images": [[0] * (N_PIXELS - 1)]},
        {"images": [[256] * N_PIXELS]},
        {"images": [[0] * N_PIXELS] * (CONFIG.max_batch + 1)},
        {"pictures": []},
    ):
        assert not validator.is_valid(bad), bad


def test_real_predict_answer_matches_the_schema(client: Any, document: Any, selftest: Any) -> None:
    images = selftest["images"][:3]
    response = client.post("/predict?top_k=3&return_input=true", json={"images": images})
    assert response.status_code == 200, response.get_data(as_text=True)
    schema_validator(document, "PredictResponse").validate(response.get_json())
    schema_validator(document, "PredictRequest").validate({"images": images})


@pytest.mark.parametrize(
    "body",
    [
        {"images": []},
        {"images": [[1000] * N_PIXELS]},
        {"images": "nope"},
    ],
)
def test_real_error_answers_match_the_error_schema(client: Any, document: Any, body: Any) -> None:
    response = client.post("/predict", json=body)
    assert 400 <= response.status_code < 500
    assert str(response.status_code) in document["paths"]["/predict"]["post"]["responses"]
    schema_validator(document, "Error").validate(response.get_json())


def test_real_v2_answers_match_the_schemas(client: Any, document: Any, selftest: Any) -> None:
    validator = schema_validator(document, "V2ModelMetadata")
    validator.validate(client.get(f"/v2/models/{MODEL_NAME}").get_json())
    schema_validator(document, "V2ServerMetadata").validate(client.get("/v2").get_json())
    schema_validator(document, "TritonModelConfig").validate(
        client.get(f"/v2/models/{MODEL_NAME}/config").get_json()
    )
    request = {
        "id": "r1",
        "inputs": [
            {
                "name": "input",
                "shape": [2, N_PIXELS],
                "datatype": "UINT8",
                "data": selftest["images"][:2],
            }
        ],
        "outputs": [
            {"name": "label"},
            {"name": "probabilities", "parameters": {"classification": 2}},
        ],
    }
    schema_validator(document, "V2InferenceRequest").validate(request)
    answer = client.post(f"/v2/models/{MODEL_NAME}/infer", json=request)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    schema_validator(document, "V2InferenceResponse").validate(answer.get_json())
    missing = client.get("/v2/models/no-such-model")
    assert missing.status_code == 404
    schema_validator(document, "V2Error").validate(missing.get_json())


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def test_docs_page_loads_everything_from_this_server(client: Any) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.content_type.startswith("text/html")
    parser = _Links()
    parser.feed(page.get_data(as_text=True))
    assert len(parser.links) >= 4
    for link in parser.links:
        assert "//" not in link, link  # no absolute or protocol-relative URL
        asset = client.get("/" + link)  # links are relative to /docs, i.e. to /
        assert asset.status_code == 200, link
        assert asset.data
        asset.close()  # the file stays open until the response is closed, as in a WSGI server
    script = client.get("/docs/assets/docs.js").get_data(as_text=True)
    assert 'url: "openapi.json"' in script
    assert "validatorUrl: null" in script


@pytest.mark.parametrize("name", ["index.html", "..%2F..%2Fapp.py", "swagger-editor.js"])
def test_docs_assets_serve_only_the_listed_files(client: Any, name: Any) -> None:
    response = client.get(f"/docs/assets/{name}")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_openapi_json_carries_a_request_id(client: Any) -> None:
    response = client.get("/openapi.json", headers={"X-Request-ID": "doc-1"})
    assert response.headers["X-Request-ID"] == "doc-1"
