"""kcat (librdkafka's command-line client, Debian `kcat`) against FerryMQ's Kafka door."""

from __future__ import annotations

import shutil
import subprocess


def kcat(bootstrap: str, *args: str, stdin: str | None = None) -> str:
    exe = shutil.which("kcat")
    assert exe, "kcat is missing: scripts/test installs Debian's kcat"
    out = subprocess.run([exe, "-b", bootstrap, *args], input=stdin, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_kcat_lists_produces_with_keys_and_headers_and_consumes(bootstrap) -> None:
    kcat(bootstrap, "-P", "-t", "kc", "-K", ":", "-H", "source=kcat",
         stdin="k1:first\nk2:second\n")
    listing = kcat(bootstrap, "-L", "-t", "kc")
    assert 'topic "kc"' in listing and "partitions" in listing
    lines = kcat(bootstrap, "-C", "-t", "kc", "-e", "-o", "beginning", "-f",
                 "%k=%s|%h\\n").splitlines()
    assert sorted(lines) == ["k1=first|source=kcat", "k2=second|source=kcat"]


def test_kcat_consumes_in_a_group_and_commits(bootstrap) -> None:
    kcat(bootstrap, "-P", "-t", "kcg", stdin="a\nb\nc\n")
    # A balanced (group) consumer: joins, gets the partitions assigned, reads to the end.
    got = kcat(bootstrap, "-G", "kcat-group", "-X", "auto.offset.reset=earliest", "-e",
               "-f", "%s\\n", "kcg")
    assert sorted(got.split()) == ["a", "b", "c"]
    # Its commits are the group's offsets: a second run of the group reads nothing new.
    kcat(bootstrap, "-P", "-t", "kcg", stdin="d\n")
    again = kcat(bootstrap, "-G", "kcat-group", "-X", "auto.offset.reset=earliest", "-e",
                 "-f", "%s\\n", "kcg")
    assert again.split() == ["d"]
