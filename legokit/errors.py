"""The exceptions legokit raises on bad input: one class per kind of problem, one line of text each."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence


class LegoError(Exception):
    """Base of every error legokit raises on purpose; the CLI prints its message as one line and exits 1.

    Messages quote text from files and users, so line breaks in them are folded into spaces here, once.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(LegoError, ValueError):
    """A configuration value (block spec, task, latent shape, CLI flag) is invalid."""


class ArtifactError(LegoError):
    """A `.st` file cannot be read as a legokit artifact: missing, corrupt, foreign, too new or inconsistent."""


class WriteError(LegoError):
    """An output cannot be written: its folder is missing, it is one of the command's inputs, or the write failed."""


class ShapeError(LegoError, ValueError):
    """An input tensor or mask does not have the shape the block expects."""


class EncoderError(LegoError):
    """An encoder file or module cannot be wrapped (unknown format, pickled module, failed export)."""


def brief(exc: BaseException, limit: int | None = None) -> str:
    """Another library's exception as a short quote for one of ours: its message, whitespace folded, cut at `limit`
    characters (its class name when it has no message)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None else text[:limit]


def quoted(text: str, limit: int = 60) -> str:
    """A string from a file, for a message: cut at `limit` characters, quoted, control characters escaped."""
    return repr(text[:limit])


def quoted_list(names: Sequence[str], most: int = 8) -> str:
    """The first `most` strings from a file, quoted, and how many there are in all."""
    shown = ", ".join(quoted(str(n)) for n in names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def positive_int(name: str, value: object) -> int:
    """`value` when it is an integer of at least 1 (not a bool); otherwise a ConfigError naming the setting."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def env_count(name: str, default: int, environ: Mapping[str, str] | None = None, unit: str = "") -> int:
    """A positive whole number from environment variable `name` (`1e9` reads as 10^9), else `default`; anything
    else is a one-line ConfigError (`unit` says what it counts)."""
    text = (os.environ if environ is None else environ).get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text)) if len(text) <= 24 else -1
    except (ValueError, OverflowError):
        value = -1
    if value < 1:
        raise ConfigError(f"{name} must be a positive number{unit}, got {text[:24]!r}")
    return value
