"""Who is asking, and what they are asking to do.

``AuthContext`` is what a verified token becomes; every interaction, the
DICOMweb edge and the HL7 bridge take one. ``Interaction`` names the FHIR
RESTful interactions and maps each onto the SMART v2 permission letters it
needs. See https://build.fhir.org/ig/HL7/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

if TYPE_CHECKING:
    from fhir_server.access.scopes import ScopeSet

Permission = Literal["c", "r", "u", "d", "s"]


V = TypeVar("V")


class Interaction(StrEnum):
    """A FHIR RESTful interaction, as access control sees it.

    See https://hl7.org/fhir/R4/http.html
    """

    READ = "read"
    VREAD = "vread"
    HISTORY_INSTANCE = "history-instance"
    SEARCH = "search"
    HISTORY = "history"  # type or system level
    CREATE = "create"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    OPERATION = "operation"

    @property
    def permissions(self) -> frozenset[Permission]:
        """The SMART v2 letters a single scope must grant for this interaction."""
        return _PERMISSIONS[self]

    @property
    def on_instance(self) -> bool:
        """Whether the interaction targets one existing resource (so its existence can leak)."""
        return self in _INSTANCE_LEVEL


# SMART App Launch 2.0, "Scopes for requesting FHIR resources": r covers read,
# vread and instance history; s covers type search and type/system history.
# An operation not mapped to concrete interactions needs the full set: its
# handler authorises what it really does (e.g. $everything as SEARCH) instead.
_PERMISSIONS: dict[Interaction, frozenset[Permission]] = {
    Interaction.READ: frozenset({"r"}),
    Interaction.VREAD: frozenset({"r"}),
    Interaction.HISTORY_INSTANCE: frozenset({"r"}),
    Interaction.SEARCH: frozenset({"s"}),
    Interaction.HISTORY: frozenset({"s"}),
    Interaction.CREATE: frozenset({"c"}),
    Interaction.UPDATE: frozenset({"u"}),
    Interaction.PATCH: frozenset({"u"}),
    Interaction.DELETE: frozenset({"d"}),
    Interaction.OPERATION: frozenset({"c", "r", "u", "d", "s"}),
}

_INSTANCE_LEVEL = frozenset(
    {
        Interaction.READ,
        Interaction.VREAD,
        Interaction.HISTORY_INSTANCE,
        Interaction.UPDATE,
        Interaction.PATCH,
        Interaction.DELETE,
    }
)


@dataclass(frozen=True, slots=True)
class AuthContext:
    """The verified identity and grant behind one request.

    ``patient`` and ``encounter`` are the SMART launch context (ids, not
    references); ``fhir_user`` is a relative reference such as
    ``Practitioner/123``; ``token_id`` is the token's ``jti`` (for audit and
    revocation).
    """

    subject: str
    client_id: str | None
    scopes: ScopeSet
    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)
    token_id: str | None = None


class PerCaller(Generic[V]):
    """What was worked out for one caller and a key, remembered (at most ``size``
    entries, forgotten wholesale beyond). Keyed by the context's identity: the
    token verifier hands out one object per token, and hashing its scopes would
    cost more than the look-up saves. The context is held with the value, so its
    id is not reused while remembered."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._known: dict[tuple[int, Hashable], tuple[AuthContext | None, V]] = {}

    def __len__(self) -> int:
        return len(self._known)

    def get(self, caller: AuthContext | None, key: Hashable) -> V | None:
        known = self._known.get((id(caller), key))
        return known[1] if known is not None and known[0] is caller else None

    def put(self, caller: AuthContext | None, key: Hashable, value: V) -> V:
        if len(self._known) >= self._size:
            self._known.clear()
        self._known[(id(caller), key)] = (caller, value)
        return value
