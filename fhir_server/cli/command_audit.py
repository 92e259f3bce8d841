"""The admin commands' audit trail: what ``radhub import``, ``token``, ``client
add``, ``user add``, ``launch`` and ``keys rotate`` change or hand out is
recorded as AuditEvents on the server's own hash chain (``audit_lock`` lets a
command write to it while a server runs), naming the operating-system user who
ran the command and, as the application, ``radhub-cli``.

Unlike a request's record, a command's is written before the command reports
success: a command has no server to queue it in, and the operator should learn
of an audit failure while still at the console.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fhir_server.access.context import AuthContext
from fhir_server.access.scopes import ScopeSet
from fhir_server.app import prepare_data_dir
from fhir_server.audit import AuditRecord, AuditWriter
from fhir_server.audit_lock import ChainLock
from fhir_server.interactions.services import new_uuid, utc_now
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.base import Store
from fhir_server.storage.factory import build_store

COMMAND_CLIENT = "radhub-cli"


def operator() -> AuthContext:
    """The caller of an admin command: its operating-system user."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        name = f"uid {os.getuid()}"
    return AuthContext(f"os-user:{name}", COMMAND_CLIENT, ScopeSet())


class CommandAudit:
    """Writes one command's audit records, each at once (see the module docstring)."""

    def __init__(self, store: Store, data_dir: Path) -> None:
        self._writer = AuditWriter(store, new_uuid, ChainLock(data_dir))
        self._who = operator()

    async def record(
        self,
        event: str,
        status: int,
        description: str,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        what: str | None = None,
    ) -> None:
        """Record ``event`` (a key of ``audit.AUTH_EVENTS``); ``what`` describes its object."""
        record = AuditRecord(
            event,
            status,
            utc_now(),
            self._who,
            resource_type,
            resource_id,
            what,
            description=description,
        )
        await self._writer.write([record])

    def close(self) -> None:
        self._writer.close()


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[tuple[Store, CommandAudit]]:
    """The store of ``settings`` (a server may be running on it) and the trail to
    record a command's changes in."""
    prepare_data_dir(settings)
    store = build_store(settings, SearchRegistry.load())
    await store.start()
    audit = CommandAudit(store, settings.data_dir)
    try:
        yield store, audit
    finally:
        audit.close()
        await store.close()
