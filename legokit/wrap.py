"""Wrapping encoders into LegoBlocks: from a live module, or from a file (torch.export, TorchScript, state dict).

Pickled modules are refused unless the caller trusts the file: unpickling runs whatever code the file names.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .artifact import KEY_FORMAT, FORMAT_TAG
from .block import BlockConfig, EncoderSpec, LegoBlock, format_shape
from .device import resolve_device
from .encoders import FOREIGN, ExportedEncoder, build_encoder, encoder_class
from .encoders.foreign import example_input, export_module, load_program, program_from_torchscript, program_input_shape
from .encoders.foreign import sanitize_program
from .errors import ConfigError, EncoderError
from .tasks import TaskSpec

EXPORT, TORCHSCRIPT, PICKLE, SAFETENSORS = "torch.export program", "TorchScript archive", "pickle", "safetensors"


def _block_config(
    modality: str,
    encoder: EncoderSpec,
    input_shape: tuple[int | None, ...],
    task: TaskSpec | str,
    latent: tuple[int, int],
    depth: int,
    fft_axes: str,
    options: Mapping[str, Any],
) -> BlockConfig:
    task = TaskSpec.parse(task) if isinstance(task, str) else task
    return BlockConfig(modality, encoder, tuple(input_shape), task, tuple(latent), depth, fft_axes, **options)


def _measure_out_dim(graph: nn.Module, input_shape: tuple[int | None, ...], origin: str) -> int:
    """The token width a foreign encoder emits, from one forward pass on a zero input."""
    with torch.no_grad():
        try:
            out = graph(example_input(input_shape))
        except Exception as exc:  # noqa: BLE001 - a user's graph can raise anything on a wrong input shape
            raise EncoderError(
                f"{origin}: the encoder fails on an input of shape (batch, {format_shape(input_shape)}): "
                f"{' '.join(str(exc).split())[:200]}"
            ) from None
    if not isinstance(out, torch.Tensor) or out.dim() not in (2, 3):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise EncoderError(f"{origin}: the encoder must return (b, e) or (b, n, e) tokens, got {shape}")
    return int(out.shape[-1])


def _check_block(block: LegoBlock, device: torch.device, origin: str) -> LegoBlock:
    """Move to the device and run one forward pass, so a broken encoder fails at wrap time, not later."""
    block = block.to(device).eval()
    with torch.no_grad():
        out = block(example_input(block.config.input_shape).to(device))
    if not torch.isfinite(out).all():
        raise EncoderError(f"{origin}: the wrapped block gives non-finite outputs on a zero input")
    return block


def block_from_program(
    program: bytes,
    modality: str,
    task: TaskSpec | str,
    input_shape: tuple[int | None, ...] | None = None,
    latent: tuple[int, int] = (64, 64),
    depth: int = 2,
    fft_axes: str = "both",
    device: str | torch.device = "auto",
    origin: str = "encoder",
    **options: Any,
) -> LegoBlock:
    """A block around sanitized torch.export program bytes; the input shape is read off the program if not given."""
    graph_shape = program_input_shape(load_program(program))
    if input_shape is None:
        if graph_shape is None:
            raise ConfigError(f"{origin}: cannot infer the input shape; give --input-shape (e.g. 76 or ?x32)")
        input_shape = graph_shape
    elif graph_shape is not None and len(graph_shape) == len(input_shape):
        for given, traced in zip(input_shape, graph_shape):
            if traced is not None and given != traced:
                raise ConfigError(
                    f"{origin}: --input-shape {format_shape(input_shape)} disagrees with the program's {format_shape(graph_shape)}"
                )
    encoder = ExportedEncoder(program, out_dim=1)
    out_dim = _measure_out_dim(encoder.graph, input_shape, origin)
    encoder.out_dim = out_dim
    spec = EncoderSpec(FOREIGN, {}, out_dim)
    config = _block_config(modality, spec, input_shape, task, latent, depth, fft_axes, options)
    return _check_block(LegoBlock(config, encoder=encoder), resolve_device(device), origin)


def wrap_module(
    module: nn.Module,
    modality: str,
    task: TaskSpec | str,
    input_shape: tuple[int | None, ...],
    latent: tuple[int, int] = (64, 64),
    depth: int = 2,
    fft_axes: str = "both",
    device: str | torch.device = "auto",
    **options: Any,
) -> LegoBlock:
    """Wrap any user nn.Module: it is exported with torch.export (in its current train/eval mode) so that the block's
    file alone rebuilds it. `input_shape` is per sample: (76,) for vectors, (None, 32) for bags of 32-d tokens."""
    program = export_module(module.cpu(), tuple(input_shape))
    return block_from_program(program, modality, task, tuple(input_shape), latent, depth, fft_axes, device, "module", **options)


def wrap_builtin(
    arch: str,
    state_dict: Mapping[str, torch.Tensor] | None,
    modality: str,
    task: TaskSpec | str,
    arch_kwargs: Mapping[str, Any] | None = None,
    input_shape: tuple[int | None, ...] | None = None,
    latent: tuple[int, int] = (64, 64),
    depth: int = 2,
    fft_axes: str = "both",
    device: str | torch.device = "auto",
    origin: str = "encoder",
    **options: Any,
) -> LegoBlock:
    """A block around a built-in encoder, its sizes read off the state dict where --arch-kwargs leaves them out."""
    cls = encoder_class(arch)
    inferred = cls.infer_kwargs(state_dict) if state_dict else {}
    if state_dict and not inferred:
        keys = ", ".join(list(state_dict)[:3])
        raise EncoderError(f"{origin}: state dict does not fit encoder {arch}: its keys ({keys}, ...) are not {arch}'s")
    kwargs = {**inferred, **dict(arch_kwargs or {})}
    if "in_features" not in kwargs:
        if input_shape is None:
            raise ConfigError(f"{origin}: encoder {arch} needs in_features (in --arch-kwargs) or --input-shape")
        kwargs["in_features"] = input_shape[-1]
    encoder = build_encoder(arch, kwargs)
    if state_dict is not None:
        result = encoder.load_state_dict(dict(state_dict), strict=False)
        problems = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
        if problems:
            raise EncoderError(f"{origin}: state dict does not fit encoder {arch} {kwargs}: {', '.join(problems[:4])}")
    if input_shape is None:
        input_shape = (None, kwargs["in_features"]) if cls.token_input else (kwargs["in_features"],)
    if input_shape[-1] != kwargs["in_features"]:
        raise ConfigError(f"{origin}: input shape {format_shape(input_shape)} ends in {input_shape[-1]} features, "
                          f"but the encoder takes {kwargs['in_features']}")
    spec = EncoderSpec(arch, kwargs, encoder.out_dim)
    config = _block_config(modality, spec, input_shape, task, latent, depth, fft_axes, options)
    return _check_block(LegoBlock(config, encoder=encoder), resolve_device(device), origin)


def sniff(path: Path) -> str:
    """What kind of encoder file this is, from its bytes (never from its name)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(path).namelist()
        except zipfile.BadZipFile:
            raise EncoderError(f"{path}: corrupt zip archive") from None
        if any(n.endswith("archive_format") for n in names):
            return EXPORT
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return TORCHSCRIPT
        return PICKLE
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < os.path.getsize(path):
        return SAFETENSORS
    return PICKLE


def _as_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """A mapping of name -> tensor, also when nested under the usual 'state_dict' or 'model' checkpoint keys."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
    return None


def _read_pickle(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor] | nn.Module:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise EncoderError(
                f"{path}: a pickled Python object (e.g. torch.save(model)); unpickling runs code named in the file. "
                "Save a state dict, TorchScript or torch.export program instead, or pass --trust-pickle if you trust it"
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise EncoderError(f"{path}: not a readable torch file ({' '.join(str(exc).split())[:160]})") from None
    if isinstance(obj, nn.Module):
        return obj
    state = _as_state_dict(obj)
    if state is None:
        raise EncoderError(f"{path}: holds a {type(obj).__name__}, not a state dict or a module")
    return state


def wrap_file(
    path: str | os.PathLike[str],
    modality: str,
    task: TaskSpec | str,
    input_shape: tuple[int | None, ...] | None = None,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    latent: tuple[int, int] = (64, 64),
    depth: int = 2,
    fft_axes: str = "both",
    device: str | torch.device = "auto",
    **options: Any,
) -> LegoBlock:
    """Wrap an encoder file: a torch.export program (.pt2), a TorchScript archive, or a state dict for `arch`."""
    path = Path(path)
    if not path.is_file():
        raise EncoderError(f"{path}: no such file")
    kind = sniff(path)
    common = dict(latent=latent, depth=depth, fft_axes=fft_axes, device=device, origin=str(path), **options)
    if kind in (EXPORT, TORCHSCRIPT) and arch is not None:
        raise ConfigError(f"{path}: is a {kind}; --arch is only for state dicts")
    if kind == EXPORT:
        return block_from_program(sanitize_program(path.read_bytes()), modality, task, input_shape, **common)
    if kind == TORCHSCRIPT:
        if input_shape is None:
            raise ConfigError(f"{path}: a TorchScript archive does not record its input shape; give --input-shape")
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            raise EncoderError(f"{path}: corrupt TorchScript archive ({' '.join(str(exc).split())[:160]})") from None
        return block_from_program(program_from_torchscript(scripted, input_shape), modality, task, input_shape, **common)
    if kind == SAFETENSORS:
        try:
            state: dict[str, torch.Tensor] | nn.Module = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise EncoderError(f"{path}: unreadable safetensors file ({exc})") from None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get(KEY_FORMAT) == FORMAT_TAG:
                raise EncoderError(f"{path}: is already a legokit artifact, not an encoder")
    else:
        state = _read_pickle(path, trust_pickle)
    if isinstance(state, nn.Module):
        if input_shape is None:
            raise ConfigError(f"{path}: a pickled module does not record its input shape; give --input-shape")
        return block_from_program(export_module(state.eval(), input_shape), modality, task, input_shape, **common)
    if arch is None:
        raise ConfigError(f"{path}: is a state dict; name its architecture with --arch (snn, abmil or mlp)")
    return wrap_builtin(arch, state, modality, task, arch_kwargs, input_shape, **common)
