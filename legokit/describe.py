"""`legokit inspect` and model cards: an artifact's facts, through its kind in the registry; builds no model."""

from __future__ import annotations

import os
from typing import Any, Mapping

from .artifact import read_artifact, read_artifact_summary
from .errors import ArtifactError, ConfigError
from .hubref import local_artifact
from .registry import kind_named


def describe(path: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """Every fact `inspect` shows about an artifact, as JSON-ready values. The file is fully verified first unless
    `verify` is False (a file this process just wrote): then only its header is read, in bounded memory."""
    artifact = read_artifact(local_artifact(path)) if verify else read_artifact_summary(path)
    kind = kind_named(artifact.kind, path)
    try:
        return kind.describe(artifact)
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: corrupt config ({type(exc).__name__}: {exc})") from exc


def summary_rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The facts as (field, text) rows, in the order `inspect` prints them."""
    kind = kind_named(facts["kind"], facts["path"])
    return [("format", f"legokit artifact v{facts['format_version']} ({facts['kind']})"), *kind.rows(facts)]
