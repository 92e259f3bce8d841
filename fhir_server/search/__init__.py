"""FHIR search in layers: definitions, extraction, parsing, and the pure oracle.

See DESIGN.md, "Search", and https://hl7.org/fhir/R4/search.html
"""

from __future__ import annotations

from fhir_server.search.ast import (
    And,
    Chain,
    Compare,
    Composite,
    Has,
    Include,
    Missing,
    Node,
    Not,
    Or,
    SearchQuery,
    SortKey,
)
from fhir_server.search.extract import extract_index, extract_param
from fhir_server.search.parse import CURSOR_PARAM, RESULT_PARAMS, ParsedSearch, parse_search
from fhir_server.search.registry import ComponentDef, ParamDef, SearchRegistry
from fhir_server.search.values import IndexEntry

__all__ = [
    "CURSOR_PARAM",
    "RESULT_PARAMS",
    "And",
    "Chain",
    "Compare",
    "ComponentDef",
    "Composite",
    "Has",
    "Include",
    "IndexEntry",
    "Missing",
    "Node",
    "Not",
    "Or",
    "ParamDef",
    "ParsedSearch",
    "SearchQuery",
    "SearchRegistry",
    "SortKey",
    "extract_index",
    "extract_param",
    "parse_search",
]
