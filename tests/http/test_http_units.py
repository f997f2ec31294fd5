"""The HTTP door's pure parts with plain values: problem mapping, routing, parameter
coercion, envelopes and CloudEvents."""

from __future__ import annotations

import json

import pytest
from ferrymq.core import errors
from ferrymq.core.message import ConsumedMessage
from ferrymq.gateways.http import codec
from ferrymq.gateways.http.problems import PROBLEMS, Problem, from_ferry_error
from ferrymq.gateways.http.routing import Param, Route, Router, coerce


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def test_every_core_error_code_has_its_own_problem() -> None:
    for cls in (errors.FerryError, *_all_subclasses(errors.FerryError)):
        assert cls.code in PROBLEMS, f"{cls.__name__}.code {cls.code} is not mapped"
        p = from_ferry_error(cls("x"))
        assert p.code == cls.code
        assert (p.status >= 500) == (cls.code in ("internal_error", "store_error",
                                                  "flush_failed", "shutting_down",
                                                  "disk_full", "disk_pressure", "not_leader",
                                                  "not_enough_replicas",
                                                  "replication_timeout")), cls.code


def test_problem_body_is_rfc9457() -> None:
    doc = json.loads(Problem("receipt_stale", "late").body("/x"))
    assert doc == {"type": "urn:ferrymq:problem:receipt_stale",
                   "title": "Receipt handle no longer valid", "status": 410,
                   "code": "receipt_stale", "detail": "late", "instance": "/x"}
    with pytest.raises(ValueError):
        Problem("no_such_kind")


async def _h(req):  # pragma: no cover - never called
    return None


DAY_MS = 86_400_000

ROUTES = [
    Route("GET", "/v1/topics", _h, "list", "", "t"),
    Route("POST", "/v1/topics", _h, "create", "", "t"),
    Route("GET", "/v1/topics/{topic}/messages", _h, "consume", "", "t",
          (Param("topic", "path", {"type": "string"}),)),
    Route("DELETE", "/v1/topics/{topic}/messages/{receipt}", _h, "ack", "", "t",
          (Param("topic", "path", {"type": "string"}),
           Param("receipt", "path", {"type": "string"}))),
]


def test_router_matches_and_decodes_path_parameters() -> None:
    r = Router(ROUTES)
    route, params = r.match("GET", "/v1/topics/a%7Cb/messages")
    assert route.operation_id == "consume" and params == {"topic": "a|b"}
    route, params = r.match("DELETE", "/v1/topics/t/messages/abc")
    assert params == {"topic": "t", "receipt": "abc"}
    assert r.match("GET", "/v1/topics")[0].operation_id == "list"


def test_router_answers_404_and_405_with_allow() -> None:
    r = Router(ROUTES)
    with pytest.raises(Problem) as exc:
        r.match("PUT", "/v1/topics")
    assert exc.value.code == "method_not_allowed"
    assert dict(exc.value.headers)["Allow"] == "GET, HEAD, POST"
    for path in ("/v1/nothing", "/v1/topics//messages", "/v1/topics/t/messages/x/y"):
        with pytest.raises(Problem) as exc:
            r.match("GET", path)
        assert exc.value.code in ("not_found", "method_not_allowed"), path


def test_route_declarations_must_match_the_path() -> None:
    with pytest.raises(ValueError):
        Route("GET", "/v1/topics/{topic}", _h, "x", "", "t", ())


@pytest.mark.parametrize("schema, raw, value", [
    ({"type": "integer", "minimum": 1, "maximum": 5}, "3", 3),
    ({"type": "number", "minimum": 0}, "0.25", 0.25),
    ({"type": "boolean"}, "true", True),
    ({"type": "string", "enum": ["a", "b"]}, "b", "b"),
])
def test_coerce_accepts(schema, raw, value) -> None:
    assert coerce(Param("p", "query", schema), raw) == value


@pytest.mark.parametrize("schema, raw", [
    ({"type": "integer", "minimum": 1, "maximum": 5}, "0"),
    ({"type": "integer"}, "1.5"),
    ({"type": "integer"}, "9" * 40),
    ({"type": "number"}, "nan"),
    ({"type": "boolean"}, "yes"),
    ({"type": "string", "enum": ["a"]}, "c"),
    ({"type": "string", "maxLength": 2}, "abc"),
    ({"type": "string", "pattern": "^[a-z]+$"}, "A1"),
])
def test_coerce_refuses(schema, raw) -> None:
    with pytest.raises(Problem) as exc:
        coerce(Param("p", "query", schema), raw)
    assert exc.value.code == "invalid_parameter"


def test_envelope_to_message() -> None:
    m, q = codec.envelope_message("t", {"body": {"a": 1}, "keys": ["k1", "k2"], "tag": "T",
                                        "properties": {"x": "y"}, "queue": 2},
                                  max_delay_ms=DAY_MS)
    assert (m.body, q, m.queue_id) == (b'{"a":1}', 2, 2)
    assert m.properties == {"x": "y", "content-type": "application/json", "KEYS": "k1 k2",
                            "TAGS": "T", "FERRY_DOOR": "http"}


def test_the_door_is_recorded_over_a_clients_own_claim() -> None:
    m, _ = codec.envelope_message("t", {"body": "x", "properties": {"FERRY_DOOR": "kafka"}},
                                  max_delay_ms=DAY_MS)
    assert m.properties["FERRY_DOOR"] == "http"
    for ce in (codec.cloudevent_binary("t", b"x", None, {"ce-specversion": "1.0", "ce-id": "1",
                                                         "ce-source": "s", "ce-type": "t"}),
               codec.cloudevent_structured("t", {"specversion": "1.0", "id": "1", "source": "s",
                                                 "type": "t", "ferrydoor": "x"})):
        assert ce.properties["FERRY_DOOR"] == "http"


@pytest.mark.parametrize("env", [
    {}, {"body": "x", "body_base64": "eA=="}, {"body": "x", "key": "a", "keys": ["b"]},
    {"body": "x", "properties": {"a": "\x01"}}, {"body": "x", "queue": -2},
    {"body": "x", "deliver_at": -5}, {"body": "x", "deliver_at": "2030-01-01T00:00:00"},
    {"body": "x", "unknown": 1}, "just a string",
])
def test_bad_envelopes(env) -> None:
    with pytest.raises(Problem):
        codec.envelope_message("t", env, max_delay_ms=DAY_MS)


def test_ndjson_is_split_per_line_and_errors_name_the_line() -> None:
    assert codec.split_ndjson(b'{"body":"a"}\n\n{"body":"b"}\n') == [{"body": "a"},
                                                                    {"body": "b"}]
    with pytest.raises(Problem, match="line 2"):
        codec.split_ndjson(b'{"body":"a"}\n1,2\n')


def _consumed(body: bytes, props: dict[str, str]) -> ConsumedMessage:
    return ConsumedMessage("t", 1, 7, body, props, 1000, 2000, 64, b"\x7f\x00\x00\x01\x00\x00\x2a\x9f")


def test_cloudevent_structured_round_trip() -> None:
    ev = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t.x", "subject": "sub",
          "datacontenttype": "application/json", "data": {"n": 1}, "ext1": "v"}
    m = codec.cloudevent_structured("t", ev)
    assert m.properties["ce_id"] == "1" and m.properties["ce_ext1"] == "v"
    back = codec.to_cloudevent(_consumed(m.body, m.properties))
    for k, v in ev.items():
        assert back[k] == v, k
    assert (back["ferrymqtopic"], back["ferrymqqueue"], back["ferrymqoffset"]) == ("t", 1, 7)


def test_binary_body_comes_back_as_data_base64() -> None:
    back = codec.to_cloudevent(_consumed(b"\xff\x00", {}))
    assert back["data_base64"] == "/wA=" and back["type"] == "ferrymq.message"
    out = codec.message_json(_consumed(b"\xff\x00", {}))
    assert out["body_base64"] == "/wA=" and "body" not in out
