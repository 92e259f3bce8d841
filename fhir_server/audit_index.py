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
from fhir_server.search.packed import (
    DATE,
    REFERENCE,
    STRING,
    TOKEN,
    PackedEntry,
    PackedIndex,
    pack_value,
)
from fhir_server.search.values import derived_param, normalize_text

# Entries are packed tuples (``search.packed``), as the store takes them: the
# trail writes one event per request, and its rows are made straight from them.
Token = tuple[int, str | None, str | None, str | None]


def _coding(coding: dict[str, Any]) -> Token:
    display = coding.get("display")
    return _token(coding.get("system"), coding.get("code"), display)


# The trail repeats a handful of codings, agents and entities over and over: the
# values are immutable, so each is built once (bounded memo).
@lru_cache(maxsize=256)
def _token(system: str | None, code: str | None, display: Any) -> Token:
    return (TOKEN, system, code, normalize_text(display) if isinstance(display, str) else None)


@lru_cache(maxsize=4096)
def _reference_entry(param: str, text: str) -> PackedEntry | None:
    value = parse_reference(text)
    return None if value is None else (param, *pack_value(value))


def _reference_entries(param: str, reference: dict[str, Any]) -> list[PackedEntry]:
    entries: list[PackedEntry] = []
    text = reference.get("reference")
    entry = _reference_entry(param, text) if isinstance(text, str) else None
    if entry is not None:
        entries.append(entry)
    identifier = reference.get("identifier")
    if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
        token = (TOKEN, identifier.get("system"), identifier["value"], None)
        entries.append((derived_param(param, "identifier"), *token))
    return entries


def _patients(entries: list[PackedEntry]) -> list[PackedEntry]:
    # a packed reference entry: (param, REFERENCE, type, id, url, version)
    return [("patient", *e[1:]) for e in entries if e[1] == REFERENCE and e[2] == "Patient"]


def audit_index(event: dict[str, Any], recorded: datetime) -> PackedIndex:
    """The index entries of one radhub AuditEvent. Its events have values for
    date, type, subtype, action, outcome, agent, altid, address, entity,
    entity-type, entity-role and patient; the other AuditEvent parameters
    (agent-name, agent-role, entity-name, policy, site, source) never match
    one, which is what having no entries for them gives."""
    entries = (date_entry(recorded), *fixed_entries(event), *entity_entries(event))
    return PackedIndex(entries)


def date_entry(recorded: datetime) -> PackedEntry:
    moment = to_micros(recorded)
    return ("date", DATE, moment, moment + 1)


def fixed_entries(event: dict[str, Any]) -> list[PackedEntry]:
    """The entries of the members ``audit.fixed_members`` builds: what was done,
    with what outcome, by whom."""
    entries: list[PackedEntry] = [
        ("type", *_coding(event["type"])),
        *(("subtype", *_coding(c)) for c in event.get("subtype", [])),
        ("action", TOKEN, None, event["action"], None),
        ("outcome", TOKEN, None, event["outcome"], None),
    ]
    agents: list[PackedEntry] = []
    for agent in event.get("agent", []):
        agents += _reference_entries("agent", agent.get("who") or {})
        if isinstance(agent.get("altId"), str):
            entries.append(("altid", TOKEN, None, agent["altId"], None))
        address = (agent.get("network") or {}).get("address")
        if isinstance(address, str):
            entries.append(("address", STRING, normalize_text(address), address))
    return entries + agents + _patients(agents)


def entity_entries(event: dict[str, Any]) -> list[PackedEntry]:
    """The entries of what the event was about."""
    things: list[PackedEntry] = []
    for entity in event.get("entity", []):
        things += _reference_entries("entity", entity.get("what") or {})
        for param, member in (("entity-type", "type"), ("entity-role", "role")):
            if isinstance(entity.get(member), dict):
                things.append((param, *_coding(entity[member])))
    return things + _patients(things)
