"""An access control that records every question the Broker asks it and denies on request:
how the tests see that a call carried its door's principal through ``Broker._authorize``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ferrymq.core import Broker
from ferrymq.core.access import AccessControl, Operation, Principal, ResourceType
from ferrymq.core.errors import PermissionDenied

Check = tuple[Principal, ResourceType, str, Operation]


@dataclass
class Recorder(AccessControl):
    """``check`` records (principal, kind, name, operation); ``deny`` decides refusals."""

    deny: Callable[[Principal, ResourceType, str, Operation], bool] = lambda *a: False
    calls: list[Check] = field(default_factory=list)
    enabled: bool = False

    def allows(self, principal: Principal, kind: ResourceType, name: str,
               operation: Operation, address: str | None = None, partial: bool = False) -> bool:
        try:
            self.check(principal, kind, name, operation, address, partial)
        except PermissionDenied:
            return False
        return True

    def check(self, principal: Principal, kind: ResourceType, name: str,
              operation: Operation, address: str | None = None, partial: bool = False) -> None:
        self.calls.append((principal, kind, name, operation))
        if self.deny(principal, kind, name, operation):
            raise PermissionDenied(f"{principal.name} may not {operation.value} "
                                   f"{kind.value} {name}")

    def principals(self) -> set[Principal]:
        return {c[0] for c in self.calls}


def record(broker: Broker, deny: Callable[[Principal, ResourceType, str, Operation], bool]
           = lambda *a: False) -> Recorder:
    """Put a Recorder in place of the broker's access control; returns it."""
    recorder = Recorder(deny)
    broker._access = recorder
    return recorder
