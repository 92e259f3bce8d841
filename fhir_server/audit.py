"""The audit trail: one AuditEvent per interaction, append-only.

Requests do not wait for their audit record's fsync: records queue in memory
and are written in batches (one durable commit per batch), so auditing every
read does not turn reads into writes; by a background task here (``AuditLog``)
or by a process beside the server (``audit_process.AuditProcess``). ``close()``
writes what is queued. AuditEvents are written by the server only; the API
refuses to create, change or delete them.
See https://hl7.org/fhir/R4/auditevent.html and DICOM PS3.15 Annex A.5.

Event codes. A FHIR REST or DICOMweb interaction is ``type`` rest with the
interaction as ``subtype``. What the authorisation server and the admin API do
carries DICOM (DCM, PS3.16 CID 400/401) codes instead, following IHE BALP:

- sign-in at the login form: 110114 User Authentication / 110122 Login;
- ending a grant (token revocation, a logout): 110114 / 110123 Logout;
- authorize, consent and token requests: 110114 / ITI-71 Get Access Token
  (IHE IUA, ``urn:ihe:event-type-code``), introspection: 110114 / ITI-102;
- EHR launch minting, ``/metrics`` and admin reads: 110113 Security Alert /
  110132 Use of Restricted Function; client registration changes: 110113 /
  110129 Security Configuration; user account changes: 110113 / 110137 User
  Security Attributes Changed; a signing key rotated (``radhub keys rotate``):
  110113 / 110129;
- what ``radhub import`` commits: 110107 Import, with the FHIR interaction it
  ran as (transaction or batch) as the subtype.

The admin commands record what they change too (``cli.command_audit``), with
the same events as the admin API and the operating-system user as the agent.

A refusal is the same event with a failure ``outcome`` (4 or 8) and the
reason in ``outcomeDesc``. Each auth event also carries radhub's own name for
it (``urn:radhub:audit-event``) as a second subtype, so ``subtype=token``
finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypedDict

import orjson
from typing_extensions import Unpack

from fhir_server.access.context import AuthContext, PerCaller
from fhir_server.audit_chain import chain_head, event_hash, link
from fhir_server.audit_index import date_entry, entity_entries, fixed_entries
from fhir_server.audit_lock import ChainLock
from fhir_server.resources.meta import format_instant
from fhir_server.search.packed import PackedEntry, PackedIndex
from fhir_server.storage.base import NewVersion, Store

log = logging.getLogger(__name__)

_REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_IHE = "urn:ihe:event-type-code"
AUTH_EVENT_SYSTEM = "urn:radhub:audit-event"
WARN_INTERVAL = 60.0  # seconds between two warnings that the trail is behind

Coding = dict[str, str]


def _dcm(code: str, display: str) -> Coding:
    return {"system": _DCM, "code": code, "display": display}


USER_AUTHENTICATION = _dcm("110114", "User Authentication")
SECURITY_ALERT = _dcm("110113", "Security Alert")
LOGIN = _dcm("110122", "Login")
LOGOUT = _dcm("110123", "Logout")
SECURITY_CONFIGURATION = _dcm("110129", "Security Configuration")
RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")
USER_ATTRIBUTES_CHANGED = _dcm("110137", "User Security Attributes Changed")
IMPORT = _dcm("110107", "Import")
GET_ACCESS_TOKEN = {"system": _IHE, "code": "ITI-71", "display": "Get Access Token"}
INTROSPECT_TOKEN = {"system": _IHE, "code": "ITI-102", "display": "Introspect Token"}


@dataclass(frozen=True)
class EventCodes:
    """An audited event's ``type``, DICOM/IHE ``subtype`` and ``action``."""

    type: Coding
    subtype: Coding
    action: str = "E"


# What the authorisation server and the admin API record (module docstring).
AUTH_EVENTS: dict[str, EventCodes] = {
    "login": EventCodes(USER_AUTHENTICATION, LOGIN),
    "logout": EventCodes(USER_AUTHENTICATION, LOGOUT),
    "revoke": EventCodes(USER_AUTHENTICATION, LOGOUT),
    "authorize": EventCodes(USER_AUTHENTICATION, GET_ACCESS_TOKEN),
    "consent": EventCodes(USER_AUTHENTICATION, GET_ACCESS_TOKEN),
    "token": EventCodes(USER_AUTHENTICATION, GET_ACCESS_TOKEN),
    "introspect": EventCodes(USER_AUTHENTICATION, INTROSPECT_TOKEN),
    "launch": EventCodes(SECURITY_ALERT, RESTRICTED_FUNCTION, "C"),
    "metrics": EventCodes(SECURITY_ALERT, RESTRICTED_FUNCTION, "R"),
    "admin-read": EventCodes(SECURITY_ALERT, RESTRICTED_FUNCTION, "R"),
    "admin-client-create": EventCodes(SECURITY_ALERT, SECURITY_CONFIGURATION, "C"),
    "admin-client-update": EventCodes(SECURITY_ALERT, SECURITY_CONFIGURATION, "U"),
    "admin-client-delete": EventCodes(SECURITY_ALERT, SECURITY_CONFIGURATION, "D"),
    "admin-user-create": EventCodes(SECURITY_ALERT, USER_ATTRIBUTES_CHANGED, "C"),
    "admin-user-update": EventCodes(SECURITY_ALERT, USER_ATTRIBUTES_CHANGED, "U"),
    "admin-user-delete": EventCodes(SECURITY_ALERT, USER_ATTRIBUTES_CHANGED, "D"),
    "admin-sessions-end": EventCodes(USER_AUTHENTICATION, LOGOUT, "D"),
    "keys-rotate": EventCodes(SECURITY_ALERT, SECURITY_CONFIGURATION, "U"),
    "import": EventCodes(IMPORT, {"system": _INTERACTION, "code": "transaction"}),
    "import-batch": EventCodes(IMPORT, {"system": _INTERACTION, "code": "batch"}),
}

# https://hl7.org/fhir/R4/valueset-audit-event-action.html
ACTION_OF = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "search-type": "E",
    "search-system": "E",
    "search-compartment": "E",
    "batch": "E",
    "transaction": "E",
    "capabilities": "R",
    "operation": "E",
}


def outcome_code(status: int) -> str:
    """HTTP status → AuditEvent.outcome (0 success, 4 minor, 8 serious, 12 major)."""
    if status < 400:
        return "0"
    if status < 500:
        return "4"
    return "8"


class AuditRecord(NamedTuple):
    """What happened, by whom, to what, with what outcome. A tuple: every request
    makes one, and a frozen dataclass takes four times as long to build."""

    interaction: str
    status: int
    moment: datetime
    auth: AuthContext | None
    resource_type: str | None = None
    resource_id: str | None = None
    query: str | None = None
    address: str | None = None
    description: str | None = None
    # the Patient the accessed data belongs to, when the caller knows it and the
    # token does not name it (a clinician reading a patient's images)
    patient: str | None = None


def _agents(record: AuditRecord) -> list[dict[str, Any]]:
    auth = record.auth
    who: dict[str, Any] = {"requestor": True}
    if auth is None:
        who["who"] = {"display": "anonymous"}
    elif auth.fhir_user:
        who["who"] = {"reference": auth.fhir_user}
        who["altId"] = auth.subject
    else:
        who["who"] = {"identifier": {"value": auth.subject}}
    if record.address:
        who["network"] = {"address": record.address, "type": "2"}
    agents = [who]
    if auth is not None and auth.client_id:
        agents.append(
            {
                "type": {"coding": [{"system": _DCM, "code": "110150", "display": "Application"}]},
                "who": {"identifier": {"value": auth.client_id}},
                "requestor": False,
            }
        )
    return agents


# BALP's Patient entity: the Patient whose record was accessed
_PATIENT_ROLE = {
    "type": {
        "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
        "code": "1",
        "display": "Person",
    },
    "role": {
        "system": "http://terminology.hl7.org/CodeSystem/object-role",
        "code": "1",
        "display": "Patient",
    },
}


# Query parameters that carry a credential. radhub takes none of them from a query (a
# token only from the Authorization header, OAuth secrets only in a POST body), but a
# client may put one there anyway, and the audit trail keeps the query it sent.
_SECRET_PARAMETERS = re.compile(
    r"(?i)(^|[?&;])(access_token|id_token|refresh_token|client_secret|client_assertion"
    r"|password)=[^&;]*"
)
REDACTED = "[redacted]"


def without_secrets(query: str) -> str:
    """``query`` with the value of each credential parameter replaced (pure)."""
    return _SECRET_PARAMETERS.sub(rf"\1\2={REDACTED}", query)


def _entities(record: AuditRecord) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    patient = record.patient or (record.auth.patient if record.auth else None)
    if record.resource_type and record.resource_id:
        what: dict[str, Any] = {
            "what": {"reference": f"{record.resource_type}/{record.resource_id}"}
        }
        if record.resource_type == "Patient" and record.resource_id == patient:
            # the Patient accessed is the one whose record it is: one entity, not two
            # (every event and its index entries are written for every read)
            what.update(_PATIENT_ROLE)
            patient = None
        entities.append(what)
    elif record.resource_type or record.query:
        entity: dict[str, Any] = {"what": {"display": record.resource_type or "*"}}
        if record.query:
            entity["description"] = without_secrets(record.query)[:1000]
        entities.append(entity)
    if patient:
        entities.append({"what": {"reference": f"Patient/{patient}"}, **_PATIENT_ROLE})
    return entities


def event_codes(interaction: str) -> dict[str, Any]:
    """``type``, ``subtype`` and ``action`` of an AuditEvent for ``interaction`` (pure)."""
    codes = AUTH_EVENTS.get(interaction)
    if codes is None:
        return {
            "type": {"system": _REST, "code": "rest", "display": "RESTful Operation"},
            "subtype": [{"system": _INTERACTION, "code": interaction}],
            "action": ACTION_OF.get(interaction, "E"),
        }
    own = {"system": AUTH_EVENT_SYSTEM, "code": interaction}
    subtype = [dict(codes.subtype), own]  # copies: the tables stay unchanged
    return {"type": dict(codes.type), "subtype": subtype, "action": codes.action}


def fixed_members(record: AuditRecord) -> dict[str, Any]:
    """The members of a record's AuditEvent that depend only on its interaction,
    outcome, caller and address (``Templates`` keeps them per caller; pure)."""
    return {
        **event_codes(record.interaction),
        "outcome": outcome_code(record.status),
        "agent": _agents(record),
        "source": {"observer": {"display": "radhub"}},
    }


def to_audit_event(record: AuditRecord, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The AuditEvent resource for one record (pure). ``fixed`` is
    ``fixed_members(record)`` when the caller has it already; the event shares
    its values, so neither may be changed afterwards."""
    members = fixed if fixed is not None else fixed_members(record)
    return _event({"resourceType": "AuditEvent"}, record, members, format_instant(record.moment))


def _event(
    head: dict[str, Any], record: AuditRecord, fixed: dict[str, Any], recorded: str
) -> dict[str, Any]:
    """``head`` (changed in place) followed by the members of ``to_audit_event``."""
    head.update(fixed)
    head["recorded"] = recorded
    if record.description:
        head["outcomeDesc"] = record.description[:1000]
    entities = _entities(record)
    if entities:
        head["entity"] = entities
    return head


@dataclass(frozen=True)
class Template:
    """What every AuditEvent of one caller, interaction, outcome and address
    shares: its fixed members and their index entries."""

    members: dict[str, Any]
    index: tuple[PackedEntry, ...]  # packed (search.packed)


class Templates:
    """Templates by caller (``PerCaller``), interaction, outcome and address."""

    def __init__(self) -> None:
        self._known: PerCaller[Template] = PerCaller()

    def of(self, record: AuditRecord) -> Template:
        key = (record.interaction, outcome_code(record.status), record.address)
        known = self._known.get(record.auth, key)
        if known is not None:
            return known
        members = fixed_members(record)
        return self._known.put(record.auth, key, Template(members, tuple(fixed_entries(members))))


class AuditWriter:
    """Turns records into hash-chained AuditEvents and writes them, a batch at a
    time, in order: the in-process log's, the audit process's
    (``audit_process``), or an admin command's. Each batch is linked to the
    chain's head as read under ``lock`` (``audit_lock``), so writers in several
    processes extend one chain; without a lock, this must be the only writer."""

    def __init__(
        self, store: Store, new_id: Callable[[], str], lock: ChainLock | None = None
    ) -> None:
        self._store = store
        self._new_id = new_id
        self._lock = lock
        self._head = ""  # digest of the event linked last (audit_chain)
        self._templates = Templates()

    async def write(self, batch: Sequence[AuditRecord]) -> None:
        """Write ``batch`` in one durable commit, or raise having written none of
        it (the same records may then be written again)."""
        async with self._lock.held() if self._lock else contextlib.nullcontext():
            # read each time: another process may have written since (one query a batch)
            self._head = await chain_head(self._store)
            await self._store.write_many([self._version(r) for r in batch])

    def close(self) -> None:
        """Let go of the lock's file (the store stays open: its owner closes it)."""
        if self._lock is not None:
            self._lock.close()

    def _version(self, record: AuditRecord) -> NewVersion:
        template = self._templates.of(record)
        # As ``stamp`` would give it, built in place: one event per request, and
        # its moment is formatted once for ``recorded`` and ``meta.lastUpdated``.
        instant = format_instant(record.moment)
        head = {"resourceType": "AuditEvent", "id": self._new_id()}
        event = _event(head, record, template.members, instant)
        event["meta"] = {"versionId": "1", "lastUpdated": instant}
        link(event, self._head)
        self._head = event_hash(event)
        index = PackedIndex((date_entry(record.moment), *template.index, *entity_entries(event)))
        return NewVersion(
            "AuditEvent", event["id"], 1, record.moment, "create", orjson.dumps(event), index
        )


class Backpressure:
    """While more than ``max_queued`` records wait to be written, a request waits
    (at most ``timeout``) for the writer's next batch. Under a load the trail
    cannot keep up with, requests slow down to its pace instead of records
    piling up in memory, where a crash would lose them. One batch, not "until
    below the limit": otherwise requests arriving later could take the room a
    batch makes, again and again, before a waiting one wakes."""

    def __init__(self, max_queued: int, timeout: float) -> None:
        self._max_queued = max_queued
        self._timeout = timeout
        self._written = asyncio.Event()
        self._warned_at = -WARN_INTERVAL

    def written(self) -> None:
        """A batch was written: release who waits."""
        self._written.set()

    async def room(self, behind: int, hurry: Callable[[], None]) -> None:
        """Wait if ``behind`` records are too many; ``hurry`` asks for a batch now."""
        if behind <= self._max_queued:
            return
        hurry()
        self._written.clear()
        try:
            async with asyncio.timeout(self._timeout):
                await self._written.wait()
        except TimeoutError:
            now = time.monotonic()
            if now - self._warned_at >= WARN_INTERVAL:  # not once per waiting request
                self._warned_at = now
                log.warning(
                    "the audit trail is %d records behind and wrote nothing for %.0f s",
                    behind,
                    self._timeout,
                )


class AuditTrail(Protocol):
    """Where requests leave their audit records: ``AuditLog`` in this process,
    or ``audit_process.AuditProcess`` beside it."""

    def record(self, record: AuditRecord) -> None: ...

    def unwritten(self) -> int:
        """Records accepted and not yet durably written."""
        ...

    async def room(self) -> None:
        """Wait, while too many records are not yet written, for the next batch."""

    def start(self) -> None: ...

    async def close(self) -> None:
        """Write what was recorded, then stop."""


class TrailOptions(TypedDict, total=False):
    flush_interval: float  # seconds between batches at most
    max_batch: int  # records per batch at most
    max_queued: int  # records not yet written before requests wait (Backpressure)
    room_timeout: float  # seconds a request waits at most


class QueuedTrail:
    """What both trails share: the queue requests add to, a wake-up when a batch
    is full, and backpressure on what is not yet written (``unwritten``)."""

    def __init__(self, **options: Unpack[TrailOptions]) -> None:
        self._interval = options.get("flush_interval", 0.2)
        self._max_batch = options.get("max_batch", 1000)
        self._pressure = Backpressure(
            options.get("max_queued", 5000), options.get("room_timeout", 10.0)
        )
        self._queue: list[AuditRecord] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def record(self, record: AuditRecord) -> None:
        self._queue.append(record)
        if len(self._queue) >= self._max_batch:
            self._wakeup.set()

    def unwritten(self) -> int:
        """Records accepted and not yet durably written (a batch being written counts)."""
        return len(self._queue)

    async def room(self) -> None:
        if self._task is None or self._stopping:
            return
        await self._pressure.room(self.unwritten(), self._wakeup.set)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=type(self).__name__)

    async def _run(self) -> None:
        raise NotImplementedError


class AuditLog(QueuedTrail):
    """Queues audit records and writes them to the store in batches, in this process."""

    def __init__(
        self,
        store: Store,
        new_id: Callable[[], str],
        lock: ChainLock | None = None,
        **options: Unpack[TrailOptions],
    ) -> None:
        super().__init__(**options)
        self._writer = AuditWriter(store, new_id, lock)
        self._flush_lock = asyncio.Lock()

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._interval)
            self._wakeup.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("writing the audit trail failed; records are kept for a retry")

    async def flush(self) -> None:
        """Write what is queued. Serialised: two flushes at once would write the same
        records twice and fork the hash chain."""
        async with self._flush_lock:
            while self._queue:
                batch = self._queue[: self._max_batch]
                await self._writer.write(batch)
                del self._queue[: len(batch)]
                self._pressure.written()

    async def close(self) -> None:
        if self._task is not None:
            # let the writer finish the batch in hand rather than cancel it mid-write
            # (a cancelled write may still commit, and would then be written again)
            self._stopping = True
            self._wakeup.set()
            await self._task
            self._task = None
        await self.flush()
        self._writer.close()
