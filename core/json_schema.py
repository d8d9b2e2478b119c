"""JSON Schema from Python type hints, and a validator for the part of JSON Schema we write.

Bundles describe their ``metadata.json`` with a JSON Schema file and the torch-free predictor
checks input contracts against the same schema, so this needs the standard library only (no
``jsonschema`` package in a bundle's requirements). Supported keywords: ``type`` (one or a
list), ``enum``, ``const``, ``anyOf``, ``items``, ``prefixItems``, ``minItems``, ``maxItems``,
``minimum``, ``properties``, ``required`` and ``additionalProperties``; any other keyword is
refused rather than silently ignored.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from core.errors import DataError

DIALECT = "https://json-schema.org/draft/2020-12/schema"

_SCALARS = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}
_KEYWORDS = {"$schema", "$id", "title", "description", "$comment", "type", "enum", "const", "anyOf",
             "items", "prefixItems", "minItems", "maxItems", "minimum", "properties", "required",
             "additionalProperties"}


class SchemaError(DataError):
    """A JSON value that does not match its schema; the message names where (``input.mean[0]``)."""


def schema_of(hint: Any) -> dict[str, Any]:
    """The JSON Schema of values of a type hint: scalars, ``None``, ``Literal``, unions,
    ``tuple[X, ...]``/``tuple[X, Y]`` (arrays) and ``Mapping[str, X]`` (objects)."""
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [schema_of(a) for a in args]}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": schema_of(args[0])}
        return {"type": "array", "prefixItems": [schema_of(a) for a in args], "minItems": len(args),
                "maxItems": len(args)}
    if origin in (Mapping, dict) and args and args[0] is str:
        return {"type": "object", "additionalProperties": schema_of(args[1])}
    raise TypeError(f"no JSON Schema for type hint {hint!r}")


def _type_matches(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    kinds = {"string": str, "boolean": bool, "null": type(None), "array": list | tuple,
             "object": Mapping}
    return isinstance(value, kinds[name])


def validate(value: Any, schema: Mapping[str, Any], where: str = "value") -> None:
    """Raise :class:`SchemaError` naming the first place where ``value`` breaks ``schema``."""
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise ValueError(f"schema at {where} uses unsupported keyword(s) {sorted(unknown)}")
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(value, option, where)
                break
            except SchemaError as err:
                errors.append(str(err))
        else:
            raise SchemaError(f"{where}: {value!r} matches none of the allowed forms ({'; '.join(errors)})")
    if "type" in schema:
        names = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
        if not any(_type_matches(value, n) for n in names):
            raise SchemaError(f"{where}: expected {' or '.join(names)}, got {_describe(value)}")
    if "const" in schema and value != schema["const"]:
        raise SchemaError(f"{where}: must be {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{where}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and _type_matches(value, "number") and value < schema["minimum"]:
        raise SchemaError(f"{where}: {value!r} is below the minimum {schema['minimum']}")
    if isinstance(value, list | tuple):
        _validate_array(value, schema, where)
    if isinstance(value, Mapping):
        _validate_object(value, schema, where)


def _validate_array(value: Sequence[Any], schema: Mapping[str, Any], where: str) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        raise SchemaError(f"{where}: needs at least {schema['minItems']} item(s), got {len(value)}")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        raise SchemaError(f"{where}: allows at most {schema['maxItems']} item(s), got {len(value)}")
    prefix = schema.get("prefixItems", [])
    for i, item in enumerate(value):
        item_schema = prefix[i] if i < len(prefix) else schema.get("items")
        if item_schema is not None:
            validate(item, item_schema, f"{where}[{i}]")


def _validate_object(value: Mapping[str, Any], schema: Mapping[str, Any], where: str) -> None:
    missing = [k for k in schema.get("required", []) if k not in value]
    if missing:
        raise SchemaError(f"{where}: key(s) {', '.join(repr(k) for k in missing)} missing")
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    unknown = [k for k in value if k not in properties and extra is False]
    if unknown:
        raise SchemaError(f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
                          f"known: {', '.join(properties)}")
    for key, item in value.items():
        if key in properties:
            validate(item, properties[key], f"{where}.{key}")
        elif isinstance(extra, Mapping):
            validate(item, extra, f"{where}.{key}")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
