"""Dagster run config generated from the core dataclasses, so each setting is declared once.

The core dataclass (e.g. ``models.train_config.LMTrainConfig``, ``evaluation.findings.
FindingsConfig``) owns every field's name, type, default, documentation (its docstring's
``Attributes:`` section) and validation (``__post_init__``). :func:`config_class` turns one or
more of them into a ``dg.Config`` whose fields are all optional: a field left unset takes the
value of the selected preset (a named bundle of overrides) when there are presets, else the core
default. :func:`resolve` builds the core object from a run config, so what users type is
validated by the same code that the library uses.
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

__all__ = ["config_class", "field_docs", "resolve", "resolve_preset", "set_values"]

_ATTRIBUTE = re.compile(r"^(\s+)(\w+)(?: \([^)]*\))?: ?(.*)$")


def field_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the Google-style ``Attributes:`` sections of ``cls``'s docstring.

    A dataclass subclass documents its own fields (or new defaults) and inherits the rest from
    its bases' docstrings.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    lines = (cls.__dict__.get("__doc__") or "").splitlines()
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
        if set(rest) == {int, float}:  # an index or a fraction: typed as a float
            return float
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
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    default_preset: str | None = None,
    exclude: Sequence[str] = (),
    renames: Mapping[str, str] | None = None,
    unset: Mapping[str, str] | None = None,
) -> type[dg.Config]:
    """A ``dg.Config`` with one optional field per field of the ``sources`` dataclasses.

    Args:
        name: Class name (shown in the launchpad's schema).
        doc: Class docstring.
        sources: Core dataclasses; their fields must not clash.
        presets: Preset name -> field overrides (of any source); None: no presets (and no
            ``preset`` field), an unset field takes the core default.
        default_preset: The preset a run gets when it names none (required with presets).
        exclude: Fields the asset sets itself (not user config).
        renames: Core field name -> the config's name for it (a name users already write).
        unset: Config field name -> what an unset value means, for fields the asset resolves
            itself (replaces the generated "the default ..." text).

    Returns:
        The config class: every field defaults to None (unset), plus ``preset`` with presets.
    """
    renames = dict(renames or {})
    unset = dict(unset or {})
    fields: dict[str, Any] = {}
    if presets is not None:
        if default_preset not in presets:
            raise ValueError(f"default preset {default_preset!r} is not one of {sorted(presets)}")
        fields["preset"] = (
            str,
            Field(
                default=default_preset,
                description="Named bundle of defaults for the fields left unset: "
                + ", ".join(sorted(presets)),
            ),
        )
    known: set[str] = set()
    for source in sources:
        hints = typing.get_type_hints(source)
        docs = field_docs(source)
        for field in dataclasses.fields(source):
            if field.name in exclude:
                continue
            key = renames.get(field.name, field.name)
            if key in known or key == "preset":
                raise ValueError(f"field {key!r} is declared twice")
            known.add(key)
            by_preset = [f"{p}: {v[key]!r}" for p, v in (presets or {}).items() if key in v]
            default = _default(field)
            fallback = unset.get(key, f"the default {default!r}")
            if by_preset:
                fallback = f"the preset's value ({'; '.join(by_preset)}), else {fallback}"
            text = f"{docs.get(field.name, '')} Unset: {fallback}."
            fields[key] = (
                _dagster_type(hints[field.name]) | None,
                Field(default=None, description=text.strip()),
            )
    for mapping, what in ((renames.values(), "renames"), (unset, "unset")):
        if set(mapping) - known:
            raise ValueError(f"{what} name unknown fields {sorted(set(mapping) - known)}")
    unknown = {k for values in (presets or {}).values() for k in values} - known
    if unknown:
        raise ValueError(f"presets set unknown fields {sorted(unknown)}")
    model = create_model(name, __base__=dg.Config, __doc__=doc, **fields)
    model.__module__ = __name__
    return model


def set_values(config: dg.Config) -> dict[str, Any]:
    """The fields a run config sets (unset = None fields omitted; ``preset`` left out)."""
    return {k: v for k, v in config.model_dump().items() if k != "preset" and v is not None}


def resolve_preset(config: dg.Config, presets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The preset's overrides with the run config's set fields on top (unset fields omitted)."""
    preset = config.preset
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(presets)}")
    return {**presets[preset], **set_values(config)}


def resolve(
    cls: type, values: Mapping[str, Any], renames: Mapping[str, str] | None = None, **fixed: Any
) -> Any:
    """``cls(**fields)`` from resolved ``values`` (keys of other dataclasses ignored) + ``fixed``.

    ``renames`` (core name -> config name) is the one given to :func:`config_class`. Values come
    back in the core's types: a list for a tuple or ``Sequence`` field becomes a tuple, and a
    whole float for an ``int | float`` field (an index or a fraction) becomes an int. Fields in
    neither keep their core default; the core validates the result.
    """
    renames = renames or {}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        key = renames.get(field.name, field.name)
        if key in values:
            kwargs[field.name] = _core_value(hints[field.name], values[key])
    kwargs.update(fixed)
    return cls(**kwargs)


def _core_value(annotation: Any, value: Any) -> Any:
    """``value`` as typed by the run config, converted back to the core's annotation."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _core_value(args[0], value)
    if origin in (typing.Union, types.UnionType) and set(args) == {int, float}:
        return int(value) if isinstance(value, float) and value.is_integer() else value
    if origin in (tuple, Sequence) and isinstance(value, list):
        inner = [a for a in args if a is not Ellipsis]
        return tuple(_core_value(inner[0], v) for v in value) if len(inner) == 1 else tuple(value)
    return value
