"""One schema per configuration: each field of a frozen config dataclass carries its own `Option` (help text, CLI
flag, which YAML files take it as a key, how a stored dict reads it), and this module derives from those fields the
argparse flags, the allowed keys with their one-line errors, and to/from-dict. Adding a field to a config adds its
flag, its spec or recipe key and its stored key, with no other edit.

Why dataclass field metadata (as PEFT's configs do) and not pydantic (as mergekit does): legokit's configurations were
already frozen dataclasses validated once, in `__post_init__`, with one-line `ConfigError`s that users and tests read;
pydantic would add a dependency, a second validation pass beside ours, and its own multi-line error messages."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from legokit.errors import ConfigError

SPEC, RECIPE = "spec", "recipe"  # the files a field may be a key of: block specs (blocks/*.yaml), recipes
OWN, SHARED, NONE = "own", "shared", "none"  # a field's CLI flag: its own, one every computing command shares, none
_KEY = "legokit"  # where an Option sits in a field's metadata


class _Required:
    """`Option.absent` of a field that every stored dict must hold."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


@dataclass(frozen=True)
class Option:
    """What the schema knows of one field: `help` may hold `{default}` (the command's default is put there); `parse`
    reads a flag's or a YAML file's text; `load` reads a stored JSON value; `absent` is what a stored dict lacking the
    key means (files written before the field existed); `omit_default` leaves the default out of `to_dict`."""

    help: str = ""
    cli: str = NONE
    flag: str | None = None  # default: --the-field-name
    type: Callable[[str], Any] | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    show: Callable[[Any], str] = str
    keys: tuple[str, ...] = ()
    load: Callable[[Any], Any] | None = None
    absent: Any = REQUIRED
    omit_default: bool = False


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, **settings: Any) -> Any:
    """A dataclass field with its `Option`; settings given without `cli` make a field that is a flag of its own."""
    settings = {"cli": OWN, **settings} if help else settings
    return field(default=default, default_factory=default_factory, metadata={_KEY: Option(help, **settings)})


def stored(default: Any = MISSING, **settings: Any) -> Any:
    """A field that is no flag and no file key, only stored (`to_dict` / `from_dict`) with these settings."""
    return field(default=default, metadata={_KEY: Option(**settings)})


def option_of(item: Field) -> Option:
    return item.metadata.get(_KEY, Option())


def default_of(item: Field) -> Any:
    return item.default_factory() if item.default_factory is not MISSING else item.default


def options(cls: type, cli: Iterable[str] = (OWN, SHARED, NONE)) -> list[Field]:
    """The fields of a config class whose CLI flag is of these kinds, in declaration order."""
    wanted = tuple(cli)
    return [item for item in fields(cls) if option_of(item).cli in wanted]


def file_keys(cls: type, where: str) -> tuple[str, ...]:
    """The keys a file of this kind (SPEC or RECIPE) takes for this config: its fields marked so."""
    return tuple(item.name for item in fields(cls) if where in option_of(item).keys)


def check_keys(data: Mapping[Any, Any], allowed: Iterable[str], prefix: str = "") -> None:
    """Every key is allowed; else one line naming the key (after `prefix`, e.g. `spec.yaml: training.`) and the
    closest allowed one."""
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")


def flag_of(item: Field) -> str:
    return option_of(item).flag or "--" + item.name.replace("_", "-")


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: Any,
    suffix: str = "",
    helps: Mapping[str, str] | None = None,
    omit: Iterable[str] = (),
) -> argparse.ArgumentParser:
    """One flag per field of `cls` that has its own (but those in `omit`: no meaning for this command), its help
    showing this command's default (`defaults`, then `suffix`, e.g. " or the spec's"); `helps` replaces a field's
    help for this command. Every flag defaults to None, so that `given` returns only what the user said."""
    for item in (f for f in options(cls, (OWN,)) if f.name not in set(omit)):
        spec = option_of(item)
        text = (helps or {}).get(item.name, spec.help)
        text = text.replace("{default}", spec.show(getattr(defaults, item.name)) + suffix).replace("%", "%%")
        if item.type in (bool, "bool"):
            action: Any = argparse.BooleanOptionalAction if default_of(item) else "store_true"
            parser.add_argument(flag_of(item), dest=item.name, action=action, default=None, help=text)
            continue
        typed: dict[str, Any] = {"type": spec.type} if spec.type is not None else {}
        parser.add_argument(
            flag_of(item), dest=item.name, choices=spec.choices, metavar=spec.metavar, help=text, **typed
        )
    return parser


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` that the command line set (own or shared flags), read by their `parse`."""
    found = {}
    for item in options(cls, (OWN, SHARED)):
        value = getattr(args, item.name, None)
        if value is not None:
            parse = option_of(item).parse
            found[item.name] = parse(value) if parse is not None and isinstance(value, str) else value
    return found


def parsed(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The keys of a YAML mapping that are `cls`'s `where` keys, each read by its field's `parse` (text such as
    `latent: 32x32`); absent keys are left out, so that they take the one set of defaults."""
    found = {}
    for item in fields(cls):
        spec = option_of(item)
        if where in spec.keys and item.name in data:
            found[item.name] = spec.parse(str(data[item.name])) if spec.parse is not None else data[item.name]
    return found


def _dump(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """A config as JSON-ready values: nested configs by their `to_dict`, tuples as lists; a field marked
    `omit_default` is left out while it has its default."""
    out = {}
    for item in fields(config):
        value = getattr(config, item.name)
        if option_of(item).omit_default and value == default_of(item):
            continue
        out[item.name] = _dump(value)
    return out


def from_dict(cls: type, data: Mapping[str, Any], strict: bool = False, prefix: str = "") -> Any:
    """A config from what `to_dict` wrote: each field read by its `load` (a tuple for tuple fields), a key that is
    absent taking the field's `absent` value (a KeyError when it has none: the file is incomplete). `strict`: any
    other key is a ConfigError (user-written dicts); stored files may hold keys of later versions, so they are not."""
    if strict:
        check_keys(data, [item.name for item in fields(cls)], prefix)
    values = {}
    for item in fields(cls):
        spec = option_of(item)
        if item.name not in data:
            if spec.absent is REQUIRED:
                raise KeyError(item.name)
            values[item.name] = spec.absent
            continue
        value = data[item.name]
        values[item.name] = spec.load(value) if spec.load is not None else value
    return cls(**values)
