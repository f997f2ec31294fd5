#!/usr/bin/env python3
"""Derive protocols/kafka/schema_data.py from Apache Kafka's message JSON specs.

Run by hand when a version or an API is added (CI never runs it; the derived
module is committed):

    python scripts/kafka_schema.py KAFKA_CHECKOUT/clients/src/main/resources/common/message \
        > protocols/kafka/schema_data.py

Use a Kafka 3.9.x checkout: Kafka 4.0 removed the pre-2.1 versions (KIP-896)
that old clients still speak. Only facts are kept (field names in snake case,
types, version ranges, nullability, tags, defaults), in FerryMQ's own compact
tuple form that protocols/kafka/schema.py interprets; no prose is carried over.
"""

from __future__ import annotations

import json
import os
import pprint
import re
import sys

# The APIs the Kafka door implements (api key -> spec file stem).
APIS = {
    0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit",
    9: "OffsetFetch", 10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat",
    13: "LeaveGroup", 14: "SyncGroup", 15: "DescribeGroups", 16: "ListGroups",
    17: "SaslHandshake", 18: "ApiVersions", 19: "CreateTopics", 20: "DeleteTopics",
    21: "DeleteRecords", 22: "InitProducerId", 23: "OffsetForLeaderEpoch",
    24: "AddPartitionsToTxn", 25: "AddOffsetsToTxn", 26: "EndTxn", 28: "TxnOffsetCommit",
    32: "DescribeConfigs", 33: "AlterConfigs", 34: "AlterReplicaLogDirs", 35: "DescribeLogDirs",
    29: "DescribeAcls", 30: "CreateAcls", 31: "DeleteAcls", 36: "SaslAuthenticate",
    37: "CreatePartitions", 42: "DeleteGroups", 43: "ElectLeaders", 44: "IncrementalAlterConfigs",
    45: "AlterPartitionReassignments", 46: "ListPartitionReassignments", 47: "OffsetDelete",
    50: "DescribeUserScramCredentials", 51: "AlterUserScramCredentials",
    60: "DescribeCluster", 61: "DescribeProducers", 65: "DescribeTransactions",
    66: "ListTransactions", 75: "DescribeTopicPartitions",
}
OPEN = 0x7FFF  # "N+" in a spec: every later version
PRIMITIVES = {"bool", "int8", "int16", "uint16", "int32", "int64", "float64", "string",
              "bytes", "uuid", "records"}


def snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    s = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"_\1", s)
    return s.lower()


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"^\s*//.*$", "", text, flags=re.M)  # the specs allow line comments
    return json.loads(text)


def versions(spec: str | None) -> tuple[int, int] | None:
    if spec is None or spec == "none":
        return None
    if spec.endswith("+"):
        return int(spec[:-1]), OPEN
    if "-" in spec:
        lo, hi = spec.split("-")
        return int(lo), int(hi)
    return int(spec), int(spec)


def default(ftype: str, raw: str | None, nullable: bool) -> object:
    if raw == "null":
        return None
    if raw is not None and not isinstance(raw, str):
        raw = str(raw).lower()
    if ftype in ("int8", "int16", "uint16", "int32", "int64"):
        return int(raw, 0) if raw else 0
    if ftype == "float64":
        return float(raw) if raw else 0.0
    if ftype == "bool":
        return raw == "true"
    if ftype == "string":
        return raw or ""
    if ftype in ("bytes", "records"):
        return None if nullable and raw is None and ftype == "records" else b""
    if ftype == "uuid":
        return bytes(16)
    return None


def field(f: dict, common: dict[str, list]) -> tuple:
    ftype = f["type"]
    is_array = ftype.startswith("[]")
    base = ftype[2:] if is_array else ftype
    sub: tuple = ()
    if base not in PRIMITIVES:
        fields = f.get("fields") or common.get(base)
        if fields is None:
            raise SystemExit(f"unknown struct type {base}")
        sub = tuple(field(x, common) for x in fields)
        kind = "[]struct" if is_array else "struct"
    else:
        kind = f"[]{base}" if is_array else base
    nullable = versions(f.get("nullableVersions"))
    tag = f.get("tag")
    dflt = [] if is_array else (None if kind == "struct" else
                                default(base, f.get("default"), nullable is not None))
    return (snake(f["name"]), kind, versions(f.get("versions")), nullable, tag,
            versions(f.get("taggedVersions")), dflt, base if sub else "", sub)


def message(path: str) -> tuple:
    doc = load(path)
    common = {c["name"]: c["fields"] for c in doc.get("commonStructs", [])}
    flex = versions(doc.get("flexibleVersions"))
    return (versions(doc["validVersions"]), flex[0] if flex else OPEN,
            tuple(field(f, common) for f in doc["fields"]))


def main() -> None:
    directory = sys.argv[1]
    out = {}
    for key, stem in sorted(APIS.items()):
        req = message(os.path.join(directory, f"{stem}Request.json"))
        resp = message(os.path.join(directory, f"{stem}Response.json"))
        out[key] = (snake(stem), req, resp)
    print('"""Kafka API message layouts, derived by scripts/kafka_schema.py from Apache')
    print("Kafka 3.9's message specs. Generated: edit the script, not this file.")
    print()
    print("APIS maps an api key to (name, request, response); a message is (valid versions,")
    print("first flexible version, fields); a field is (name, kind, versions, nullable")
    print("versions, tag, tagged versions, default, struct name, sub-fields). Version ranges")
    print(f"are (low, high) with high {OPEN} for an open range; None means never.")
    print('"""')
    print()
    print("from typing import Any")
    print()
    print(f"OPEN = {OPEN}")
    print()
    print("APIS: dict[int, Any] = " + pprint.pformat(out, width=100, compact=True))


if __name__ == "__main__":
    main()
