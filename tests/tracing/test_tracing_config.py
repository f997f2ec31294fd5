"""``[tracing]`` and ``[metrics]`` are checked at start, and OpenTelemetry stays optional:
the broker imports none of it until a ``[tracing]`` table asks, and without the SDK
that table is refused with what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ferrymq.gateways.config import ConfigError
from ferrymq.gateways.server import apply_metrics_options
from ferrymq.gateways.tracing import tracer_from_config


def test_no_table_no_tracer_and_bad_tables_are_refused() -> None:
    assert tracer_from_config({}) is None
    assert tracer_from_config({"enabled": False}) is None
    for bad, says in (({"exporter": "zipkin"}, "exporter"), ({"sample_ratio": 2}, "sample_ratio"),
                      ({"sample_ratio": "x"}, "sample_ratio"), ({"endpoint": "x"}, "unknown")):
        with pytest.raises(ConfigError, match=says):
            tracer_from_config(bad)
    t = tracer_from_config({"exporter": "memory", "sample_ratio": 0.5})
    assert t is not None and t.traces_all
    t.shutdown()


def test_metrics_table_is_checked() -> None:
    class B:
        from ferrymq.core.metrics import MetricsRegistry
        metrics = MetricsRegistry()

    b = B()
    apply_metrics_options(b, {"max_topic_labels": 5, "otel_names": False})  # type: ignore[arg-type]
    assert (b.metrics.max_topic_labels, b.metrics.otel_names) == (5, False)
    for bad in ({"max_topic_labels": 0}, {"max_lag_series": "many"}, {"otel_names": "yes"},
                {"labels": 1}):
        with pytest.raises(ConfigError):
            apply_metrics_options(b, bad)  # type: ignore[arg-type]


def test_the_broker_runs_without_opentelemetry() -> None:
    code = ("import sys\n"
            "import ferrymq.gateways.server, ferrymq.gateways.cli, ferrymq.core.broker\n"
            "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
            "for name in ('opentelemetry', 'opentelemetry.sdk', 'opentelemetry.sdk.trace'):\n"
            "    sys.modules[name] = None  # as if not installed\n"
            "from ferrymq.gateways.tracing import tracer_from_config\n"
            "from ferrymq.gateways.config import ConfigError\n"
            "try:\n"
            "    tracer_from_config({'exporter': 'otlp'})\n"
            "except ConfigError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'ferrymq[otel]'" in out.stdout


async def test_a_failing_exporter_never_fails_a_put(tmp_path) -> None:
    from ferrymq.core.broker import Broker, BrokerConfig
    from ferrymq.core.message import Message
    from ferrymq.core.tracing import PutTrace

    tracer = tracer_from_config({"exporter": "memory"})
    assert tracer is not None

    def broken(put: PutTrace) -> None:
        raise RuntimeError("a bug in tracing")

    tracer._stored = broken  # type: ignore[method-assign]
    cfg = BrokerConfig(data_dir=str(tmp_path / "d"), segment_size=16 << 20,
                       cq_entries_per_file=1000, index_slots=1000, index_entries=4000)
    async with Broker.open(cfg) as broker:
        broker.set_tracer(tracer)
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        r = await broker.put(Message("t", b"x", {"traceparent": tp}))
        assert r.queue_offset == 0 and tracer.failures == 1, "stored, and the bug counted"
        assert [m.body for m in broker.get(None, "t", r.queue_id, 0).messages()] == [b"x"]
    tracer.shutdown()
