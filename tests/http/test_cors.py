"""CORS (docs/http.md, "Browsers on other origins"): preflights answered, allowed origins
get the headers a browser needs, other origins are refused before anything happens."""

from __future__ import annotations

import httpx
import pytest
import trio
from ferrymq.core.broker import Broker
from ferrymq.gateways.http.cors import CorsPolicy, normalize_origin
from http_doors import broker_config, open_door

APP = "https://app.example"


@pytest.fixture
async def cors_door(tmp_path):
    async with Broker.open(broker_config(tmp_path / "data")) as broker, \
            trio.open_nursery() as nursery:
        port = await open_door(nursery, broker, {"cors_origins": [APP, "http://127.0.0.1:9"],
                                                 "cors_max_age_s": 120})
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield broker, client
        nursery.cancel_scope.cancel()


def preflight(method: str, headers: str = "", origin: str = APP) -> dict[str, str]:
    h = {"origin": origin, "access-control-request-method": method}
    if headers:
        h["access-control-request-headers"] = headers
    return h


async def test_a_preflight_from_an_allowed_origin_is_answered(cors_door) -> None:
    _, client = cors_door
    r = await client.options("/v1/topics/orders/messages",
                             headers=preflight("POST", "Content-Type, Authorization"))
    assert r.status_code == 204, r.text
    assert r.headers["access-control-allow-origin"] == APP
    assert r.headers["access-control-allow-methods"] == "GET, HEAD, POST, OPTIONS"
    assert r.headers["access-control-allow-headers"] == "content-type, authorization"
    assert r.headers["access-control-max-age"] == "120"
    assert "Origin" in r.headers["vary"]
    assert "access-control-allow-credentials" not in r.headers


async def test_a_preflight_needs_no_token(tmp_path) -> None:
    """Browsers never send credentials with a preflight: it must pass without them."""
    async with Broker.open(broker_config(tmp_path / "data")) as broker, \
            trio.open_nursery() as nursery:
        port = await open_door(nursery, broker, {"cors_origins": [APP], "auth_tokens": ["s3cret"]})
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.options("/v1/topics", headers=preflight("GET", "authorization"))
            assert r.status_code == 204
            r = await client.get("/v1/topics", headers={"origin": APP})
            assert r.status_code == 401
            assert r.headers["access-control-allow-origin"] == APP, "a browser may read the 401"
            r = await client.get("/v1/topics", headers={"origin": APP,
                                                        "authorization": "Bearer s3cret"})
            assert r.status_code == 200
        nursery.cancel_scope.cancel()


async def test_a_preflight_refuses_what_is_not_allowed(cors_door) -> None:
    _, client = cors_door
    for headers, why in ((preflight("POST", origin="https://evil.example"), "origin"),
                         (preflight("PUT"), "method"),
                         (preflight("POST", "x-custom"), "header"),
                         (preflight("POST", "bad(header)"), "header names")):
        r = await client.options("/v1/topics/orders/messages", headers=headers)
        assert r.status_code == 403, why
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "cors_refused", why
        assert "access-control-allow-origin" not in r.headers, why


async def test_plain_options_lists_the_methods_of_a_path(cors_door) -> None:
    _, client = cors_door
    r = await client.options("/v1/topics/orders/messages")
    assert r.status_code == 204
    assert r.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    r = await client.options("/nowhere")
    assert (r.status_code, r.json()["code"]) == (404, "not_found")


async def test_an_allowed_origin_gets_cors_headers_on_every_answer(cors_door) -> None:
    _, client = cors_door
    r = await client.post("/v1/topics/orders/messages", json={"body": "x"},
                          headers={"origin": APP})
    assert r.status_code == 201
    assert r.headers["access-control-allow-origin"] == APP
    assert "Location" in r.headers["access-control-expose-headers"]
    r = await client.get("/v1/topics/nope", headers={"origin": APP})
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == APP
    r = await client.get("/v1/topics/orders/stream", params={"max": 1},
                         headers={"origin": APP, "accept": "text/plain"})
    assert r.headers["access-control-allow-origin"] == APP


async def test_another_origin_is_refused_before_the_request_acts(cors_door) -> None:
    broker, client = cors_door
    await broker.create_topic("orders", 1)
    r = await client.post("/v1/topics/orders/messages", content=b"x",
                          headers={"origin": "https://evil.example", "content-type": "text/plain"})
    assert (r.status_code, r.json()["code"]) == (403, "cors_refused")
    assert broker.queue_bounds("orders", 0) == (0, 0), "nothing was stored"


async def test_the_doors_own_origin_needs_no_configuration(tmp_path) -> None:
    """The console's pages POST with Origin set to the door itself."""
    async with Broker.open(broker_config(tmp_path / "data")) as broker, \
            trio.open_nursery() as nursery:
        port = await open_door(nursery, broker)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.post("/v1/topics/t/messages", json={"body": "x"},
                                  headers={"origin": f"http://127.0.0.1:{port}"})
            assert r.status_code == 201
            assert "access-control-allow-origin" not in r.headers, "same origin: no CORS"
            r = await client.post("/v1/topics/t/messages", json={"body": "x"},
                                  headers={"origin": "http://127.0.0.1:1"})
            assert r.status_code == 403, "another port is another origin"
        nursery.cancel_scope.cancel()


async def test_any_origin_gets_a_star_and_credentials_echo_the_origin(tmp_path) -> None:
    async with Broker.open(broker_config(tmp_path / "data")) as broker, \
            trio.open_nursery() as nursery:
        star = await open_door(nursery, broker, {"cors_origins": ["*"]})
        creds = await open_door(nursery, broker, {"cors_origins": [APP],
                                                  "cors_allow_credentials": True})
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{star}/v1/topics",
                                 headers={"origin": "https://anyone.example"})
            assert r.headers["access-control-allow-origin"] == "*"
            assert "vary" not in r.headers
            r = await client.get(f"http://127.0.0.1:{creds}/v1/topics", headers={"origin": APP})
            assert r.headers["access-control-allow-origin"] == APP
            assert r.headers["access-control-allow-credentials"] == "true"
            assert r.headers["vary"] == "Origin"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("options", [
    {"cors_origins": ["https://app.example/path"]},
    {"cors_origins": ["app.example"]},
    {"cors_origins": "ftp://x"},
    {"cors_origins": [1]},
    {"cors_origins": ["*"], "cors_allow_credentials": True},
    {"cors_allow_credentials": "yes"},
    {"cors_max_age_s": -1},
    {"cors_max_age_s": 10**9},
])
def test_a_bad_cors_option_stops_the_door(options) -> None:
    with pytest.raises(ValueError, match=r"\[http\] cors_"):
        CorsPolicy.from_options(options)


def test_origins_compare_as_browsers_serialise_them() -> None:
    assert normalize_origin("HTTPS://App.Example:443") == "https://app.example"
    assert normalize_origin("http://[::1]:8080") == "http://[::1]:8080"
    assert normalize_origin("http://x:99999") is None
    p = CorsPolicy.from_options({"cors_origins": ["https://app.example:443", "null"]})
    assert p.allowed("https://app.example") and p.allowed("null")
    assert not p.allowed("https://app.example.evil")
    assert CorsPolicy.same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert CorsPolicy.same_origin("http://broker", "broker:80")
    assert not CorsPolicy.same_origin("http://broker:81", "broker")
    assert not CorsPolicy.same_origin("null", "broker")
