"""Dagster run config generated from the core dataclasses, so each setting is declared once.

The core dataclass (e.g. ``models.lm_train.LMTrainConfig``) owns every field's name, type,
default, documentation (its docstring's ``Attributes:`` section) and validation
(``__post_init__``). :func:`config_class` turns one or more of them into a ``dg.Config`` whose
fields are all optional: a field left unset takes the value of the selected preset (a named
bundle of overrides), else the core default. :func:`resolve` builds the core object from a
run config, so what users type is validated by the same code that the library uses.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from pydantic import Field, create_model

__all__ = ["config_class", "field_docs", "resolve", "resolve_preset"]

_ATTRIBUTE = re.compile(r"^(\s+)(\w+)(?: \([^)]*\))?: ?(.*)$")


def field_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the Google-style ``Attributes:`` section of ``cls``'s docstring."""
    lines = (cls.__doc__ or "").splitlines()
    docs: dict[str, str] = {}
    inside, indent, current = False, None, None
    for line in lines:
        if line.strip() == "Attributes:":
            inside, indent, current = True, None, None
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        match = _ATTRIBUTE.match(line)
        if match and (indent is None or len(match.group(1)) == indent):
            indent = len(match.group(1))
            current = match.group(2)
            docs[current] = match.group(3).strip()
        elif current is not None and indent is not None and len(line) - len(line.lstrip()) > indent:
            docs[current] += " " + line.strip()
        else:
            inside = False
    return docs


def _dagster_type(annotation: Any) -> Any:
    """The config type Dagster can show for a dataclass field's annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return type(args[0])
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _dagster_type(rest[0])
        raise TypeError(f"unsupported union {annotation!r}")
    if origin in (tuple, list, Sequence):
        inner = {a for a in args if a is not Ellipsis}
        if len(inner) != 1:
            raise TypeError(f"unsupported sequence {annotation!r}")
        return list[_dagster_type(inner.pop())]
    if annotation in (int, float, bool, str):
        return annotation
    raise TypeError(f"unsupported config field type {annotation!r}")


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def config_class(
    name: str,
    doc: str,
    sources: Sequence[type],
    presets: Mapping[str, Mapping[str, Any]],
    default_preset: str,
    exclude: Sequence[str] = (),
) -> type[dg.Config]:
    """A ``dg.Config`` with one optional field per field of the ``sources`` dataclasses.

    Args:
        name: Class name (shown in the launchpad's schema).
        doc: Class docstring.
        sources: Core dataclasses; their fields must not clash.
        presets: Preset name -> field overrides (of any source).
        default_preset: The preset a run gets when it names none.
        exclude: Fields the asset sets itself (not user config).

    Returns:
        The config class, with a ``preset`` field and every other field defaulting to None.
    """
    if default_preset not in presets:
        raise ValueError(f"default preset {default_preset!r} is not one of {sorted(presets)}")
    fields: dict[str, Any] = {
        "preset": (
            str,
            Field(
                default=default_preset,
                description="Named bundle of defaults for the fields left unset: "
                + ", ".join(sorted(presets)),
            ),
        )
    }
    known: set[str] = set()
    for source in sources:
        hints = typing.get_type_hints(source)
        docs = field_docs(source)
        for field in dataclasses.fields(source):
            if field.name in exclude:
                continue
            if field.name in known or field.name == "preset":
                raise ValueError(f"field {field.name!r} is declared twice")
            known.add(field.name)
            by_preset = [f"{p}: {v[field.name]!r}" for p, v in presets.items() if field.name in v]
            default = _default(field)
            fallback = f"the default {default!r}"
            if by_preset:
                fallback = f"the preset's value ({'; '.join(by_preset)}), else {fallback}"
            text = f"{docs.get(field.name, '')} Unset: {fallback}."
            fields[field.name] = (
                _dagster_type(hints[field.name]) | None,
                Field(default=None, description=text.strip()),
            )
    unknown = {k for values in presets.values() for k in values} - known
    if unknown:
        raise ValueError(f"presets set unknown fields {sorted(unknown)}")
    model = create_model(name, __base__=dg.Config, __doc__=doc, **fields)
    model.__module__ = __name__
    return model


def resolve_preset(config: dg.Config, presets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The preset's overrides with the run config's set fields on top (unset fields omitted)."""
    preset = config.preset
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(presets)}")
    values = dict(presets[preset])
    for key, value in config.model_dump().items():
        if key != "preset" and value is not None:
            values[key] = value
    return values


def resolve(cls: type, values: Mapping[str, Any], **fixed: Any) -> Any:
    """``cls(**fields)`` from resolved ``values`` (keys of other dataclasses ignored) + ``fixed``.

    Fields in neither keep their core default; the core validates the result.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in values.items() if k in names}
    kwargs.update(fixed)
    return cls(**kwargs)
