"""Wrapping encoders into LegoBlocks: from a live module, or from a file (torch.export, TorchScript, a state dict,
a Hugging Face model folder).

Every foreign encoder goes the same way: module -> contract (input dtype, padding mask, output, layout) ->
torch.export program, checked at several batch sizes and lengths -> block. Pickled modules are refused unless the
caller trusts the file: unpickling runs whatever code the file names.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from torch import nn

from legokit.artifacts.allowlist import check_torch_save
from legokit.artifacts.format import FORMAT_TAG, KEY_FORMAT, header_of_bytes
from legokit.device import resolve_device
from legokit.encoders import FOREIGN, build_encoder, encoder_class, list_encoders
from legokit.encoders.contract import INPUT_DTYPES, LAYOUTS, MASK_KEYWORDS, Contract
from legokit.encoders.foreign import (
    example_input,
    export_encoder,
    functional,
    load_program,
    probe_contract,
    program_from_torchscript,
    program_input_shape,
    program_module,
    sanitize_program,
)
from legokit.encoders.huggingface import is_hf_folder, load_hf_folder
from legokit.encoders.registry import Encoder
from legokit.errors import ArtifactError, ConfigError, EncoderError, brief
from legokit.io.inputs import open_input, read_input
from legokit.nn.block import Architecture, BlockConfig, EncoderSpec, LegoBlock, format_shape
from legokit.schema import SPEC, check_keys, file_keys
from legokit.tasks import TaskSpec
from legokit.text.spec import TextSpec

EXPORT, TORCHSCRIPT, PICKLE, SAFETENSORS = "torch.export program", "TorchScript archive", "pickle", "safetensors"
HF_FOLDER = "Hugging Face model folder"


def _block_config(
    modality: str,
    encoder: EncoderSpec,
    input_shape: tuple[int | None, ...],
    task: TaskSpec | str,
    settings: Mapping[str, Any],
) -> BlockConfig:
    task = TaskSpec.parse(task) if isinstance(task, str) else task
    settings = {**settings, **({"latent": tuple(settings["latent"])} if "latent" in settings else {})}
    try:
        return BlockConfig(modality, encoder, tuple(input_shape), task, **settings)
    except TypeError as exc:
        raise ConfigError(f"unknown block option: {exc}") from exc


def _check_block(block: LegoBlock, device: torch.device, origin: str) -> LegoBlock:
    """Move to the device and run one forward pass, so a broken encoder fails at wrap time, not later."""
    block = block.to(device).eval()
    config = block.config
    with torch.no_grad():
        out = block(example_input(config.input_shape, dtype=config.input_dtype).to(device))
    if not torch.isfinite(out).all():
        raise EncoderError(f"{origin}: the wrapped block gives non-finite outputs on a zero input")
    return block


@dataclass(frozen=True)
class WrapOptions:
    """How to call a foreign encoder, where legokit should not guess: the input dtype, the padding-mask keyword
    (`auto`: read off forward's signature; `none`: run unpadded groups), the output to read, its layout, and
    whether to export it in train mode (batch statistics and dropout frozen into the program)."""

    input_dtype: str | None = None
    mask: str | None = "auto"
    output: str | int | None = None
    layout: str | None = None
    train_mode: bool = False

    def __post_init__(self) -> None:
        if self.mask not in ("auto", "none", None, *MASK_KEYWORDS):
            raise ConfigError(f"--mask {self.mask!r}: choose auto, none or one of {', '.join(MASK_KEYWORDS)}")
        if self.input_dtype not in (None, *INPUT_DTYPES):
            raise ConfigError(f"--input-dtype {self.input_dtype!r}: choose one of {', '.join(INPUT_DTYPES)}")
        if self.layout not in (None, *LAYOUTS):
            raise ConfigError(f"--layout {self.layout!r}: choose one of {', '.join(LAYOUTS)}")

    @staticmethod
    def parse_output(text: str | None) -> str | int | None:
        """`--output-key last_hidden_state` (a key) or `--output-key 0` (an index)."""
        if text is None or text == "":
            return None
        return int(text) if text.lstrip("-").isdigit() else text


@contextmanager
def _mode(module: nn.Module, train: bool) -> Iterator[nn.Module]:
    """The module in eval mode (or train mode when asked) for the export, restored afterwards."""
    was = module.training
    try:
        module.train(train)
    except NotImplementedError:  # an exported program's module: its mode was fixed when it was exported
        yield module
        return
    try:
        yield module
    finally:
        module.train(was)


def wrap_module(
    module: nn.Module,
    modality: str,
    task: TaskSpec | str,
    input_shape: tuple[int | None, ...],
    latent: tuple[int, int] = BlockConfig.latent,
    depth: int = BlockConfig.depth,
    fft_axes: str = BlockConfig.fft_axes,
    device: str | torch.device = "auto",
    how: WrapOptions = WrapOptions(),
    text: TextSpec | None = None,
    origin: str = "module",
    **options: Any,
) -> LegoBlock:
    """Wrap any nn.Module: it is exported with torch.export (in eval mode unless `how.train_mode`) so that the
    block's file alone rebuilds it. `input_shape` is per sample: (76,) for vectors, (None, 32) for bags of 32-d
    tokens, (3, 32, 32) for images, (None,) for token ids."""
    input_shape = tuple(input_shape)
    mask = None if how.mask == "none" else how.mask
    try:
        with _mode(module, how.train_mode):
            contract = probe_contract(module, input_shape, how.input_dtype, mask, how.output, how.layout)
            program = export_encoder(module, input_shape, contract)
    except EncoderError as exc:
        raise EncoderError(f"{origin}: {exc}") from exc
    block = block_from_program(
        program,
        contract,
        modality,
        task,
        input_shape,
        text,
        origin,
        device,
        latent=latent,
        depth=depth,
        fft_axes=fft_axes,
        **options,
    )
    if how.train_mode:  # dropout drawn at every run: its outputs are not cached (`legokit.cache`)
        block.provenance["exported_in_train_mode"] = True
    return block


def block_from_program(
    program: bytes,
    contract: Contract,
    modality: str,
    task: TaskSpec | str,
    input_shape: tuple[int | None, ...],
    text: TextSpec | None = None,
    origin: str = "encoder",
    device: str | torch.device = "auto",
    **settings: Any,
) -> LegoBlock:
    """A block around a checked program that follows the plain contract (see `encoders.contract`); `settings` are
    the block's (`BlockConfig`: latent, depth, fft_axes, ...)."""
    graph = program_module(program)
    x = example_input(input_shape, dtype=contract.input_dtype)
    with torch.no_grad():
        out = graph(x) if contract.mask_keyword is None else graph(x, torch.ones(x.shape[:2], dtype=torch.bool))
    kwargs = {"mask_keyword": contract.mask_keyword, "output": contract.output, "layout": contract.layout}
    spec = EncoderSpec(FOREIGN, kwargs, int(out.shape[-1]))
    config = _block_config(
        modality, spec, input_shape, task, {"input_dtype": contract.input_dtype, "text": text, **settings}
    )
    block = LegoBlock(config, program=program)
    block.provenance = {"encoder_contract": contract.describe(None in input_shape)}
    return _check_block(block, resolve_device(device), origin)


def wrap_builtin(
    arch: str,
    state_dict: Mapping[str, torch.Tensor] | None,
    modality: str,
    task: TaskSpec | str,
    arch_kwargs: Mapping[str, Any] | None = None,
    input_shape: tuple[int | None, ...] | None = None,
    latent: tuple[int, int] = BlockConfig.latent,
    depth: int = BlockConfig.depth,
    fft_axes: str = BlockConfig.fft_axes,
    device: str | torch.device = "auto",
    origin: str = "encoder",
    **options: Any,
) -> LegoBlock:
    """A block around a built-in encoder, its sizes read off the state dict where --encoder-kwargs leaves them out."""
    cls = cast("type[Encoder]", encoder_class(arch))
    inferred = cls.infer_kwargs(state_dict) if state_dict else {}
    if state_dict and not inferred:
        keys = ", ".join(list(state_dict)[:3])
        raise EncoderError(f"{origin}: state dict does not fit encoder {arch}: its keys ({keys}, ...) are not {arch}'s")
    kwargs = {**inferred, **dict(arch_kwargs or {})}
    if "in_features" not in kwargs:
        if input_shape is None:
            raise ConfigError(f"{origin}: encoder {arch} needs in_features (in --encoder-kwargs) or --input-shape")
        kwargs["in_features"] = input_shape[-1]
    encoder = build_encoder(arch, kwargs)
    if state_dict is not None:
        try:
            result = encoder.load_state_dict(dict(state_dict), strict=False)
        except RuntimeError as exc:  # a tensor of another shape than these sizes make
            first = str(exc).strip().splitlines()[-1].strip()[:200]
            raise EncoderError(f"{origin}: state dict does not fit encoder {arch} {kwargs}: {first}") from exc
        problems = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
        if problems:
            raise EncoderError(f"{origin}: state dict does not fit encoder {arch} {kwargs}: {', '.join(problems[:4])}")
    if input_shape is None:
        input_shape = (None, kwargs["in_features"]) if getattr(cls, "token_input", False) else (kwargs["in_features"],)
    if input_shape[-1] != kwargs["in_features"]:
        raise ConfigError(
            f"{origin}: input shape {format_shape(input_shape)} ends in {input_shape[-1]} features, "
            f"but the encoder takes {kwargs['in_features']}"
        )
    spec = EncoderSpec(arch, kwargs, cast(Encoder, encoder).out_dim)
    config = _block_config(
        modality, spec, input_shape, task, {"latent": latent, "depth": depth, "fft_axes": fft_axes, **options}
    )
    block = _check_block(LegoBlock(config, encoder=encoder), resolve_device(device), origin)
    if state_dict is not None:  # pretrained weights: frozen by default, the encoder's outputs cached
        block.provenance = {"wrapped": arch}
    return block


def sniff(path: Path) -> str:
    """What kind of encoder this is, from its bytes (never from its name); anything else is a one-line error
    that says what the file looks like."""
    if path.is_dir():
        if is_hf_folder(path):
            return HF_FOLDER
        raise EncoderError(f"{path}: a folder without config.json; legokit wraps Hugging Face model folders")
    with open_input(path, EncoderError) as handle:
        head = handle.read(512)
    if not head:
        raise EncoderError(f"{path}: empty file")
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(read_input(path, EncoderError))) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise EncoderError(f"{path}: corrupt zip archive") from exc
        if any(n.endswith("archive_format") for n in names):
            return EXPORT
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return TORCHSCRIPT
        if any(n.endswith("data.pkl") for n in names):
            return PICKLE
        raise EncoderError(f"{path}: a zip archive that is neither a torch.save file nor a torch.export program")
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < os.path.getsize(path):
        return SAFETENSORS
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return PICKLE
    raise EncoderError(
        f"{path}: {_looks_like(head)}, not an encoder: give a torch.export program (.pt2), a "
        "TorchScript archive, a state dict (.pt, .safetensors) or a Hugging Face model folder"
    )


def _looks_like(head: bytes) -> str:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"an unknown binary format (starts with {head[:8].hex(' ')})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    kind = "a CSV file" if first.count(",") >= 1 else "a JSON file" if first[:1] in "{[" else "a text file"
    return f"{kind} (starts {first[:40]!r})"


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
    """A torch.save file: with no trust, its bytes must pass the allowlist (tensors only) before torch.load's own
    weights-only reader sees them; read once, so the checked bytes are the loaded bytes."""
    data = read_input(path, EncoderError)
    if not trust_pickle:
        if data[:4] != b"PK\x03\x04":
            raise EncoderError(
                f"{path}: a pickle in the legacy torch.save format (before PyTorch 1.6), which legokit "
                "does not read: save it again with torch.save, or pass --trust-pickle if you trust it"
            )
        check_torch_save(data, str(path))
    safe = not trust_pickle  # untrusted bytes passed check_torch_save above; --trust-pickle is the user's own choice
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=safe)  # checked: allowlist or trusted
    except (ImportError, AttributeError) as exc:
        raise EncoderError(
            f"{path}: the pickled object needs code that cannot be imported here "
            f"({brief(exc, 160)}); run where its class is importable"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch's reader fails on foreign bytes with many types
        raise EncoderError(f"{path}: not a readable torch file ({brief(exc, 160)})") from exc
    if isinstance(obj, nn.Module):
        return obj
    state = _as_state_dict(obj)
    if state is None:
        raise EncoderError(f"{path}: holds a {type(obj).__name__}, not a state dict or a module")
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    data = read_input(path, EncoderError)
    try:
        if header_of_bytes(path, data).metadata.get(KEY_FORMAT) == FORMAT_TAG:
            raise EncoderError(f"{path}: is already a legokit artifact, not an encoder")
        return dict(sorted(safetensors_load(data).items()))  # by name, as safetensors' load_file gives them
    except (SafetensorError, OSError, ValueError, ArtifactError) as exc:
        raise EncoderError(f"{path}: unreadable safetensors file ({brief(exc, 160)})") from exc


def default_output(encoder: str | os.PathLike[str]) -> Path:
    """Where `legokit wrap` writes when no -o is given: `<stem>.st` next to the encoder file (or folder)."""
    path = Path(encoder)
    return path.parent / f"{path.name if path.is_dir() else path.stem}.st"


# wrap_file's keywords before the architecture became one `Architecture`: accepted for one release, with a warning
OLD_KEYWORDS = {"arch": "encoder", "arch_kwargs": "encoder_kwargs"}


def _old_keywords(
    old: Mapping[str, Any], encoder: str | None, encoder_kwargs: Mapping[str, Any] | None, architecture: Architecture
) -> tuple[str | None, Mapping[str, Any] | None, Architecture]:
    """The encoder, its kwargs and the architecture with wrap_file's deprecated keywords (`arch`, `arch_kwargs`, and
    `latent`, `depth`, ... one by one) folded in, each with a DeprecationWarning naming the new spelling."""
    settings = file_keys(Architecture, SPEC)
    check_keys(old, (*OLD_KEYWORDS, *settings), "wrap_file: keyword ")
    for key in old:
        new = OLD_KEYWORDS.get(key, f"architecture=Architecture({key}=...)")
        warnings.warn(f"wrap_file({key}=...) is deprecated: use {new}", DeprecationWarning, stacklevel=3)
    encoder = old.get("arch", encoder)
    encoder_kwargs = old.get("arch_kwargs", encoder_kwargs)
    changed: dict[str, Any] = {k: (tuple(v) if k == "latent" else v) for k, v in old.items() if k in settings}
    return encoder, encoder_kwargs, replace(architecture, **changed) if changed else architecture


def wrap_file(
    path: str | os.PathLike[str],
    modality: str,
    task: TaskSpec | str,
    input_shape: tuple[int | None, ...] | None = None,
    encoder: str | None = None,
    encoder_kwargs: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    architecture: Architecture = Architecture(),
    device: str | torch.device = "auto",
    how: WrapOptions = WrapOptions(),
    **deprecated: Any,
) -> LegoBlock:
    """Wrap an encoder file: a torch.export program (.pt2), a state dict of the built-in `encoder`, a local Hugging
    Face model folder, or, with `trust_pickle`, a pickled module or a TorchScript archive (both run code from the
    file). `architecture`: the block's latent, depth, ... (`Architecture`); `deprecated`: the old `arch`,
    `arch_kwargs`, `latent`, `depth`, ... keywords, for one release."""
    if not isinstance(architecture, Architecture):
        raise ConfigError(
            f"architecture must be an Architecture, got {type(architecture).__name__} (latent, depth, ... go inside it)"
        )
    encoder, encoder_kwargs, architecture = _old_keywords(deprecated, encoder, encoder_kwargs, architecture)
    path = Path(path)
    if not path.exists():
        raise EncoderError(f"{path}: no such file")
    if not path.is_file() and not path.is_dir():
        raise EncoderError(f"{path}: not a regular file (a pipe or a device)")
    kind = sniff(path)
    common = dict(device=device, origin=str(path), **architecture.settings())
    if kind in (EXPORT, TORCHSCRIPT, HF_FOLDER) and encoder is not None:
        raise ConfigError(f"{path}: is a {kind}; --encoder is only for state dicts")
    if kind == HF_FOLDER:
        found = load_hf_folder(path)
        if input_shape is not None and tuple(input_shape) != found.input_shape:
            raise ConfigError(
                f"{path}: --input-shape {format_shape(input_shape)} disagrees with the model's "
                f"{format_shape(found.input_shape)}"
            )
        dtype = WrapOptions(found.input_dtype, how.mask, how.output, how.layout, how.train_mode)
        return wrap_module(found.module, modality, task, found.input_shape, how=dtype, text=found.text, **common)
    if kind == EXPORT:
        program = functional(load_program(sanitize_program(read_input(path, EncoderError), True), in_place=True))
        input_shape = _agreed_shape(path, input_shape, program_input_shape(program))
        how = replace(how, mask=_program_mask(path, list(program.graph_signature.user_inputs), how.mask))
        return wrap_module(program_module(program, "the program"), modality, task, input_shape, how=how, **common)
    if kind == TORCHSCRIPT:
        if not trust_pickle:
            raise EncoderError(
                f"{path}: a TorchScript archive; loading one compiles its code, which can call any "
                "operator (file access included). Export the module with torch.export instead, or pass "
                "--trust-pickle if you trust the file"
            )
        if input_shape is None:
            raise ConfigError(f"{path}: a TorchScript archive does not record its input shape; give --input-shape")
        data = read_input(path, EncoderError)
        try:
            scripted = torch.jit.load(io.BytesIO(data), map_location="cpu")  # checked: only with --trust-pickle
        except Exception as exc:  # noqa: BLE001 - the TorchScript reader fails with many types
            raise EncoderError(f"{path}: corrupt TorchScript archive ({brief(exc, 160)})") from exc
        return wrap_module(
            program_from_torchscript(scripted, input_shape), modality, task, input_shape, how=how, **common
        )
    state = _read_safetensors(path) if kind == SAFETENSORS else _read_pickle(path, trust_pickle)
    if isinstance(state, nn.Module):
        if input_shape is None:
            raise ConfigError(f"{path}: a pickled module does not record its input shape; give --input-shape")
        return wrap_module(state, modality, task, input_shape, how=how, **common)
    if encoder is None:
        raise ConfigError(
            f"{path}: is a state dict; name its built-in encoder with --encoder "
            f"({', '.join(list_encoders())}), or save the module itself (torch.export, TorchScript, or a "
            "Hugging Face folder)"
        )
    return wrap_builtin(encoder, state, modality, task, encoder_kwargs, input_shape, **common)


def _program_mask(path: Path, names: list[str], asked: str | None) -> str | None:
    """The convention of a .pt2 program's second input, its padding mask: the --mask keyword when given, else the
    input's own name when it is one legokit knows."""
    if len(names) == 1:
        if asked not in ("auto", "none", None):
            raise ConfigError(f"{path}: --mask {asked}: the program takes no mask input (its inputs: {names[0]})")
        return "none"
    if len(names) > 2:
        raise EncoderError(
            f"{path}: the program takes inputs {', '.join(names)}; legokit gives an encoder its input "
            "and, optionally, a padding mask"
        )
    if asked == "none":
        raise ConfigError(
            f"{path}: --mask none: the program takes a second input, {names[1]}, and needs the mask there"
        )
    if asked not in ("auto", None):
        return asked
    if names[1] not in MASK_KEYWORDS:
        raise ConfigError(
            f"{path}: the program's second input is {names[1]}; say which convention it takes with "
            f"--mask ({', '.join(f'{k}: {v}' for k, v in MASK_KEYWORDS.items())})"
        )
    return names[1]


def _agreed_shape(
    path: Path, given: tuple[int | None, ...] | None, traced: tuple[int | None, ...] | None
) -> tuple[int | None, ...]:
    """The input shape from --input-shape and the program's own record, which must agree where both are fixed."""
    if given is None:
        if traced is None:
            raise ConfigError(f"{path}: cannot infer the input shape; give --input-shape (e.g. 76 or ?x32)")
        return traced
    if traced is not None and len(traced) == len(given):
        for mine, theirs in zip(given, traced):
            if theirs is not None and mine != theirs:
                raise ConfigError(
                    f"{path}: --input-shape {format_shape(given)} disagrees with the program's {format_shape(traced)}"
                )
    return tuple(given)
