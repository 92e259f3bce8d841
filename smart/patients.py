"""The standalone-launch patient picker: the patients a user may see.

The list is a search run with the user's own access (a ``user/Patient.rs``
context carrying the user's roles), so the access policy decides inside the
query which patients a role reaches; the chosen id is checked the same way.
"""

from __future__ import annotations

import json
from typing import Any

from fhir_server.access import AccessPolicy, AuthContext, ScopeSet
from fhir_server.errors import Forbidden
from fhir_server.search.ast import And, Compare, Node, SearchQuery
from fhir_server.search.values import TokenValue
from fhir_server.storage.auth_port import UserRecord
from fhir_server.storage.base import Store

PICKER_SIZE = 50


class PatientPicker:
    """Lists, and checks a choice among, the patients a user may see."""

    def __init__(self, store: Store, policy: AccessPolicy) -> None:
        self._store = store
        self._policy = policy

    async def choices(self, user: UserRecord, only: str | None = None) -> list[tuple[str, str]]:
        """(id, display name) of the user's patients, or just ``only`` if it is one."""
        ctx = AuthContext(
            subject=user.id,
            client_id=None,
            scopes=ScopeSet.parse("user/Patient.rs"),
            fhir_user=user.fhir_user,
            roles=frozenset(user.roles),
        )
        try:
            where: Node | None = self._policy.search_filter(ctx, "Patient")
        except Forbidden:
            return []
        if only is not None:
            by_id = Compare("_id", "token", TokenValue(None, only))
            where = by_id if where is None else And((where, by_id))
        page = await self._store.search(
            SearchQuery(types=("Patient",), where=where, count=PICKER_SIZE)
        )
        return [(v.id, _display(v.body)) for v in page.matches]

    async def may_choose(self, user: UserRecord, patient_id: str) -> bool:
        return bool(patient_id) and bool(await self.choices(user, only=patient_id))


def _display(body: bytes | None) -> str:
    try:
        resource: dict[str, Any] = json.loads(body or b"{}")
        name = resource.get("name", [{}])[0]
    except (ValueError, IndexError, AttributeError):
        return "(unnamed)"
    if not isinstance(name, dict):
        return "(unnamed)"
    text = name.get("text") or " ".join([*name.get("given", []), name.get("family", "")])
    return str(text).strip() or "(unnamed)"
