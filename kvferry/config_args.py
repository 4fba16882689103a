"""Command-line flags generated from a config dataclass, so every default is written once."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type[Any], *, skip: tuple[str, ...] = ()
) -> None:
    """Add `--field-name` for every field of `cls` (help from the field's docstring-free name)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _scalar_type(hints[f.name])
        default = f.default
        if kind is bool:
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"(default: {default})",
            )
        else:
            group.add_argument(
                flag,
                type=kind,
                default=default,
                metavar=f.name.upper(),
                help=f"(default: {default})",
            )


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    values.update(overrides)
    return cls(**values)


def _scalar_type(hint: Any) -> type[Any]:
    """`int | None` -> int; `str` -> str."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"cannot make a flag for {hint}")
        hint = options[0]
    if hint not in (int, float, str, bool):
        raise TypeError(f"cannot make a flag for {hint}")
    return typing.cast(type[Any], hint)
