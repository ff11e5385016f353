"""Reading YAML config files (recipes, block specs): one place for the errors that name the file and the key."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from legokit.errors import ConfigError, brief
from legokit.io.inputs import read_input
from legokit.schema import check_keys as schema_check_keys

MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 50


class PlainLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (`*name` would let a few bytes expand to gigabytes) and with a cap on
    nesting: recipes and specs need neither."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        depth = getattr(self, "_legokit_depth", 0)
        if depth > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested over {MAX_YAML_DEPTH} levels", self.peek_event().start_mark
            )
        self._legokit_depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._legokit_depth = depth


def where(path: Path, key: str) -> str:
    """`FILE: KEY`, the prefix of every config error."""
    return f"{path}: {key}" if key else str(path)


def read_yaml(path: str | os.PathLike[str], what: str) -> Mapping[str, Any]:
    """The top-level mapping of a YAML file; a missing file, bad YAML or another top level is a ConfigError."""
    path = Path(path)
    if not os.path.lexists(path):
        raise ConfigError(f"{path}: no such {what} file")
    try:
        text = read_input(path, ConfigError, limit=MAX_YAML_BYTES).decode("utf-8")
        data = yaml.load(text, Loader=PlainLoader)  # noqa: S506 # checked: safe loader, no aliases
    except RecursionError as exc:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line} ({getattr(exc, 'problem', None) or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file") from exc
    except ValueError as exc:  # an integer of over 4,300 digits
        raise ConfigError(f"{path}: not valid YAML ({brief(exc, 80)})") from exc
    return require_mapping(path, "", data if data is not None else {})


def require_mapping(path: Path, key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where(path, key)}: must be a mapping, got {type(value).__name__}")
    return value


def check_keys(path: Path, parent: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """Every key is allowed; a typo names the file and the key and suggests the closest allowed one."""
    schema_check_keys(data, allowed, f"{path}: {parent}." if parent else f"{path}: ")
