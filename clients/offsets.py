"""Where a consumer keeps offsets: on the brokers (clustering) or in a local file (broadcasting).

RocketMQ's RemoteBrokerOffsetStore and LocalFileOffsetStore: the consumer
keeps the next offset per queue in memory, persists it every
``persist_s`` (RocketMQ: 5 s) and when it gives a queue up or shuts down. The
local file is written atomically (temp file, rename) under ``directory``
(default ``~/.ferrymq/offsets``), one file per client name and group, so a
broadcasting consumer that restarts with the same name continues where it
stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..protocols.remoting.bodies import MessageQueue

PERSIST_S = 5.0  # RocketMQ ClientConfig.persistConsumerOffsetInterval


def _key(q: MessageQueue) -> str:
    return f"{q.topic}@{q.brokerName}@{q.queueId}"


class LocalOffsetFile:
    def __init__(self, directory: str | os.PathLike[str] | None, name: str, group: str) -> None:
        base = Path(directory) if directory else Path.home() / ".ferrymq" / "offsets"
        self.path = base / name / f"{group}.json"

    def load(self) -> dict[MessageQueue, int]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        out = {}
        for k, v in doc.get("offsetTable", {}).items():
            topic, broker, qid = k.rsplit("@", 2)
            out[MessageQueue(topic, broker, int(qid))] = int(v)
        return out

    def save(self, table: dict[MessageQueue, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"offsetTable": {_key(q): o for q, o in table.items()}}))
        os.replace(tmp, self.path)
