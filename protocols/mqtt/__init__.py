"""MQTT 3.1, 3.1.1 and 5.0 without I/O: the codec (``codec``), packet values
(``packets``), the per-connection state machine (``connection``), the QoS flows
of a session as transition tables (``session``) and topic filters with their
trie (``topics``)."""

from ..errors import LocalProtocolError
from .codec import MalformedPacket, MqttError, ProtocolViolation, decode, encode
from .connection import ServerConnection, ServerLimits, State
from .constants import MQTT_3_1, MQTT_3_1_1, MQTT_5, PacketType, Prop, Reason
from .session import Action, Flow, SessionState
from .topics import TopicTrie, filter_matches, parse_filter, valid_topic_filter, valid_topic_name

__all__ = [
    "MQTT_3_1", "MQTT_3_1_1", "MQTT_5", "Action", "Flow", "LocalProtocolError", "MalformedPacket",
    "MqttError", "PacketType", "Prop", "ProtocolViolation", "Reason", "ServerConnection",
    "ServerLimits", "SessionState", "State", "TopicTrie", "decode", "encode", "filter_matches",
    "parse_filter", "valid_topic_filter", "valid_topic_name",
]
