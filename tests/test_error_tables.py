"""Every core error code has an answer on every door: each door maps FerryError codes by
one table, and no code falls through to the door's "internal error".

The NameServer maps no core error: it never calls the core (it answers its own
SYSTEM_ERROR and TOPIC_NOT_EXIST).
"""

from __future__ import annotations

import pytest
from ferrymq.core import errors
from ferrymq.gateways.http.problems import PROBLEMS, from_ferry_error
from ferrymq.gateways.kafka.errors import ERROR_CODES as KAFKA
from ferrymq.gateways.kafka.errors import kafka_error
from ferrymq.gateways.mqtt.errors import ANSWERS as MQTT
from ferrymq.gateways.remoting.errors import ERROR_CODES as REMOTING
from ferrymq.gateways.remoting.errors import error_code
from ferrymq.protocols.kafka import errors as ke
from ferrymq.protocols.remoting import ResponseCode


def _subclasses(cls: type[errors.FerryError]) -> list[type[errors.FerryError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out


CORE_ERRORS = sorted({c for c in _subclasses(errors.FerryError)
                      if c.__module__ == errors.__name__}, key=lambda c: c.code)
CORE_CODES = sorted({c.code for c in CORE_ERRORS})
TABLES = {"kafka": KAFKA, "remoting": REMOTING, "http": PROBLEMS, "mqtt": MQTT}


def test_core_codes_are_unique_per_class() -> None:
    """A code names one class: the tables map codes, so two classes must not share one."""
    assert len(CORE_CODES) == len(CORE_ERRORS)


@pytest.mark.parametrize("door", sorted(TABLES))
def test_every_core_code_is_mapped(door: str) -> None:
    missing = [code for code in CORE_CODES if code not in TABLES[door]]
    assert not missing, f"the {door} door has no answer for {missing}"


@pytest.mark.parametrize("cls", CORE_ERRORS, ids=lambda c: c.code)
def test_each_error_gets_its_tables_answer(cls: type[errors.FerryError]) -> None:
    """The mapping functions answer from the table (by the error's own code), and only
    ``internal_error`` means "something went wrong in the broker"."""
    exc = cls("detail") if cls is not errors.TransactionAlreadyEnded else cls("detail", "commit")
    assert kafka_error(exc) == KAFKA[cls.code]
    assert error_code(exc) == REMOTING[cls.code]
    problem = from_ferry_error(exc)
    assert problem.code == cls.code and problem.detail == "detail"
    if cls is not errors.FerryError:
        assert kafka_error(exc) != ke.UNKNOWN_SERVER_ERROR
        assert problem.status != 500


def test_the_remoting_table_keeps_system_error_for_what_rocketmq_calls_so() -> None:
    """RocketMQ answers an unknown transaction with SYSTEM_ERROR and a remark; nothing
    else of the core becomes SYSTEM_ERROR but an internal error."""
    system = sorted(code for code, rc in REMOTING.items() if rc == ResponseCode.SYSTEM_ERROR)
    assert system == ["internal_error", "transaction_not_found"]
