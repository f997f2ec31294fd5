"""The HTTP door refuses delivery times past the broker's configured horizon
(``timer_max_delay_ms``), not past a limit of its own: a broker configured for two
years takes a 400-day delay over HTTP, one configured for a minute refuses two."""

from __future__ import annotations

import httpx
import trio
from ferrymq.core.broker import Broker, BrokerConfig
from ferrymq.gateways import http as http_door
from ferrymq.gateways.config import ServerConfig
from ferrymq.gateways.server import DoorContext

DAY_MS = 86_400_000


async def _post(tmp_path, horizon_ms: int, envelope: dict) -> tuple[httpx.Response, dict]:  # type: ignore[no-untyped-def]
    cfg = BrokerConfig(data_dir=str(tmp_path / "data"), segment_size=16 << 20,
                       cq_entries_per_file=1000, index_slots=1000, index_entries=4000,
                       timer_max_delay_ms=horizon_ms)
    async with Broker.open(cfg) as broker, trio.open_nursery() as nursery:
        ctx = DoorContext(broker, "127.0.0.1", 0, {}, ServerConfig())
        port = await nursery.start(http_door.serve, ctx)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            r = await c.post("/v1/topics/d/messages", json=envelope)
            doc = (await c.get("/openapi.json")).json()
        nursery.cancel_scope.cancel()
    return r, doc


def _schema_max(doc: dict) -> int:
    body = doc["paths"]["/v1/topics/{topic}/messages"]["post"]["requestBody"]
    envelope = body["content"]["application/json"]["schema"]["oneOf"][0]
    return envelope["properties"]["delay_ms"]["maximum"]


async def test_a_longer_configured_horizon_is_usable_over_http(tmp_path) -> None:
    r, doc = await _post(tmp_path, 730 * DAY_MS, {"body": "x", "delay_ms": 400 * DAY_MS})
    assert r.status_code == 201, r.text
    assert _schema_max(doc) == 730 * DAY_MS


async def test_a_shorter_configured_horizon_is_the_doors_limit(tmp_path) -> None:
    r, doc = await _post(tmp_path, 60_000, {"body": "x", "delay_ms": 120_000})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_body"
    assert "0..60000" in r.json()["detail"]
    assert _schema_max(doc) == 60_000


async def test_deliver_at_past_the_horizon_names_it(tmp_path) -> None:
    r, _ = await _post(tmp_path, 2 * 3_600_000, {"body": "x", "deliver_at": 2**41})
    assert r.status_code == 400
    assert "2 hours from now" in r.json()["detail"]
