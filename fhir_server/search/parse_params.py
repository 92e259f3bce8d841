"""One filter parameter (``name[:modifier]=value``, chains, ``_has``) -> tree node.

Returns None when ``name`` is not a parameter of the searched types (the caller
decides between a warning and an error); raises InvalidSearch when the name is
known but the modifier or value is malformed.
See https://hl7.org/fhir/R4/search.html#modifiers, #chaining and #has
"""

from __future__ import annotations

from fhir_server.errors import InvalidSearch
from fhir_server.search.ast import (
    Chain,
    Compare,
    Composite,
    Has,
    Missing,
    Node,
    Not,
    Or,
    ParamType,
)
from fhir_server.search.parse_values import (
    parse_date,
    parse_number,
    parse_of_type,
    parse_quantity,
    parse_reference,
    parse_string,
    parse_token,
    parse_uri,
    split_escaped,
    split_prefix,
    unescape,
)
from fhir_server.search.registry import ParamDef, SearchRegistry
from fhir_server.search.values import TokenValue, normalize_text

# Modifiers each parameter type accepts (R4 search.html#modifiers); reference
# parameters also take a resource type (``subject:Patient``).
MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains"}),
    "token": frozenset({"not", "text", "of-type"}),
    "reference": frozenset({"identifier"}),
    "uri": frozenset({"below", "above"}),
    "date": frozenset(),
    "number": frozenset(),
    "quantity": frozenset(),
    "composite": frozenset(),
}


def parse_param(
    name: str, value: str, types: tuple[str, ...], registry: SearchRegistry
) -> Node | None:
    """The node for ``name=value`` searched on ``types``, or None if ``name`` is unknown."""
    if name.startswith("_has:"):
        return _has(name, value, types, registry)
    head, dot, rest = name.partition(".")
    if dot:
        return _chain(head, rest, value, types, registry)
    code, _, modifier = name.partition(":")
    param = registry.common_param(types, code)
    if param is None:
        return None
    return parse_values(param, modifier or None, value, registry)


def _chain(
    head: str, rest: str, value: str, types: tuple[str, ...], registry: SearchRegistry
) -> Node | None:
    code, _, target = head.partition(":")
    param = registry.common_param(types, code)
    if param is None or param.type != "reference":
        return None
    if target and not registry.supports(target):
        raise InvalidSearch(f"Chain {head!r} names an unsupported type {target!r}")
    # Without a type, the chain follows every supported target that has the next parameter.
    candidates = [target] if target else [t for t in param.targets if registry.supports(t)]
    nodes: list[Node] = []
    for target_type in candidates:
        inner = parse_param(rest, value, (target_type,), registry)
        if inner is not None:
            nodes.append(Chain(code, target_type, inner))
    if not nodes:
        return None
    return nodes[0] if len(nodes) == 1 else Or(tuple(nodes))


def _has(name: str, value: str, types: tuple[str, ...], registry: SearchRegistry) -> Node | None:
    parts = name.split(":", 3)
    if len(parts) != 4 or not all(parts):
        raise InvalidSearch(f"_has must be _has:Type:reference:parameter, not {name!r}")
    _, source, code, rest = parts
    if not registry.supports(source):
        return None
    param = registry.param(source, code)
    if param is None or param.type != "reference":
        return None
    inner = parse_param(rest, value, (source,), registry)
    return None if inner is None else Has(source, code, inner)


def parse_values(
    param: ParamDef, modifier: str | None, value: str, registry: SearchRegistry
) -> Node:
    """The OR of the comma-separated values of one parameter."""
    if modifier == "missing":
        if value not in ("true", "false"):
            raise InvalidSearch(f"{param.code}:missing must be true or false")
        return Missing(param.code, value == "true")
    type_modifier = _check_modifier(param, modifier, registry)
    texts = split_escaped(value, ",")
    if param.type == "reference" and modifier != "identifier":
        texts = [registry.local_reference(t) for t in texts]  # our own absolute URLs
    nodes = [_one(param, modifier, type_modifier, text) for text in texts]
    node: Node = nodes[0] if len(nodes) == 1 else Or(tuple(nodes))
    return Not(node) if modifier == "not" else node


def _check_modifier(param: ParamDef, modifier: str | None, registry: SearchRegistry) -> str | None:
    """Validate ``modifier``; return it when it is a reference's ``:Type``."""
    if modifier is None or modifier in MODIFIERS.get(param.type, frozenset()):
        return None
    if param.type == "reference" and registry.supports(modifier):
        return modifier
    raise InvalidSearch(f"Modifier :{modifier} is not supported on {param.code!r}")


def _one(param: ParamDef, modifier: str | None, type_modifier: str | None, text: str) -> Node:
    if param.type == "composite":
        return _composite(param, text)
    if param.type == "token":
        return _token(param.code, modifier, text)
    if param.type == "reference":
        if modifier == "identifier":
            return Compare(param.code, "reference", parse_token(param.code, text), "eq", modifier)
        value = parse_reference(param.code, text, type_modifier)
        return Compare(param.code, "reference", value, "eq", type_modifier)
    if param.type == "string":
        return Compare(param.code, "string", parse_string(param.code, text), "eq", modifier)
    if param.type == "uri":
        return Compare(param.code, "uri", parse_uri(param.code, text), "eq", modifier)
    return _ordered(param.code, param.type, text)


def _token(code: str, modifier: str | None, text: str) -> Compare:
    if modifier == "text":
        return Compare(
            code, "token", TokenValue(None, None, normalize_text(unescape(text))), "eq", modifier
        )
    if modifier == "of-type":
        return Compare(code, "token", parse_of_type(code, text), "eq", modifier)
    return Compare(code, "token", parse_token(code, text))


def _ordered(code: str, param_type: ParamType, text: str) -> Compare:
    """A date, number or quantity value with its comparison prefix."""
    prefix, rest = split_prefix(text)
    if param_type == "date":
        return Compare(code, "date", parse_date(code, rest, prefix), prefix)
    if param_type == "number":
        return Compare(code, "number", parse_number(code, rest, prefix), prefix)
    if param_type == "quantity":
        return Compare(code, "quantity", parse_quantity(code, rest, prefix), prefix)
    raise InvalidSearch(f"Parameter {code!r} of type {param_type} cannot be searched")


def _composite(param: ParamDef, text: str) -> Composite:
    pieces = split_escaped(text, "$")
    if len(pieces) != len(param.components):
        raise InvalidSearch(
            f"{param.code} takes {len(param.components)} values separated by '$', not {text!r}"
        )
    parts: list[Compare] = []
    for i, (component, piece) in enumerate(zip(param.components, pieces, strict=True)):
        part = ParamDef(f"{param.code}${i}", component.type, param.url, component.expression)
        node = _one(part, None, None, piece)
        if not isinstance(node, Compare):
            raise InvalidSearch(f"Nested composite in {param.code!r}")
        parts.append(node)
    return Composite(param.code, tuple(parts))
