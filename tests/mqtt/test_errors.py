"""Core errors -> MQTT answers (gateways/mqtt/errors.py): every code has its line."""

from __future__ import annotations

from ferrymq.core import errors
from ferrymq.gateways.mqtt.errors import ANSWERS, answer_for
from ferrymq.protocols.mqtt.constants import Reason

# Reason codes that PUBACK (3.4.2.1), PUBREC (3.5.2.1), CONNACK (3.2.2.2) and
# DISCONNECT (3.14.2.1) may all carry: an answer fits wherever the error happens.
_EVERYWHERE = {Reason.UNSPECIFIED_ERROR, Reason.IMPLEMENTATION_SPECIFIC_ERROR,
               Reason.NOT_AUTHORIZED, Reason.TOPIC_NAME_INVALID, Reason.QUOTA_EXCEEDED,
               Reason.PAYLOAD_FORMAT_INVALID}


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def test_every_core_error_code_is_mapped() -> None:
    for cls in (errors.FerryError, *_all_subclasses(errors.FerryError)):
        assert cls.code in ANSWERS, f"{cls.__name__}.code {cls.code} is not mapped"
        answer = answer_for(cls("x"))
        assert answer is ANSWERS[cls.code]
        assert answer.reason in _EVERYWHERE, (cls.code, hex(answer.reason))


def test_a_failure_that_may_pass_closes_a_3_1_1_client_so_it_resends() -> None:
    for code in ("store_error", "flush_failed", "disk_full", "shutting_down", "internal_error"):
        assert ANSWERS[code].close_311, code
    for code in ("permission_denied", "message_too_large", "invalid_delay"):
        assert not ANSWERS[code].close_311, code  # resending cannot help: ack and drop


def test_the_reason_codes_a_client_sees() -> None:
    assert answer_for(errors.PermissionDenied()).reason == Reason.NOT_AUTHORIZED
    assert answer_for(errors.InvalidDelay()).reason == Reason.IMPLEMENTATION_SPECIFIC_ERROR
    assert answer_for(errors.DiskFull()).reason == Reason.QUOTA_EXCEEDED
    assert answer_for(errors.TopicNotFound()).reason == Reason.UNSPECIFIED_ERROR


def test_an_unknown_code_is_an_internal_error() -> None:
    exc = errors.FerryError()
    exc.code = "a_code_from_a_later_release"
    assert answer_for(exc) is ANSWERS["internal_error"]
