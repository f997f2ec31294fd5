"""A real broker process configured with ``[tracing] otlp_endpoint`` exports its spans over
OTLP/HTTP (protobuf) to a collector: here a small HTTP server in the test that decodes
the OpenTelemetry protocol's ExportTraceServiceRequest."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Collector(BaseHTTPRequestHandler):
    spans: ClassVar[list[tuple[str, str, str]]] = []  # (name, trace id hex, service)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes
                            if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    Collector.spans.append((s.name, s.trace_id.hex(), service))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_spans_reach_an_otlp_collector(start_broker, tmp_path, monkeypatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = tmp_path / "otlp.toml"
        config.write_text("[tracing]\nexporter = \"otlp\"\nservice_name = \"ferry-test\"\n"
                          f"otlp_endpoint = \"http://127.0.0.1:{server.server_port}/v1/traces\"\n")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s
        b = start_broker("http", extra_args=("--config", str(config)))
        with httpx.Client(base_url=f"http://{b.address('http')}", timeout=10) as c:
            r = c.post("/v1/topics/otlp/messages", json={"body": "x"},
                       headers={"traceparent": TRACEPARENT})
            assert r.status_code == 201
            assert len(c.get("/v1/topics/otlp/messages", params={"group": "g"})
                       .json()["messages"]) == 1
        deadline = time.monotonic() + 20
        while {n for n, _, _ in Collector.spans} < {"receive otlp", "store otlp",
                                                     "deliver otlp"}:
            assert time.monotonic() < deadline, f"spans exported: {Collector.spans}"
            time.sleep(0.05)
        by_name = {n: (t, svc) for n, t, svc in Collector.spans}
        assert by_name["receive otlp"] == (TRACE_ID, "ferry-test")
        assert by_name["store otlp"][0] == TRACE_ID
    finally:
        server.shutdown()
