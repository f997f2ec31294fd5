"""Kafka's wire protocol, sans-I/O: codecs derived from Kafka's specs, record formats, framing."""
