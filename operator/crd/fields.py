"""Field metadata for the CRD dataclasses: one declaration gives the Python type, the
OpenAPI schema (with defaults, bounds, enums, CEL rules) and the operator's own parsing.

A spec dataclass declares each field with `crd_field(...)`; cross-field invariants are
`Rule`s in the class's `CRD_RULES`, each a CEL expression for the API server and the same
predicate in Python for the operator (tests check that both agree).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NewType

JsonObject = NewType("JsonObject", dict)  # type: ignore[type-arg]
"""An object passed through verbatim (pod template overrides, tolerations)."""

Quantity = NewType("Quantity", str)
"""A Kubernetes quantity (`4`, `500m`, `16Gi`): an integer or a string."""


@dataclass(frozen=True, slots=True)
class FieldMeta:
    description: str
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    json_name: str | None = None
    """Name in the resource; default: the field name in camelCase."""


@dataclass(frozen=True, slots=True)
class Rule:
    """A cross-field invariant: `cel` for the API server, `check` for the operator."""

    cel: str
    message: str
    check: Callable[[Any], bool]


def crd_field(
    description: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    minimum: float | None = None,
    maximum: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    json_name: str | None = None,
) -> Any:
    """A dataclass field that carries its schema. No default means required."""
    meta = FieldMeta(description, minimum, maximum, min_length, max_length, pattern, json_name)
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={"crd": meta}
    )


def meta_of(f: dataclasses.Field[Any]) -> FieldMeta:
    meta = f.metadata.get("crd")
    if not isinstance(meta, FieldMeta):
        raise TypeError(f"field {f.name!r} is not declared with crd_field()")
    return meta


def json_name(f: dataclasses.Field[Any]) -> str:
    meta = meta_of(f)
    if meta.json_name:
        return meta.json_name
    head, *rest = f.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)
