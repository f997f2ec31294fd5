"""Kafka's wire protocol, sans-I/O: message codecs derived from Kafka's specs, record formats, framing."""
