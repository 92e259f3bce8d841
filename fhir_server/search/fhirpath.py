"""The small FHIRPath subset the R4 search parameter expressions use.

Paths (``Patient.name.given``), choice types (``Observation.effective`` finds
``effectiveDateTime`` or ``effectivePeriod``), ``as``/``.as()``/``ofType()``,
``.where(resolve() is Type)``, ``.where(field='literal')`` and ``|``. Anything
else is reported as unsupported rather than guessed at.
See https://hl7.org/fhir/R4/fhirpath.html
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, NamedTuple

from fhir_server.search.registry import branch_type, split_union

_PAREN_AS = re.compile(r"^\((?P<path>.+) as (?P<type>\w+)\)(?P<rest>.*)$")
_BARE_AS = re.compile(r"^(?P<path>.+) as (?P<type>\w+)$")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<arg>.*)\)$")
_RESOLVE_IS = re.compile(r"^resolve\(\) is (?P<type>\w+)$")
_FIELD_IS = re.compile(r"^(?P<field>\w+)\s*=\s*'(?P<value>[^']*)'$")


class UnsupportedExpression(ValueError):
    """An expression outside the subset; the registry's data should never hold one."""


class Item(NamedTuple):
    """One element: its JSON value, its type when a choice suffix tells it, its field name.
    A tuple: extraction makes one per element of every write, and a tuple is made
    in a third of a frozen dataclass's time."""

    value: Any
    type: str | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class _Step:
    """One parsed step: a child name, a type filter, or a where() filter."""

    kind: str  # "child" | "type" | "resolve" | "field"
    name: str
    value: str = ""


Plan = tuple[tuple[_Step, ...], ...]


def evaluate(resource: dict[str, Any], expression: str) -> list[Item]:
    """The elements ``expression`` (rooted at the resource type) selects in ``resource``."""
    return _evaluator(expression)(resource)


Evaluator = Callable[[dict[str, Any]], list[Item]]


@lru_cache(maxsize=4096)
def _evaluator(expression: str) -> Evaluator:
    """``expression`` made a function once. Most branches are plain paths
    (``Patient.name.given``), walked by ``_walk`` without an item per inner element."""
    runs = [_branch_evaluator(steps) for steps in _plan(expression, rooted=True)]
    if len(runs) == 1:
        return runs[0]
    return partial(_union, tuple(runs))


def _union(runs: tuple[Evaluator, ...], resource: dict[str, Any]) -> list[Item]:
    items: list[Item] = []
    for run in runs:
        items += run(resource)
    return items


def _branch_evaluator(steps: tuple[_Step, ...]) -> Evaluator:
    if steps and all(step.kind == "child" for step in steps):
        return partial(_walk, tuple(step.name for step in steps))
    return partial(_run_rooted, steps)


def _run_rooted(steps: tuple[_Step, ...], resource: dict[str, Any]) -> list[Item]:
    return _run([Item(resource, resource.get("resourceType"))], steps)


def _walk(names: tuple[str, ...], resource: dict[str, Any]) -> list[Item]:
    """``_run`` for a path of child steps only: the same items, in the same order,
    without an item per inner element."""
    values: list[Any] = [resource]
    for name in names[:-1]:
        found: list[Any] = []
        for value in values:
            if not isinstance(value, dict):
                continue
            if name in value:
                child = value[name]
                if isinstance(child, list):
                    found += child
                elif child is not None:
                    found.append(child)
            else:
                found += [item.value for item in _child(Item(value), name)]
        values = found
    last = names[-1]
    items: list[Item] = []
    for value in values:
        if not isinstance(value, dict):
            continue
        if last in value:
            child = value[last]
            if isinstance(child, list):
                items += [Item(v, None, last) for v in child]
            elif child is not None:
                items.append(Item(child, None, last))
        else:
            items += _child(Item(value), last)
    return items


def evaluate_relative(items: Iterable[Item], expression: str) -> list[Item]:
    """The elements ``expression`` (relative, like ``value.as(Quantity)``) selects."""
    start = list(items)
    found: list[Item] = []
    for steps in _plan(expression, rooted=False):
        found.extend(_run(start, steps))
    return found


def may_select(resource: dict[str, Any], expression: str) -> bool:
    """False when ``expression`` surely selects nothing: none of the top-level
    elements its branches start from is in ``resource``. Most parameters of a
    type are absent from any one resource; this skips them without evaluating."""
    roots = expression_roots(expression)
    return roots is None or not present_elements(resource).isdisjoint(roots)


_UPPER = re.compile(r"[A-Z]")


def present_elements(resource: dict[str, Any]) -> set[str]:
    """The resource's top-level element names, and the names of the choice
    elements among them (``deceasedBoolean`` is also ``deceased``)."""
    present: set[str] = set()
    for key in resource:
        present.add(key)
        for upper in _UPPER.finditer(key, 1):
            present.add(key[: upper.start()])
    return present


@lru_cache(maxsize=4096)
def expression_roots(expression: str) -> frozenset[str] | None:
    """The top-level elements the branches of ``expression`` start from (None
    when a branch starts at the resource itself)."""
    roots: set[str] = set()
    for steps in _plan(expression, rooted=True):
        if not steps or steps[0].kind != "child":
            return None  # starts at the resource itself: cannot tell
        roots.add(steps[0].name)
    return frozenset(roots)


@lru_cache(maxsize=4096)
def _plan(expression: str, *, rooted: bool) -> Plan:
    """Parse once: extraction evaluates the same few hundred expressions on every write."""
    branches: list[tuple[_Step, ...]] = []
    for branch in split_union(expression):
        texts = _steps(branch)
        if rooted and texts and texts[0] == branch_type(branch):
            texts = texts[1:]  # the leading type names the root
        branches.append(tuple(_parse_step(t) for t in texts))
    return tuple(branches)


def _steps(branch: str) -> list[str]:
    branch = branch.strip()
    match = _PAREN_AS.match(branch) or _BARE_AS.match(branch)
    if match is not None:
        rest = match.groupdict().get("rest") or ""
        branch = f"{match['path']}.ofType({match['type']}){rest}"
    return _split_dots(branch)


def _split_dots(text: str) -> list[str]:
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "." and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _parse_step(step: str) -> _Step:
    call = _CALL.match(step)
    if call is None:
        return _Step("child", step)
    name, arg = call["name"], call["arg"].strip()
    if name in ("as", "ofType"):
        return _Step("type", arg.lower())
    if name == "where":
        resolve = _RESOLVE_IS.match(arg)
        if resolve is not None:
            return _Step("resolve", resolve["type"])
        field_is = _FIELD_IS.match(arg)
        if field_is is not None:
            return _Step("field", field_is["field"], field_is["value"])
        raise UnsupportedExpression(f"where({arg}) is not supported")
    raise UnsupportedExpression(f"FHIRPath function {name}() is not supported")


def _run(items: list[Item], steps: tuple[_Step, ...]) -> list[Item]:
    for step in steps:
        items = list(_step(items, step))
    return items


def _step(items: list[Item], step: _Step) -> Iterator[Item]:
    if step.kind == "child":
        for item in items:
            yield from _child(item, step.name)
    elif step.kind == "type":
        yield from (i for i in items if (i.type or "").lower() == step.name)
    elif step.kind == "resolve":
        yield from (i for i in items if reference_type(i.value) == step.name)
    else:
        yield from (
            i for i in items if isinstance(i.value, dict) and i.value.get(step.name) == step.value
        )


def _child(item: Item, name: str) -> Iterator[Item]:
    value = item.value
    if not isinstance(value, dict):
        return
    if name in value:
        yield from _flatten(value[name], None, name)
        return
    for key, child in value.items():
        # A choice element: ``value[x]`` is stored as ``valueQuantity`` and so on.
        if key.startswith(name) and len(key) > len(name) and key[len(name)].isupper():
            yield from _flatten(child, key[len(name) :], name)


def _flatten(value: Any, type_: str | None, name: str) -> Iterator[Item]:
    if isinstance(value, list):
        for v in value:
            yield Item(v, type_, name)
    elif value is not None:
        yield Item(value, type_, name)


def reference_type(value: Any) -> str | None:
    """The resource type a Reference points at, as far as its text tells."""
    if not isinstance(value, dict):
        return None
    reference = value.get("reference")
    if isinstance(reference, str) and not reference.startswith("#"):
        parts = reference.split("/")
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        if len(parts) >= 2:
            return parts[-2]
    declared = value.get("type")
    return declared if isinstance(declared, str) else None
