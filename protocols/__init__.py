"""Pure formats, codecs and protocol state machines: bytes in, typed events out, and back. No I/O."""
