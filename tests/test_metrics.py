"""The broker-wide metrics registry and its Prometheus text rendering (core/metrics.py)."""

from __future__ import annotations

import pytest
from ferrymq.core.metrics import Family, MetricsRegistry


def test_counter_gauge_histogram_render_in_prometheus_text_format() -> None:
    reg = MetricsRegistry()
    reqs = reg.counter("ferrymq_things_total", "Things.", ("protocol",))
    reqs.labels("http").inc()
    reqs.labels("http").inc(2)
    reg.gauge("ferrymq_level", "Level.").labels().set(7.5)
    h = reg.histogram("ferrymq_wait_seconds", "Waits.", ("op",), buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.labels("pop").observe(v)
    text = reg.render()
    assert "# HELP ferrymq_things_total Things.\n# TYPE ferrymq_things_total counter\n" in text
    assert 'ferrymq_things_total{protocol="http"} 3\n' in text
    assert "ferrymq_level 7.5\n" in text
    assert 'ferrymq_wait_seconds_bucket{op="pop",le="0.1"} 1\n' in text
    assert 'ferrymq_wait_seconds_bucket{op="pop",le="1"} 2\n' in text
    assert 'ferrymq_wait_seconds_bucket{op="pop",le="+Inf"} 3\n' in text
    assert 'ferrymq_wait_seconds_count{op="pop"} 3\n' in text
    assert 'ferrymq_wait_seconds_sum{op="pop"} 5.55\n' in text
    assert text.endswith("\n")


def test_label_values_are_escaped() -> None:
    reg = MetricsRegistry()
    reg.gauge("ferrymq_g", "G.", ("topic",)).labels('a"b\\c\nd').set(1)
    assert 'ferrymq_g{topic="a\\"b\\\\c\\nd"} 1' in reg.render()


def test_naming_and_label_rules_are_enforced() -> None:
    reg = MetricsRegistry()
    with pytest.raises(ValueError, match="_total"):
        reg.counter("ferrymq_requests", "no suffix")
    c = reg.counter("ferrymq_x_total", "X.", ("a",))
    assert reg.counter("ferrymq_x_total", "X.", ("a",)) is c, "registering twice is idempotent"
    with pytest.raises(ValueError):
        reg.gauge("ferrymq_x_total", "X.", ("a",))
    with pytest.raises(ValueError):
        c.labels("1", "2")


def test_collectors_are_read_at_scrape_time() -> None:
    reg = MetricsRegistry()
    state = {"n": 1}

    def collect():
        f = Family("ferrymq_live", "gauge", "Live.")
        f.add(state["n"], topic="t")
        return [f]

    reg.add_collector(collect)
    assert 'ferrymq_live{topic="t"} 1' in reg.render()
    state["n"] = 2
    assert 'ferrymq_live{topic="t"} 2' in reg.render()
