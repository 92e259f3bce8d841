"""The search index of the AuditEvents radhub writes, built directly.

Every request writes an AuditEvent; evaluating the generic FHIRPath extraction
for it cost more than the audited read. Radhub's AuditEvents have one fixed
shape (``audit.to_audit_event``), so their entries are built straight from it.
``tests/fhir_server/test_audit_index.py`` checks, case by case, that this gives
exactly what ``extract_param`` gives for the same parameters.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from fhir_server.search.dates import to_micros
from fhir_server.search.extract import parse_reference
from fhir_server.search.values import (
    DateRange,
    IndexEntry,
    ReferenceValue,
    TokenValue,
    derived_param,
    normalize_text,
    string_value,
)


def _coding(coding: dict[str, Any]) -> TokenValue:
    display = coding.get("display")
    return _token(coding.get("system"), coding.get("code"), display)


# The trail repeats a handful of codings, agents and entities over and over: the
# values are immutable, so each is built once (bounded memo).
@lru_cache(maxsize=256)
def _token(system: str | None, code: str | None, display: Any) -> TokenValue:
    return TokenValue(system, code, normalize_text(display) if isinstance(display, str) else None)


@lru_cache(maxsize=4096)
def _reference_entry(param: str, text: str) -> IndexEntry | None:
    value = parse_reference(text)
    return None if value is None else IndexEntry(param, value)


def _reference_entries(param: str, reference: dict[str, Any]) -> list[IndexEntry]:
    entries: list[IndexEntry] = []
    text = reference.get("reference")
    entry = _reference_entry(param, text) if isinstance(text, str) else None
    if entry is not None:
        entries.append(entry)
    identifier = reference.get("identifier")
    if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
        token = TokenValue(identifier.get("system"), identifier["value"])
        entries.append(IndexEntry(derived_param(param, "identifier"), token))
    return entries


def _patients(entries: list[IndexEntry]) -> list[IndexEntry]:
    return [
        IndexEntry("patient", e.value)
        for e in entries
        if isinstance(e.value, ReferenceValue) and e.value.type == "Patient"
    ]


def audit_index(event: dict[str, Any], recorded: datetime) -> list[IndexEntry]:
    """The index entries of one radhub AuditEvent. Its events have values for
    date, type, subtype, action, outcome, agent, altid, address, entity,
    entity-type, entity-role and patient; the other AuditEvent parameters
    (agent-name, agent-role, entity-name, policy, site, source) never match
    one, which is what having no entries for them gives."""
    return [date_entry(recorded), *fixed_entries(event), *entity_entries(event)]


def date_entry(recorded: datetime) -> IndexEntry:
    moment = to_micros(recorded)
    return IndexEntry("date", DateRange(moment, moment + 1))


def fixed_entries(event: dict[str, Any]) -> list[IndexEntry]:
    """The entries of the members ``audit.fixed_members`` builds: what was done,
    with what outcome, by whom."""
    entries = [
        IndexEntry("type", _coding(event["type"])),
        *(IndexEntry("subtype", _coding(c)) for c in event.get("subtype", [])),
        IndexEntry("action", TokenValue(None, event["action"])),
        IndexEntry("outcome", TokenValue(None, event["outcome"])),
    ]
    agents: list[IndexEntry] = []
    for agent in event.get("agent", []):
        agents += _reference_entries("agent", agent.get("who") or {})
        if isinstance(agent.get("altId"), str):
            entries.append(IndexEntry("altid", TokenValue(None, agent["altId"])))
        address = (agent.get("network") or {}).get("address")
        if isinstance(address, str):
            entries.append(IndexEntry("address", string_value(address)))
    return entries + agents + _patients(agents)


def entity_entries(event: dict[str, Any]) -> list[IndexEntry]:
    """The entries of what the event was about."""
    things: list[IndexEntry] = []
    for entity in event.get("entity", []):
        things += _reference_entries("entity", entity.get("what") or {})
        for param, member in (("entity-type", "type"), ("entity-role", "role")):
            if isinstance(entity.get(member), dict):
                things.append(IndexEntry(param, _coding(entity[member])))
    return things + _patients(things)
