"""The OpenAPI document: valid OpenAPI 3.1, served, and naming exactly the routes the app has."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from api.app import create_app
from api.openapi import DOCUMENT, PATH
from shipper.config import load_config

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(load_config(env={"LOGSHIP_STORE_URL": f"file://{tmp_path}/archive"}))
    # aiohttp adds a HEAD beside every GET; the document lists HEAD only where it means something
    return {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
            if r.resource is not None and r.method != "HEAD"}


def _doc_routes() -> set[tuple[str, str]]:
    return {(m, path) for path, item in DOCUMENT["paths"].items() for m in item if m in METHODS and m != "head"}


def test_document_is_valid_openapi_3_1() -> None:
    validate(DOCUMENT)  # raises on any error against the OpenAPI 3.1 schema, $refs resolved
    assert DOCUMENT["openapi"].startswith("3.1.")
    assert json.loads(json.dumps(DOCUMENT)) == DOCUMENT  # plain JSON data
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    error = DOCUMENT["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "detail", "hint"}


def test_every_route_of_the_app_is_documented_and_nothing_else(tmp_path: Path) -> None:
    app, doc = _app_routes(tmp_path), _doc_routes()
    assert app - doc == set(), "routes without an entry in api/openapi.py"
    assert doc - app == set(), "documented routes that the app does not have"
    for path, item in DOCUMENT["paths"].items():
        for method, op in item.items():
            assert op.get("operationId") and op.get("responses"), (method, path)
            for name in (p["name"] for p in op.get("parameters", []) if p["in"] == "path"):
                assert "{" + name + "}" in path


def test_log_route_documents_its_http_semantics() -> None:
    log = DOCUMENT["paths"]["/api/v1/tasks/{task}/hosts/{host}/log"]["get"]
    assert {"200", "206", "416"} <= set(log["responses"])
    assert {"stream", "follow", "start", "Range", "If-Range"} <= {p["name"] for p in log["parameters"]}
    assert {"ETag", "X-Log-Size", "X-More-Data"} <= set(log["responses"]["200"]["headers"])
    assert "Content-Range" in log["responses"]["206"]["headers"]
    tail = DOCUMENT["components"]["schemas"]["TailMessage"]["oneOf"]
    assert {t["$ref"].rsplit("/", 1)[1] for t in tail} >= {"TailData", "TailEnd", "TailSkipped"}
    assert DOCUMENT["paths"]["/healthz"]["get"]["security"] == []


@pytest.mark.asyncio(loop_scope="session")
async def test_served_as_json(tmp_path: Path) -> None:
    cfg = load_config(env={"LOGSHIP_STORE_URL": f"file://{tmp_path}/archive"})
    client = TestClient(TestServer(create_app(cfg)))
    await client.start_server()
    try:
        r = await client.get(PATH)
        assert r.status == 200 and r.content_type == "application/json"
        assert await r.json() == DOCUMENT
    finally:
        await client.close()
