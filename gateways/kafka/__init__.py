"""The Kafka door (port 9092): unmodified Kafka clients produce, consume in groups and administer.

Importing this package registers the decoder that lets every other door read
Kafka-produced batches as messages (core.message.register_batch_decoder).
"""

from __future__ import annotations

from .mapping import install as _install_batch_decoder
from .server import serve

_install_batch_decoder()

__all__ = ["serve"]
