"""The descriptor limit at start-up (gateways/fdlimit.py): the soft limit raised where the
hard limit allows, one WARNING with the numbers when the broker may need more."""

from __future__ import annotations

import logging
import resource

import pytest
from ferrymq.gateways import fdlimit
from ferrymq.gateways.config import load_config


@pytest.fixture
def limits(monkeypatch):
    """A fake RLIMIT_NOFILE: ``limits["soft"]``/``["hard"]``; setrlimit calls recorded."""
    state = {"soft": 1024, "hard": 1024, "set": []}

    def getrlimit(which):
        assert which == resource.RLIMIT_NOFILE
        return state["soft"], state["hard"]

    def setrlimit(which, value):
        soft, hard = value
        if hard != state["hard"] or (state["hard"] != resource.RLIM_INFINITY
                                     and soft > state["hard"]):
            raise ValueError("not allowed")
        state["set"].append(value)
        state["soft"] = soft

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    return state


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "ferrymq.server" and r.levelno == logging.WARNING]


def test_a_limit_below_the_need_is_raised_to_the_hard_limit(limits, caplog) -> None:
    limits["hard"] = 65_536
    config = load_config(env={"FERRYMQ_MAX_OPEN_FILES": "2000"})
    # (Not MQTT: its default cap, 100,000 connections, needs more than 65,536.)
    p = fdlimit.prepare_fd_limit(config, ("namesrv",))
    assert limits["set"] == [(65_536, 65_536)]
    assert (p.soft_before, p.soft, p.raised, p.short) == (1024, 65_536, True, False)
    (line,) = warnings(caplog)
    assert "raised the descriptor soft limit from 1024 to 65536" in line
    assert "max_open_files 2000" in line and "enough" in line


def test_a_limit_that_cannot_be_raised_is_one_warning_with_the_numbers(limits, caplog) -> None:
    config = load_config(env={"FERRYMQ_MAX_OPEN_FILES": "256"})
    p = fdlimit.prepare_fd_limit(config, ("remoting", "http"))
    assert limits["set"] == [] and p.short and not p.raised
    assert p.need == 256 + p.connections["remoting"] + p.connections["http"] + fdlimit.RESERVE
    (line,) = warnings(caplog)
    assert "the descriptor soft limit is 1024 (hard 1024)" in line
    assert f"needs up to {p.need}" in line and "remoting=10000" in line
    assert "short" in line and "LimitNOFILE" in line


def test_enough_is_silent(limits, caplog) -> None:
    limits["soft"] = limits["hard"] = 200_000
    p = fdlimit.prepare_fd_limit(load_config(env={}), ("kafka", "mqtt"))
    assert not p.short and not p.raised and limits["set"] == []
    assert warnings(caplog) == []


def test_an_unlimited_hard_limit_raises_to_the_kernels_ceiling(limits, monkeypatch,
                                                               caplog) -> None:
    limits["hard"] = resource.RLIM_INFINITY
    monkeypatch.setattr(fdlimit, "_nr_open", lambda: 1 << 20)
    p = fdlimit.prepare_fd_limit(load_config(env={}), ("remoting",))
    assert p.soft == 1 << 20 and "(hard unlimited)" in warnings(caplog)[0]


def test_the_automatic_budget_follows_the_raised_limit(limits) -> None:
    limits["hard"] = 40_000
    p = fdlimit.prepare_fd_limit(load_config(env={}), ("remoting",))
    assert p.soft == 40_000 and p.budget == 10_000, "a quarter of the new soft limit"


def test_a_doors_connection_limit_comes_from_its_options_or_its_package() -> None:
    assert fdlimit.door_connection_limit("remoting", {"max_connections": 50}) == 50
    from ferrymq.gateways.remoting import DEFAULT_MAX_CONNECTIONS

    assert fdlimit.door_connection_limit("remoting", {}) == DEFAULT_MAX_CONNECTIONS
    assert fdlimit.door_connection_limit("no-such-door", {}) == fdlimit.UNCAPPED_DOOR_CONNECTIONS
    assert fdlimit.door_connection_limit("kafka", {"max_connections": True}) > 1


def test_a_broker_under_a_low_limit_says_so_at_start(start_broker) -> None:
    b = start_broker("remoting", "namesrv", nofile=(1024, 1024))
    lines = [line for line in b.log().splitlines() if "descriptor soft limit" in line]
    assert len(lines) == 1 and "level=warning" in lines[0] and "short" in lines[0]


def test_a_broker_raises_its_soft_limit_where_the_hard_limit_allows(start_broker) -> None:
    b = start_broker("remoting", "namesrv", nofile=(1024, 16_384))
    with open(f"/proc/{b.proc.pid}/limits") as f:
        (row,) = [line for line in f if line.startswith("Max open files")]
    assert row.split()[3:5] == ["16384", "16384"]
    assert "raised the descriptor soft limit from 1024 to 16384" in b.log()
