"""What `legokit inspect` and model cards say about each kind of artifact: its facts as JSON-ready values, read
from the header and tensors (no model is built), and the same facts as (field, text) rows for a table."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping

import torch

from .artifact import Artifact
from .block import BlockConfig, format_shape
from .codec import PROGRAM_PREFIX
from .samples import summarized


def _program_sha256(program: torch.Tensor, digest: str | None) -> str | None:
    """The sha256 of a stored program's bytes: hashed from the tensor when its data was read, else the digest a
    summary took from the file for its placeholder (`read_artifact_summary`). A meta tensor's data is never read."""
    if program.device.type != "meta":
        return hashlib.sha256(program.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return digest


def _encoder_text(config: BlockConfig, program: torch.Tensor | None, digest: str | None = None) -> str:
    spec = config.encoder
    if program is not None:
        sha = _program_sha256(program, digest)
        where = f"sha256 {sha[:12]}" if sha else "not read"
        return f"{spec.name} program ({where}), {spec.out_dim}-d tokens"
    kwargs = ", ".join(f"{k}={v}" for k, v in sorted(spec.kwargs.items()))
    return f"{spec.name}({kwargs}), {spec.out_dim}-d tokens"


def _params(tensors: Mapping[str, torch.Tensor], prefix: str = "") -> int:
    return sum(t.numel() for k, t in tensors.items() if k.startswith(prefix) and not k.startswith(PROGRAM_PREFIX))


def block_facts(config: BlockConfig, tensors: Mapping[str, torch.Tensor], prefix: str = "",
                digests: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One block's facts (alone, or inside a merged or fused model under `prefix`); `digests` are a summary's
    sha256 of the byte tensors it holds as placeholders."""
    program = PROGRAM_PREFIX + prefix + "encoder"
    return {
        "modality": config.modality,
        "input_shape": format_shape(config.input_shape),
        "latent": f"{config.latent[0]}x{config.latent[1]}",
        "depth": config.depth,
        "fft_axes": config.fft_axes,
        "update": config.update,
        "head_features": config.head_features,
        "shared_init": config.shared_init,
        "task": str(config.task),
        "encoder": _encoder_text(config, tensors.get(program), (digests or {}).get(program)),
        "params": _params(tensors, prefix),
        "contract": config.contract.to_dict(),
    }


def _listed(names: Any, most: int = 6) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def contract_rows(contract: Mapping[str, Any], modality: str = "") -> list[tuple[str, str]]:
    """The contract as rows: input schema, time unit and bin edges, classes; what is not recorded says so."""
    where = f" {modality}" if modality else ""
    rows = []
    if "features" in contract:
        rows.append((f"schema{where}", f"{len(contract['features'])} features by name: {_listed(contract['features'])}"))
    elif "tokenizer" in contract:
        rows.append((f"schema{where}", f"text, tokenizer sha256 {contract['tokenizer'][:12]}"))
    if "edges" in contract:
        unit = contract.get("time_unit") or "unrecorded unit"
        rows.append((f"bins{where}", f"edges {_listed(f'{e:g}' for e in contract['edges'])} ({unit})"))
    if "classes" in contract:
        rows.append((f"classes{where}", _listed(contract["classes"], 10)))
    if not contract:
        rows.append((f"contract{where}", "not recorded (an older file): tables read by position, bins unchecked"))
    return rows


def common_facts(artifact: Artifact) -> dict[str, Any]:
    """What every artifact has: path, format, kind, size, hashes, version and provenance."""
    return {
        "path": str(artifact.path),
        "format_version": artifact.version,
        "kind": artifact.kind,
        "params": _params(artifact.tensors),
        "size_bytes": artifact.size,
        "sha256": artifact.sha256,
        "legokit_version": artifact.library_version,
        "provenance": artifact.provenance,
    }


def describe_block(artifact: Artifact) -> dict[str, Any]:
    config = BlockConfig.from_dict(artifact.config)
    return {**common_facts(artifact), "title": f"LegoBlock: {config.modality}", "modalities": [config.modality],
            **block_facts(config, artifact.tensors, digests=artifact.digests)}


def composite_describer(parse: Callable[[Mapping[str, Any]], tuple],
                        settings_facts: Callable[[Any], dict[str, Any]]) -> Callable[[Artifact], dict[str, Any]]:
    """The facts of a merged or fused model: its blocks', the shared latent and task, its own settings, its graph."""

    def describe(artifact: Artifact) -> dict[str, Any]:
        configs, settings, graph = parse(artifact.config)
        first = next(iter(configs.values()))
        return {
            **common_facts(artifact),
            "title": f"legokit {artifact.kind} model: {', '.join(sorted(configs))}",
            "modalities": sorted(configs),
            "latent": f"{first.latent[0]}x{first.latent[1]}",
            "task": str(first.task),
            "blocks": {m: block_facts(c, artifact.tensors, f"blocks.{m}.", artifact.digests)
                       for m, c in sorted(configs.items())},
            "graph": graph.tree(),
            **settings_facts(settings),
        }

    return describe


def merge_settings(settings: Any) -> dict[str, Any]:
    return {"phase": settings.phase, "weights": dict(settings.weights)}


def fuse_settings(settings: Any) -> dict[str, Any]:
    return {"mode": settings.mode, "order": list(settings.order)}


def describe_adapter(artifact: Artifact) -> dict[str, Any]:
    config = artifact.config
    return {
        **common_facts(artifact),
        "title": f"legokit {config['type']} adapter: {', '.join(config['modalities'])}",
        "adapter": config["type"],
        "modalities": list(config["modalities"]),
        "placement": list(config["placement"]),
        "rank": config.get("rank"),
        "base_sha256": config["base_sha256"],
        "adapter_params": _params(artifact.tensors, "adapter."),
    }


def shape_text(shape: str) -> str:
    return f"(batch, {shape.replace('x', ', ').replace('?', 'n')})"


def block_rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        ("modality", facts["modality"]),
        ("input shape", shape_text(facts["input_shape"])),
        ("latent", f"{facts['latent']} (channels x dims)"),
        ("depth", str(facts["depth"])),
        ("fft axes", facts["fft_axes"]),
        ("latent math", f"update {facts['update']}, head reads {facts['head_features']}, "
                        f"{'shared' if facts['shared_init'] else 'own'} initialisation"),
        ("task", facts["task"]),
        ("encoder", facts["encoder"]),
        *contract_rows(facts.get("contract", {})),
    ]


def composite_rows(settings_row: Callable[[Mapping[str, Any]], tuple[str, str]]):
    """Rows of a merged or fused model: modalities, latent, task, its settings, one row per block."""

    def rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
        found = [("modalities", ", ".join(facts["modalities"])), ("latent", f"{facts['latent']} (channels x dims)"),
                 ("task", facts["task"]), settings_row(facts)]
        for modality, block in facts["blocks"].items():
            found.append((f"block {modality}", f"{block['encoder']}; input {shape_text(block['input_shape'])}; "
                                               f"depth {block['depth']}; {block['params']:,} params"))
            found.extend(contract_rows(block.get("contract", {}), modality))
        return found

    return rows


def merge_row(facts: Mapping[str, Any]) -> tuple[str, str]:
    return "merge", f"phase {facts['phase']}, weights " + ", ".join(f"{m}={w:g}" for m, w in facts["weights"].items())


def fuse_row(facts: Mapping[str, Any]) -> tuple[str, str]:
    return "fuse", f"{facts['mode']}, order {' -> '.join(facts['order'])}"


def adapter_rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    sites = facts["placement"]
    return [
        ("adapter", facts["adapter"] + (f", rank {facts['rank']}" if facts["rank"] else "")),
        ("modalities", ", ".join(facts["modalities"])),
        ("sites", f"{len(sites)}: " + ", ".join(sites[:4]) + (" ..." if len(sites) > 4 else "")),
        ("adapter params", f"{facts['adapter_params']:,} (plus the head it trained)"),
        ("fits base", f"sha256 {facts['base_sha256']}"),
    ]


def common_rows(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Size, hash, version and the provenance (sample hashes summarised)."""
    rows = [
        ("params", f"{facts['params']:,}"),
        ("size", f"{facts['size_bytes']:,} bytes"),
        ("sha256", facts["sha256"]),
        ("written by", f"legokit {facts['legokit_version']}"),
    ]
    shown = summarized(facts["provenance"])
    return rows + [(f"provenance.{k}", json.dumps(v) if not isinstance(v, str) else v) for k, v in sorted(shown.items())]
