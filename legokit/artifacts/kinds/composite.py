"""What merged and fused models share in a file: each block's tensors under `blocks.M.`, the head's under `head.`,
settings and graph in the header; encoder tensors and programs that several blocks hold byte for byte stored once,
under `shared.<sha256>`, with the config's `shared_tensors` table naming, per block tensor, the shared one it uses;
how they are rebuilt (checked before anything is built) and described."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from legokit.artifacts.format import DTYPES, Artifact, tensor_bytes
from legokit.artifacts.kinds.block import block_from_tensors, block_summary, block_tensors
from legokit.artifacts.kinds.common import PROGRAM_PREFIX, check_state, common_facts, contract_rows, shape_text
from legokit.compose.composite import CompositeModel
from legokit.compose.merge import head_width
from legokit.errors import ArtifactError, ConfigError
from legokit.nn.layers import TaskHead

Composite = TypeVar("Composite", bound=CompositeModel)
SHARED = "shared."  # a tensor stored once for several blocks: shared.<sha256 of its dtype, shape and bytes>
SHARED_TABLE = "shared_tensors"  # config key: sorted [block tensor name, shared key] pairs


def blocks_prefix(modality: str) -> str:
    """Where a block's tensors sit in a merged or fused model's file."""
    return f"blocks.{modality}."


def composite_tensors(model: CompositeModel) -> dict[str, torch.Tensor]:
    """A merged or fused model's tensors: each block's under `blocks.M.`, the head's under `head.`."""
    tensors: dict[str, torch.Tensor] = {}
    for modality, block in model.blocks.items():
        tensors.update(block_tensors(block, prefix=f"blocks.{modality}."))
    tensors.update({f"head.{name}": value for name, value in model.head.state_dict().items()})
    return tensors


def encoder_owner(name: str) -> str | None:
    """The block whose encoder a tensor of a merged or fused file belongs to (`blocks.M.encoder.*`, or its program
    `__program__.blocks.M.encoder`), else None: only encoders are stored shared."""
    program = name.startswith(PROGRAM_PREFIX)
    parts = name[len(PROGRAM_PREFIX) if program else 0 :].split(".")
    if len(parts) < 3 or parts[0] != "blocks" or parts[2] != "encoder" or (len(parts) == 3) != program:
        return None
    return parts[1]


def shared_key(dtype: str, shape: Sequence[int], chunks: Iterable[bytes]) -> str:
    """The name a tensor is stored shared under: `shared.` and the sha256 of its dtype, shape and bytes."""
    digest = hashlib.sha256(f"{dtype}|{list(shape)}|".encode())
    for chunk in chunks:
        digest.update(chunk)
    return SHARED + digest.hexdigest()


def sharing_plan(groups: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Block tensor -> shared key, from groups of equal encoder tensors (shared key -> their names): a group is stored
    shared when two blocks or more hold it, each block naming it once (a block's second equal tensor stays its own),
    so that a loaded model never needs more than its block count times the file's bytes."""
    plan: dict[str, str] = {}
    for key, names in groups.items():
        first: dict[str | None, str] = {}
        for name in sorted(names):
            first.setdefault(encoder_owner(name), name)
        if len(first) > 1:
            plan.update(dict.fromkeys(first.values(), key))
    return plan


def share_tensors(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """A merged or fused model's tensors as its file stores them: encoder tensors and programs that several blocks
    hold byte for byte once, under their shared key, and the table of [block tensor, shared key] pairs (sorted)."""
    encoders = {n: t for n, t in tensors.items() if encoder_owner(n) is not None}
    shapes = Counter((t.dtype, tuple(t.shape)) for t in encoders.values())
    groups: dict[str, list[str]] = {}
    for name, tensor in encoders.items():
        if shapes[(tensor.dtype, tuple(tensor.shape))] > 1:  # a tensor of its own shape is nobody's twin
            key = shared_key(DTYPES.get(tensor.dtype, str(tensor.dtype)), tensor.shape, [tensor_bytes(tensor)])
            groups.setdefault(key, []).append(name)
    plan = sharing_plan(groups)
    stored = {n: t for n, t in tensors.items() if n not in plan}
    for name, key in plan.items():
        stored.setdefault(key, tensors[name])
    return stored, sorted([name, key] for name, key in plan.items())


def composite_write(config: dict[str, Any], model: CompositeModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A merged or fused model's config and tensors as its file stores them (`share_tensors`); the sharing table goes
    into the config, which the checksum covers."""
    stored, table = share_tensors(composite_tensors(model))
    return ({**config, SHARED_TABLE: table} if table else config), stored


def _quoted(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:80] + "...")


def _shared_table(
    path: Path, config: Mapping[str, Any], stored: Collection[str], modalities: Collection[str]
) -> dict[str, str]:
    """The `shared_tensors` table as block tensor -> shared key, each name checked on its own."""
    table = config.get(SHARED_TABLE, [])
    if not isinstance(table, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair) for pair in table
    ):
        raise ArtifactError(f"{path}: corrupt {SHARED_TABLE} table (a list of [block tensor, shared key] pairs)")
    found: dict[str, str] = {}
    for name, key in table:
        if encoder_owner(name) not in modalities:
            raise ArtifactError(
                f"{path}: {SHARED_TABLE} lists {_quoted(name)}, not the encoder tensor or program of one of its "
                "blocks (only those are stored shared)"
            )
        if name in found:
            raise ArtifactError(f"{path}: {SHARED_TABLE} gives {_quoted(name)} twice")
        if name in stored:
            raise ArtifactError(f"{path}: tensor {_quoted(name)} is both stored and listed in {SHARED_TABLE}")
        found[name] = key
    return found


def shared_names(
    path: Path, config: Mapping[str, Any], stored: Collection[str], modalities: Collection[str]
) -> dict[str, str]:
    """Each tensor name a merged or fused file's blocks read -> the stored entry holding it: itself, or the shared
    key its config's `shared_tensors` names. A malformed table; a name that is not the encoder tensor or program of
    one of `modalities`, given twice or also stored; a key that is itself a name (a chain or a cycle), outside
    `shared.` (another block's own tensor) or absent; a shared entry named twice by one block or by none: each is a
    one-line ArtifactError. Dtypes and shapes are left to the blocks' own checks, which see these tensors."""
    found = _shared_table(path, config, stored, modalities)
    for name, key in found.items():
        if key in found:
            raise ArtifactError(
                f"{path}: {SHARED_TABLE}: {_quoted(name)} refers to {_quoted(key)}, itself a reference (a chain or a "
                "cycle)"
            )
        if not key.startswith(SHARED):
            raise ArtifactError(
                f"{path}: {SHARED_TABLE}: {_quoted(name)} refers to {_quoted(key)}, which is not a shared tensor"
            )
        if key not in stored:
            raise ArtifactError(
                f"{path}: {SHARED_TABLE}: {_quoted(name)} refers to {_quoted(key)}, which the file does not hold"
            )
    uses = Counter((encoder_owner(name), key) for name, key in found.items())
    twice = sorted((str(owner), key) for (owner, key), count in uses.items() if count > 1)
    if twice:
        owner, key = twice[0]
        raise ArtifactError(f"{path}: {SHARED_TABLE}: block {owner} names {_quoted(key)} twice (two names, one entry)")
    used = set(found.values())
    unused = sorted(n for n in stored if n.startswith(SHARED) and n not in used)
    if unused:
        raise ArtifactError(f"{path}: unexpected tensor {_quoted(unused[0])} (no {SHARED_TABLE} entry names it)")
    return {**{n: n for n in stored if not n.startswith(SHARED)}, **found}


def blocks_view(artifact: Artifact, modalities: Collection[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A merged or fused artifact's tensors (and a summary's digests) under the names its blocks read, shared ones
    resolved (`shared_names`): what every check and the build see, as for a file with nothing shared. The same
    tensor may stand under two names; each block loads it into its own parameters (a copy), so blocks that shared a
    tensor in the file are not tied once loaded."""
    names = shared_names(artifact.path, artifact.config, artifact.tensors, modalities)
    tensors = {name: artifact.tensors[entry] for name, entry in names.items()}
    digests = {name: artifact.digests[entry] for name, entry in names.items() if entry in artifact.digests}
    return tensors, digests


def parsed(artifact: Artifact, parse: Callable[[Mapping[str, Any]], tuple]) -> tuple:
    """A merged or fused model's header config as block configs (at least one), settings and graph; anything else
    is an ArtifactError naming the file."""
    path = artifact.path
    try:
        configs, settings, graph = parse(artifact.config)
    except ConfigError as exc:
        raise ArtifactError(f"{path}: invalid {artifact.kind} config: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: corrupt {artifact.kind} config ({type(exc).__name__}: {exc})") from exc
    if not configs:
        raise ArtifactError(f"{path}: invalid {artifact.kind} config: it holds no blocks")
    return configs, settings, graph


def composite_from_artifact(
    artifact: Artifact, model: Callable[..., Composite], parse: Callable[[Mapping[str, Any]], tuple]
) -> Composite:
    """Rebuild a merged or fused model: its blocks, its head, its settings and its graph."""
    path = artifact.path
    configs, settings, graph = parsed(artifact, parse)
    tensors, _ = blocks_view(artifact, configs)
    blocks = {
        m: block_from_tensors(path, config.to_dict(), tensors, prefix=f"blocks.{m}.") for m, config in configs.items()
    }
    first = next(iter(configs.values()))
    head = TaskHead(head_width(first), first.task.out_features)
    check_state(path, head, tensors, prefix="head.")
    head.load_state_dict({k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")})
    try:
        built = model(blocks, head, settings, graph)
    except ConfigError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    built.provenance = dict(artifact.provenance)
    recorded = built.provenance.get("blocks")
    for modality, block in blocks.items():  # each block keeps its own record (seen samples, validation metrics)
        own = recorded.get(modality) if isinstance(recorded, dict) else None
        block.provenance = dict(own) if isinstance(own, dict) else {}
    return built


def composite_describer(
    parse: Callable[[Mapping[str, Any]], tuple], settings_facts: Callable[[Any], dict[str, Any]]
) -> Callable[[Artifact], dict[str, Any]]:
    """The facts of a merged or fused model: its blocks', the shared latent and task, its own settings, its graph."""

    def describe(artifact: Artifact) -> dict[str, Any]:
        configs, settings, graph = parsed(artifact, parse)
        tensors, digests = blocks_view(artifact, configs)
        first = next(iter(configs.values()))
        return {
            **common_facts(artifact),
            "title": f"legokit {artifact.kind} model: {', '.join(sorted(configs))}",
            "modalities": sorted(configs),
            "latent": f"{first.latent[0]}x{first.latent[1]}",
            "task": str(first.task),
            "blocks": {m: block_summary(c, tensors, f"blocks.{m}.", digests) for m, c in sorted(configs.items())},
            "graph": graph.tree(),
            **settings_facts(settings),
        }

    return describe


def composite_rows(settings_row: Callable[[Mapping[str, Any]], tuple[str, str]]):
    """Rows of a merged or fused model: modalities, latent, task, its settings, one row per block."""

    def rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
        found = [
            ("modalities", ", ".join(facts["modalities"])),
            ("latent", f"{facts['latent']} (channels x dims)"),
            ("task", facts["task"]),
            settings_row(facts),
        ]
        for modality, block in facts["blocks"].items():
            found.append(
                (
                    f"block {modality}",
                    f"{block['encoder']}; input {shape_text(block['input_shape'])}; "
                    f"depth {block['depth']}; {block['params']:,} params",
                )
            )
            found.extend(contract_rows(block.get("contract", {}), modality))
        return found

    return rows
