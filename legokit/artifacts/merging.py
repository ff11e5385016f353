"""`legokit merge` of block (and merged-model) files, streamed: tensors are copied from the inputs into the output
without building the models, the merged head computed from theirs (MM-Lego Eq. 4, SLERP of heads); an encoder tensor
or program that several blocks hold byte for byte is written once (`kinds.composite.share_tensors`)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from legokit.artifacts.allowlist import SAFETENSORS_CODES, program_records
from legokit.artifacts.format import (
    CHUNK,
    KEY_CONFIG,
    KEY_KIND,
    KEY_PROVENANCE,
    OpenedArtifact,
    Source,
    Stored,
    open_artifact,
    read_artifact,
    write_streaming,
)
from legokit.artifacts.kinds import kind_named
from legokit.artifacts.kinds.common import GRAPH, PROGRAM_PREFIX
from legokit.artifacts.kinds.composite import SHARED_TABLE, encoder_owner, shared_key, shared_names, sharing_plan
from legokit.artifacts.registry import BLOCK, FUSED, MERGED
from legokit.compose.graph import Graph
from legokit.compose.joins import check_joinable, joined_contract
from legokit.compose.merge import MergeConfig, merge_head_tensors, merged_config, resolve_weights
from legokit.contract import Contract
from legokit.encoders import FOREIGN
from legokit.errors import ArtifactError, ConfigError, EncoderError, brief
from legokit.io.atomic import refuse_inputs
from legokit.nn.block import BlockConfig
from legokit.nn.spectral import DEFAULT_PHASE


@dataclass(frozen=True)
class _Part:
    """One block inside an input file: its config, the prefix of its tensors there, and where the file stores each
    tensor name (the name itself, or the shared entry its `shared_tensors` table names)."""

    origin: OpenedArtifact
    config: BlockConfig
    prefix: str
    layout: Mapping[str, tuple[str, Stored]]


def _parts(origin: OpenedArtifact) -> tuple[list[_Part], dict[str, float]]:
    """The blocks of a mergeable input (a block or a merged model) and the weights it already carries."""
    metadata, path = origin.metadata, origin.path
    kind = kind_named(metadata.get(KEY_KIND, ""), path)
    if not kind.mergeable or kind.parse is None:
        raise ArtifactError(f"{path}: cannot merge an artifact of kind {kind.name!r}")
    try:
        data = json.loads(metadata.get(KEY_CONFIG, "{}"))
        configs, settings, _ = kind.parse(data)
    except (json.JSONDecodeError, RecursionError, KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
        raise ArtifactError(f"{path}: corrupt config ({type(exc).__name__}: {exc})") from exc
    stored = origin.header.layout
    names = {n: n for n in stored}
    if any(kind.prefix(m) for m in configs):  # a merged model: its blocks may share stored tensors
        names = shared_names(path, data, stored, configs)
    layout = {name: (entry, stored[entry]) for name, entry in names.items()}
    parts = [_Part(origin, c, kind.prefix(m), layout) for m, c in configs.items()]
    return parts, dict(getattr(settings, "weights", ()))


def contract_of_file(path: str | os.PathLike[str]) -> Contract:
    """The task contract (time unit, bin edges, classes) of a block or merged/fused model file, read from its header
    alone (`legokit train --bins-from`)."""
    artifact = read_artifact(path)  # verified against its checksum: these bins decide what a new block learns
    kind = kind_named(artifact.kind, Path(path))
    if kind.name not in (BLOCK, MERGED, FUSED):
        raise ArtifactError(f"{path}: a {kind.name} artifact has no task contract; give a block or a model")
    try:
        config = artifact.config
        configs = (
            [BlockConfig.from_dict(config)]
            if kind.name == BLOCK
            else [BlockConfig.from_dict(c) for c in config["blocks"].values()]
        )
    except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
        raise ArtifactError(f"{path}: corrupt config ({type(exc).__name__}: {brief(exc, 200)})") from exc
    return joined_contract(configs)


def _check_stored_program(part: _Part, stored: Stored) -> None:
    """A block's encoder program must pass the strict allowlist before merge copies it into a new artifact. A thin
    program's empty weight records pass only where the same file holds, under the block's prefix, the tensor
    `encoder.graph.<fqn>` (dtype and shape as the record's) that refills it at load; its data is not read."""
    origin, prefix = part.origin, part.prefix
    if stored.dtype != "U8" or len(stored.shape) != 1:
        raise ArtifactError(f"{origin.path}: encoder program tensor is not a byte string")
    beside = {
        name[len(prefix + GRAPH) :]: (SAFETENSORS_CODES[entry.dtype], tuple(entry.shape))
        for name, (_, entry) in part.layout.items()
        if name.startswith(prefix + GRAPH) and entry.dtype in SAFETENSORS_CODES
    }
    try:
        program_records(origin.read(stored), strict=True, what=f"{origin.path}: encoder program", beside=beside)
    except EncoderError as exc:
        raise ArtifactError(str(exc)) from exc


def _block_sources(part: _Part, heads: dict[str, dict[str, torch.Tensor]]) -> list[Source]:
    """What a block of an input contributes to the merged file: its tensors (streamed) and its head (loaded)."""
    modality, origin = part.config.modality, part.origin
    heads[modality] = {}
    sources = []
    for name, (entry, stored) in part.layout.items():
        if name.startswith(part.prefix) and stored.dtype in ("F16", "BF16", "F64", "C64"):
            raise ArtifactError(f"{origin.path}: tensor '{name}' is {stored.dtype}; legokit merges float32 blocks")
        if name.startswith(part.prefix + "task_head."):
            head = origin.tensor(stored)
            if not torch.isfinite(head).all():
                raise ArtifactError(f"{origin.path}: head tensor '{name}' holds NaN or infinite values")
            heads[modality][name[len(part.prefix + "task_head.") :]] = head
        if name == PROGRAM_PREFIX + part.prefix + "encoder":
            _check_stored_program(part, stored)
            sources.append(Source.of_file(f"{PROGRAM_PREFIX}blocks.{modality}.encoder", origin, entry, stored))
        elif name.startswith(part.prefix) and not name.startswith(PROGRAM_PREFIX):
            sources.append(Source.of_file(f"blocks.{modality}.{name[len(part.prefix) :]}", origin, entry, stored))
    if part.config.encoder.name == FOREIGN and PROGRAM_PREFIX + part.prefix + "encoder" not in part.layout:
        raise ArtifactError(f"{origin.path}: block {modality}: a foreign encoder without its program tensor")
    return sources


def _chunks(source: Source) -> Iterator[bytes]:
    """A streamed tensor's bytes, one chunk at a time, through its input's file descriptor."""
    assert source.origin is not None  # only tensors copied from a file are hashed here
    position = source.start
    while position < source.end:
        chunk = os.pread(source.origin.fd, min(CHUNK, source.end - position), position)
        if not chunk:
            raise ArtifactError(f"{source.origin.path}: file ended early (truncated?)")
        yield chunk
        position += len(chunk)


def _shared_sources(sources: Sequence[Source]) -> tuple[list[Source], list[list[str]]]:
    """The merged file's sources with encoder tensors and programs that several blocks hold byte for byte written
    once, under their shared key, and the table naming them: as `share_tensors` does for a model in memory. Only
    tensors with a twin of the same dtype and shape are hashed, each stored range once."""
    encoders = [s for s in sources if s.origin is not None and encoder_owner(s.name) is not None]
    shapes = Counter((s.dtype, s.shape) for s in encoders)
    keys: dict[tuple[int, int, int], str] = {}  # a stored range (of one input) -> its shared key
    groups: dict[str, list[str]] = {}
    for source in encoders:
        if shapes[(source.dtype, source.shape)] > 1:
            where = (id(source.origin), source.start, source.end)
            if where not in keys:
                keys[where] = shared_key(source.dtype, source.shape, _chunks(source))
            groups.setdefault(keys[where], []).append(source.name)
    plan = sharing_plan(groups)
    named = {s.name: s for s in sources}
    copied: dict[str, str] = {}  # shared key -> the block tensor whose stored bytes it copies
    for name in sorted(plan):
        copied.setdefault(plan[name], name)
    kept = [s for s in sources if s.name not in plan]
    kept += [replace(named[name], name=key) for key, name in sorted(copied.items())]
    return kept, sorted([name, key] for name, key in plan.items())


def _blocks_provenance(parts: Sequence[_Part]) -> dict[str, Any]:
    """Each merged block's own provenance (training data, split, seen samples), from its input file."""
    found: dict[str, Any] = {}
    for part in parts:
        try:
            record = json.loads(part.origin.metadata.get(KEY_PROVENANCE, "{}"))
        except (ValueError, RecursionError) as exc:  # ValueError: also an integer of over 4,300 digits
            raise ArtifactError(f"{part.origin.path}: corrupt header: legokit.provenance is not valid JSON") from exc
        if not isinstance(record, dict):
            record = {}
        blocks = record.get("blocks") if part.prefix else None
        blocks = blocks if isinstance(blocks, dict) else {}
        found[part.config.modality] = blocks.get(part.config.modality, {}) if part.prefix else record
    return found


def merge_files(
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    weights: Sequence[float] | Mapping[str, float] | str | None = None,
    phase: str = DEFAULT_PHASE,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """`legokit merge`: LegoMerge of block (or merged-model) files into one merged artifact, streamed: the blocks'
    tensors are copied in chunks and only the small heads are loaded, so memory stays near one chunk. Each input is
    opened once and read only through that file descriptor."""
    files = [Path(p) for p in paths]
    refuse_inputs(output, files)
    with ExitStack() as stack:
        parts: list[_Part] = []
        known: dict[str, float] = {}
        owner: dict[str, Path] = {}
        for path in files:
            found, carried = _parts(open_artifact(path, stack))
            for part in found:
                if part.config.modality in owner:
                    raise ConfigError(
                        f"modality {part.config.modality!r} is in both {owner[part.config.modality]} and {path}"
                    )
                owner[part.config.modality] = path
            parts.extend(found)
            known.update(carried)
        blocks_record = _blocks_provenance(parts)
        try:
            join = check_joinable([p.config for p in parts], blocks_record)
        except ConfigError as exc:
            raise ConfigError(f"cannot merge {', '.join(map(str, files))}: {exc}") from exc
        tasks = {p.config.modality: p.config.task for p in parts}
        config = MergeConfig(resolve_weights(list(tasks), weights, known, tasks, blocks_record), phase)
        heads: dict[str, dict[str, torch.Tensor]] = {}
        sources, table = _shared_sources([source for part in parts for source in _block_sources(part, heads)])
        heads = {m: join.head(m, head) for m, head in heads.items()}
        sources += [Source.of_tensor(f"head.{n}", t) for n, t in merge_head_tensors(heads, config).items()]
        configs = {p.config.modality: p.config for p in parts}
        graph = Graph.for_operation("merge", sorted(configs), phase=phase)
        record = {"merged_from": [str(p) for p in files], "blocks": blocks_record, **dict(provenance or {})}
        header = merged_config(configs, config, graph)
        if table:
            header[SHARED_TABLE] = table
        return write_streaming(output, MERGED, header, sources, record, inputs=files)
