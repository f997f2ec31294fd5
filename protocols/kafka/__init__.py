"""The Kafka wire protocol, sans I/O: request/response codecs and record formats."""
