"""OpenAPI v3 schemas from the CRD dataclasses, and parsing resources back into them.

`schema_of(cls)` is what the CRD's `openAPIV3Schema` is made of; `parse(cls, data)`
applies the same defaults, bounds, enums and rules in the operator, so a resource that
reached it without the API server's validation (an older CRD, an emulator) is still
refused with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from kvferry.operator.crd.fields import JsonObject, Quantity, Rule, json_name, meta_of

T = TypeVar("T")


class SpecError(ValueError):
    """A resource does not satisfy its schema; `path` names the field (`spec.prefill`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _optional_inner(hint: Any) -> tuple[Any, bool]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {hint}")
        return args[0], True
    return hint, False


def rules_of(cls: type[Any]) -> tuple[Rule, ...]:
    rules = cls.__dict__.get("CRD_RULES", ())
    return tuple(rules)


def schema_of(hint: Any) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a type used in a CRD dataclass."""
    hint, _ = _optional_inner(hint)
    if hint is JsonObject:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if hint is Quantity:
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
        }
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"type": "string", "enum": [m.value for m in hint]}
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return {"type": "array", "items": schema_of(item)}
    if origin is dict:
        key, value = typing.get_args(hint)
        if key is not str:
            raise TypeError(f"map keys must be str: {hint}")
        return {"type": "object", "additionalProperties": schema_of(value)}
    if dataclasses.is_dataclass(hint):
        return _object_schema(typing.cast(type[Any], hint))
    raise TypeError(f"no schema for {hint!r}")


def _object_schema(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        meta = meta_of(f)
        prop = schema_of(hints[f.name])
        prop["description"] = meta.description
        for key, value in (
            ("minimum", meta.minimum),
            ("maximum", meta.maximum),
            ("minLength", meta.min_length),
            ("maxLength", meta.max_length),
            ("pattern", meta.pattern),
        ):
            if value is not None:
                prop[key] = value
        default = f.default
        if default is not dataclasses.MISSING and default is not None:
            prop["default"] = default.value if isinstance(default, enum.Enum) else default
        elif dataclasses.is_dataclass(f.default_factory):
            prop["default"] = {}  # so the API server fills the nested defaults too
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(json_name(f))
        properties[json_name(f)] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    if required:
        schema["required"] = required
    rules = rules_of(cls)
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]
    return schema


def parse(cls: type[T], data: Any, path: str = "spec") -> T:
    """Build `cls` from a resource's dict, applying defaults and checking the schema."""
    value = _parse_value(cls, data, path)
    return typing.cast(T, value)


def _parse_value(hint: Any, data: Any, path: str) -> Any:
    hint, _ = _optional_inner(hint)
    if hint is JsonObject:
        if not isinstance(data, Mapping):
            raise SpecError(path, "must be an object")
        return dict(data)
    if hint is Quantity:
        if isinstance(data, bool) or not isinstance(data, int | str):
            raise SpecError(path, "must be a quantity (an integer or a string)")
        return str(data)
    if hint is bool:
        if not isinstance(data, bool):
            raise SpecError(path, "must be a boolean")
        return data
    if hint is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise SpecError(path, "must be an integer")
        return data
    if hint is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise SpecError(path, "must be a number")
        return float(data)
    if hint is str:
        if not isinstance(data, str):
            raise SpecError(path, "must be a string")
        return data
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(data)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in hint)
            raise SpecError(path, f"must be one of {allowed}; got {data!r}") from None
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(data, list):
            raise SpecError(path, "must be a list")
        (item,) = typing.get_args(hint)
        return [_parse_value(item, v, f"{path}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, Mapping):
            raise SpecError(path, "must be an object")
        _, value_hint = typing.get_args(hint)
        return {str(k): _parse_value(value_hint, v, f"{path}.{k}") for k, v in data.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _parse_object(hint, data, path)
    raise TypeError(f"cannot parse {hint!r}")


def _parse_object(cls: type[Any], data: Any, path: str) -> Any:
    if not isinstance(data, Mapping):
        raise SpecError(path, "must be an object")
    hints = typing.get_type_hints(cls)
    known = {json_name(f) for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(path, f"unknown field(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key, meta, sub = json_name(f), meta_of(f), f"{path}.{json_name(f)}"
        if key not in data or data[key] is None:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(sub, "is required")
            continue
        value = _parse_value(hints[f.name], data[key], sub)
        _check_bounds(value, meta.minimum, meta.maximum, sub)
        if isinstance(value, str):
            if meta.min_length is not None and len(value) < meta.min_length:
                raise SpecError(sub, f"must be at least {meta.min_length} character(s) long")
            if meta.max_length is not None and len(value) > meta.max_length:
                raise SpecError(sub, f"must be at most {meta.max_length} characters long")
            if meta.pattern is not None and not re.search(meta.pattern, value):
                raise SpecError(sub, f"must match {meta.pattern}")
        values[f.name] = value
    obj = cls(**values)
    for rule in rules_of(cls):
        if not rule.check(obj):
            raise SpecError(path, rule.message)
    return obj


def _check_bounds(value: Any, lo: float | None, hi: float | None, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if lo is not None and value < lo:
        raise SpecError(path, f"must be >= {lo:g}; got {value}")
    if hi is not None and value > hi:
        raise SpecError(path, f"must be <= {hi:g}; got {value}")


def to_json(obj: Any) -> Any:
    """A CRD dataclass back into its resource form (camelCase keys, unset fields left out)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is not None:
                out[json_name(f)] = to_json(value)
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj
