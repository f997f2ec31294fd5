"""The web console in headless Chromium against a real broker process: every page loads
without a console error, charts draw data after producing, a search finds a message just
produced, and a dead letter is resent from the page. Screenshots: test-artifacts/console/."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest
from browser_tools import screenshot

TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def broker(start_module_broker, tmp_path_factory):
    """One broker for the module: HTTP door sampling its history every 0.2 s."""
    conf = tmp_path_factory.mktemp("conf") / "ferrymq.toml"
    conf.write_text("[http]\nconsole_sample_s = 0.2\n")
    return start_module_broker("http", extra_args=("--config", str(conf),
                                                   "--segment-size", str(32 << 20)))


@pytest.fixture(scope="module")
def http(broker):
    with httpx.Client(base_url=f"http://{broker.address('http')}", timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def data(http):
    """Topics, a consumer group with lag, a timer, an open transaction: something on
    every page. Returns the id of one message."""
    http.post("/v1/topics", json={"name": "orders", "queues": 2})
    ids = []
    for i in range(30):
        r = http.post("/v1/topics/orders/messages", json={
            "body": {"order": i, "total": 10 + i}, "key": f"order-{i}", "tag": "created",
            "properties": {"region": "eu"}})
        ids.append(r.json()["ids"][0])
    r = http.get("/v1/topics/orders/messages", params={"group": "billing", "max": 8})
    receipts = [m["receipt"] for m in r.json()["messages"]]
    http.post("/v1/acks", json={"receipts": receipts[:5]})
    http.post("/v1/topics/sensors/messages", json={"body": "21.5", "delay_ms": 2 * 3600_000})
    http.post("/v1/topics/payments/transactions", params={"group": "checkout"},
              json={"body": "charge order 7"})
    return ids[3]


def produce_for(http, seconds: float, topic: str = "orders") -> None:
    """Keep a trickle of messages going while a chart collects samples."""
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        http.post(f"/v1/topics/{topic}/messages", json={"body": f"tick {i}"})
        i += 1


def open_view(browser, broker, route: str, ready: str):
    page = browser.new_page()
    page.goto(f"http://{broker.address('http')}/console/#/{route}")
    page.wait_for_selector(ready, timeout=TIMEOUT_MS)
    return page


def chart_drawn(page, selector: str) -> None:
    """Wait until the chart's first data path has at least two points."""
    page.wait_for_function(
        """sel => [...document.querySelectorAll(sel + ' path.series')]
                   .some(p => /[ML][^ML]*L/.test(p.getAttribute('d') || ''))""",
        arg=selector, timeout=TIMEOUT_MS)


PAGES = [
    ("", "[data-card=broker]"),
    ("topics", "section[data-view=topics] table"),
    ("topics/orders", "section[data-view=topics] table"),
    ("groups", "section[data-view=groups] table"),
    ("groups/billing", "[data-card=group-lag]"),
    ("messages", "form#search"),
    ("dlq", "section[data-view=dlq] table"),
    ("transactions", "section[data-view=transactions] table"),
    ("timers", "[data-card=timers-pending]"),
    ("cluster", "section[data-view=cluster] table"),
]


def test_every_page_loads_without_console_errors(browser, broker, data) -> None:
    for route, ready in [*PAGES, (f"message/{data}", "ol.timeline li")]:
        page = open_view(browser, broker, route, ready)
        errors = page.locator(".error").all_inner_texts()
        assert errors == [], f"#{route}: {errors}"
        words = page.inner_text("main").split()
        assert "null" not in words and "undefined" not in words, f"#{route}: {words}"
        page.close()
    assert browser.problems == []


def test_charts_draw_what_was_produced(browser, broker, http, data) -> None:
    produce_for(http, 1.5)
    page = open_view(browser, broker, "", "[data-card=broker]")
    chart_drawn(page, "#chart-throughput")
    chart_drawn(page, "#chart-connections")
    assert int(page.get_attribute("#chart-throughput svg", "data-series")) == 2
    screenshot(page, "overview")

    page = open_view(browser, broker, "topics", "section[data-view=topics] table")
    chart_drawn(page, "#chart-topics")
    page.wait_for_function("""() => [...document.querySelectorAll('svg.sparkline path.series')]
                                     .some(p => (p.getAttribute('d') || '').includes('L'))""",
                           timeout=TIMEOUT_MS)
    screenshot(page, "topics")

    page = open_view(browser, broker, "groups/billing", "[data-card=group-lag]")
    chart_drawn(page, "#chart-lag")
    lag = page.inner_text("[data-card=group-lag] .value")
    assert int(lag) > 0, "billing acked five of thirty"
    screenshot(page, "group")

    page = open_view(browser, broker, "timers", "[data-card=timers-pending]")
    page.wait_for_selector("#chart-timers path.bar", state="attached", timeout=TIMEOUT_MS)
    heights = page.eval_on_selector_all(
        "#chart-timers path.bar", "bars => bars.map(b => b.getBBox().height)")
    assert sum(1 for h in heights if h > 0) == 1, "one hour holds the pending timer"
    screenshot(page, "timers")
    assert browser.problems == []


def test_search_finds_a_message_just_produced(browser, broker, http, data) -> None:
    cut = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    r = http.post("/v1/topics/orders/messages", json={"body": "find me", "key": "needle-1"})
    mid = r.json()["ids"][0]
    page = open_view(browser, broker, "messages", "form#search")
    page.fill("input[name=id]", mid)
    page.click("form#search button[type=submit]")
    page.wait_for_selector(f"#results a[href='#/message/{mid}']", timeout=TIMEOUT_MS)
    assert "find me" in page.inner_text("#results")

    page.click("button[data-mode=key]")
    page.fill("input[name=topic]", "orders")
    page.fill("input[name=key]", "needle-1")
    page.click("form#search button[type=submit]")
    page.wait_for_selector(f"#results a[href='#/message/{mid}']", timeout=TIMEOUT_MS)

    page.click("button[data-mode=time]")
    page.fill("input[name=topic]", "orders")
    page.fill("input[name=time]", cut)
    page.click("form#search button[type=submit]")
    page.wait_for_selector(f"#results a[href='#/message/{mid}']", timeout=TIMEOUT_MS)
    screenshot(page, "search")

    page.click(f"#results a[href='#/message/{mid}']")
    page.wait_for_selector("ol.timeline li[data-kind=produced]", timeout=TIMEOUT_MS)
    assert page.inner_text("[data-card=door] .value") == "http"
    assert page.inner_text("#body") == "find me"
    screenshot(page, "message")
    assert browser.problems == []


def test_a_dead_letter_is_resent_from_the_page(browser, broker, http, data) -> None:
    http.post("/v1/groups", json={"name": "fragile", "max_reconsume_times": 0})
    http.post("/v1/topics", json={"name": "jobs", "queues": 1})
    mid = http.post("/v1/topics/jobs/messages", json={"body": "job 1"}).json()["ids"][0]
    # Leased for 0.1 s and never acked: past max_reconsume_times 0 it is dead-lettered.
    assert http.get("/v1/topics/jobs/messages",
                    params={"group": "fragile", "invisible": 0.1}).json()["messages"]
    deadline = time.monotonic() + 20
    while not http.get("/v1/groups/fragile/dead-letters").json()["dead_letters"]:
        assert time.monotonic() < deadline, "the lease ran out into the DLQ"
        time.sleep(0.05)

    page = open_view(browser, broker, "dlq/fragile", "#dead-letters input[data-offset='0']")
    page.check("#dead-letters input[data-offset='0']")
    screenshot(page, "dead-letters")
    page.click("#resend")
    page.wait_for_selector("#resent", timeout=TIMEOUT_MS)
    assert "jobs:0@1" in page.inner_text("#resent")
    [letter] = http.get("/v1/groups/fragile/dead-letters").json()["dead_letters"]
    assert letter["resent"] is True
    back = http.get("/v1/topics/jobs/queues/0/messages", params={"offset": 1}).json()
    assert [m["body"] for m in back["messages"]] == ["job 1"]

    page = open_view(browser, broker, f"message/{mid}", "ol.timeline li[data-kind=resent]")
    kinds = page.eval_on_selector_all("ol.timeline > li", "xs => xs.map(x => x.dataset.kind)")
    assert kinds == ["produced", "dead_letter", "resent"]
    screenshot(page, "message-life")
    assert browser.problems == []
