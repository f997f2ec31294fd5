"""Topic filters and the trie: the trie agrees with the specification's matching rules."""

from __future__ import annotations

import pytest
from ferrymq.protocols.mqtt.codec import MqttError
from ferrymq.protocols.mqtt.topics import (
    TopicTrie,
    filter_covers,
    filter_matches,
    parse_filter,
    valid_topic_filter,
)
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.mark.parametrize("flt, topic, match", [
    ("sport/tennis/player1/#", "sport/tennis/player1", True),  # 4.7.1.2
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/#", "sport", True),
    ("sport/tennis/+", "sport/tennis/player1", True),  # 4.7.1.3
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("#", "$SYS/x", False),  # 4.7.2
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("a/b", "a/b", True),
    ("a/b", "a/B", False),
])
def test_matching_follows_section_4_7(flt, topic, match) -> None:
    assert filter_matches(flt, topic) is match
    trie: TopicTrie[str, int] = TopicTrie()
    trie.add(flt, "k", 1)
    assert bool(list(trie.match(topic))) is match


@pytest.mark.parametrize("flt, ok", [
    ("#", True), ("a/#", True), ("a/#/b", False), ("a#", False), ("+", True), ("a/+/b", True),
    ("a+", False), ("", False), ("/", True),
])
def test_filter_validity(flt, ok) -> None:
    assert valid_topic_filter(flt) is ok


def test_shared_subscription_filters() -> None:
    assert parse_filter("$share/g/a/+").share == "g"
    assert parse_filter("$share/g/a/+").filter == "a/+"
    for bad in ("$share/g", "$share//a", "$share/g+/a", "$share/g/a#"):
        with pytest.raises(MqttError):
            parse_filter(bad)


levels = st.sampled_from(["a", "b", "c", "", "$x"])
topics = st.lists(levels, min_size=1, max_size=4).map("/".join).filter(bool)
filters = st.lists(st.sampled_from(["a", "b", "", "+", "$x"]), min_size=1, max_size=4).flatmap(
    lambda ls: st.sampled_from(["/".join(ls), "/".join([*ls, "#"]), "#"]))


@settings(max_examples=300, deadline=None)
@given(fs=st.lists(filters, max_size=12), topic=topics)
def test_the_trie_agrees_with_the_reference_matcher(fs, topic) -> None:
    trie: TopicTrie[int, str] = TopicTrie()
    for i, f in enumerate(fs):
        trie.add(f, i, f)
    assert sorted(k for k, _ in trie.match(topic)) == [
        i for i, f in enumerate(fs) if filter_matches(f, topic)]
    for i, f in enumerate(fs):
        assert trie.remove(f, i)
    assert trie.count == 0 and not trie._root.children  # pruned to nothing


def test_ten_thousand_wildcard_subscriptions_match_without_a_scan() -> None:
    trie: TopicTrie[int, int] = TopicTrie()
    for i in range(10_000):
        trie.add(f"devices/{i}/+/status", i, i)
        trie.add(f"+/{i}/#", i + 10_000, i)
    hits = sorted(k for k, _ in trie.match("devices/1234/x/status"))
    assert hits == [1234, 11234]
    assert trie.count == 20_000


def test_filter_covers_is_inclusion() -> None:
    assert filter_covers("a/#", "a/b/+")
    assert filter_covers("a/+", "a/b")
    assert not filter_covers("a/+", "a/#")
    assert not filter_covers("a/b", "a/+")
    assert filter_covers("#", "x")
