"""Smaller JSON Schemas for `tools/list`: every agent reads them into its context before calling a tool.

pydantic's schemas say more than an agent needs, and tools/list is paid for in every conversation. Everywhere,
the title made from each field's name ("judge_version" -> "Judge Version") and `additionalProperties: true`
(JSON Schema's default) are dropped, and `{"anyOf": [{"type": "string"}, {"type": "null"}]}` is folded to
`{"type": ["string", "null"]}`, which means the same (so is a nullable array: its `items` constrain arrays
only). Output schemas keep only structure (names, types, required; an enum of strings without its `type`,
which the enum implies): descriptions (written in the models for code readers; the tool's description says what an agent must
know of its result), defaults and `additionalProperties: false` go. Input schemas keep the descriptions of fields
and the defaults that are not null (they tell the caller what leaving an argument out does); a nested object's
own description (its class docstring) goes, since the argument that holds it is described. Only the listing
changes: arguments are still validated against the SDK's own schema. Nothing here knows of judges or of MCP.
"""

from __future__ import annotations

from typing import Any

# Keys whose value is a map of name -> schema, and keys whose value is a schema or a list of schemas.
_SCHEMA_MAPS = ("properties", "$defs", "patternProperties")
_SCHEMA_KEYS = ("items", "additionalProperties", "not", "if", "then", "else")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_ARRAY_KEYS = {"items", "prefixItems", "minItems", "maxItems"}


def compact_schema(schema: dict[str, Any], *, output: bool, nested: bool = False) -> dict[str, Any]:
    """The schema as an agent needs it (the module docstring says what is dropped and why)."""
    node: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key == "additionalProperties" and (value is True or (output and value is False)):
            continue
        if key == "default" and (output or value is None):
            continue
        if key == "description" and (output or (nested and "properties" in schema)):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            node[key] = {name: compact_schema(sub, output=output, nested=True) for name, sub in value.items()}
        elif key in _SCHEMA_KEYS and isinstance(value, dict):
            node[key] = compact_schema(value, output=output, nested=True)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            node[key] = [_compact_member(sub, output) for sub in value]
        else:
            node[key] = value
    if (
        output
        and node.get("type") == "string"
        and all(isinstance(v, str) for v in node.get("enum") or [None])
    ):
        del node["type"]
    return _fold_type_union(node)


def _compact_member(member: Any, output: bool) -> Any:
    return compact_schema(member, output=output, nested=True) if isinstance(member, dict) else member


def _fold_type_union(node: dict[str, Any]) -> dict[str, Any]:
    """`anyOf` of members that are nothing but a type becomes one `type` list."""
    members = node.get("anyOf")
    if not isinstance(members, list) or "type" in node:
        return node
    types: list[Any] = []
    array: dict[str, Any] = {}  # the keywords of an array member, which constrain arrays only
    for member in members:
        if not (isinstance(member, dict) and isinstance(member.get("type"), str)):
            return node
        extra = {k: v for k, v in member.items() if k != "type"}
        if extra and (member["type"] != "array" or array or not set(extra) <= _ARRAY_KEYS):
            return node
        array |= extra
        types.append(member["type"])
    folded = {key: value for key, value in node.items() if key != "anyOf"} | array
    folded["type"] = types
    return folded
