"""Foreign encoders kept as `torch.export` programs: made from a module or TorchScript, stored as bytes, pickle-free.

A program is a PT2 archive whose parts are JSON and raw tensor bytes only: `sanitize_program` drops the pickled
sample inputs and refuses pickled weights or constants, and `load_program` refuses any archive that is not so.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings

import torch
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.export.pt2_archive._package import PT2ArchiveReader, PT2ArchiveWriter

from ..errors import EncoderError

_CONFIG_SUFFIXES = ("_weights_config.json", "_constants_config.json")


def _archive_records(program: bytes) -> dict[str, bytes]:
    reader = PT2ArchiveReader(io.BytesIO(program))
    return {name: reader.read_bytes(name) for name in reader.get_file_names()}


def _pickled_payloads(records: dict[str, bytes]) -> list[str]:
    """Names of the weights/constants an archive stores as pickles (and so could not be loaded pickle-free)."""
    found = []
    for name, data in records.items():
        if name.endswith(_CONFIG_SUFFIXES):
            for fqn, meta in json.loads(data)["config"].items():
                if meta.get("use_pickle", True):
                    found.append(fqn)
    return found


def sanitize_program(program: bytes) -> bytes:
    """Rewrite a PT2 archive so that loading it unpickles nothing: empty sample inputs, no pickled tensors."""
    records = _archive_records(program)
    pickled = _pickled_payloads(records)
    if pickled:
        raise EncoderError(f"the exported program stores {', '.join(pickled)} as pickles; legokit keeps no pickles")
    out = io.BytesIO()
    writer = PT2ArchiveWriter(out)
    for name, data in records.items():
        if name.startswith(".data/"):
            continue  # the writer adds its own version records
        writer.write_bytes(name, b"" if name.startswith("data/sample_inputs/") else data)
    writer.close()
    return out.getvalue()


def load_program(program: bytes) -> ExportedProgram:
    """Deserialize a sanitized program; anything else (corrupt bytes, pickled parts) is an EncoderError."""
    try:
        records = _archive_records(program)
        if any(name.startswith("data/sample_inputs/") and data for name, data in records.items()):
            raise EncoderError("the stored program carries pickled sample inputs")
        if _pickled_payloads(records):
            raise EncoderError("the stored program carries pickled tensors")
        return torch.export.load(io.BytesIO(program))
    except EncoderError:
        raise
    # a corrupt archive can fail anywhere inside torch's deserializer, with any exception type
    except Exception as exc:  # noqa: BLE001
        raise EncoderError(f"the stored encoder program cannot be read ({type(exc).__name__})") from None


def program_sha256(program: bytes) -> str:
    return hashlib.sha256(program).hexdigest()


def example_input(input_shape: tuple[int | None, ...], batch: int = 2, tokens: int = 3) -> torch.Tensor:
    """A zero input of the given per-sample shape, with `tokens` for each variable (None) dimension."""
    return torch.zeros(batch, *(tokens if d is None else d for d in input_shape))


def _dynamic_shapes(input_shape: tuple[int | None, ...]) -> tuple[dict[int, object]]:
    dims: dict[int, object] = {0: Dim.DYNAMIC}
    dims.update({i + 1: Dim.DYNAMIC for i, d in enumerate(input_shape) if d is None})
    return (dims,)


def export_module(module: nn.Module, input_shape: tuple[int | None, ...]) -> bytes:
    """Export a user's module (in its current train/eval mode) with a dynamic batch, as sanitized program bytes."""
    try:
        program = torch.export.export(module, (example_input(input_shape),), dynamic_shapes=_dynamic_shapes(input_shape))
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; the user needs one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EncoderError(f"torch.export could not trace the encoder: {first}") from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return sanitize_program(buffer.getvalue())


def program_from_torchscript(scripted: torch.jit.ScriptModule, input_shape: tuple[int | None, ...]) -> bytes:
    """Convert a TorchScript module to a torch.export program (TorchScript itself is deprecated upstream)."""
    from torch._export.converter import TS2EPConverter

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = TS2EPConverter(scripted, (example_input(input_shape),)).convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        raise EncoderError(f"the TorchScript module could not be converted to torch.export: {exc}") from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return sanitize_program(buffer.getvalue())


def program_input_shape(program: ExportedProgram) -> tuple[int | None, ...] | None:
    """Per-sample input shape read off a program's first user input; dynamic dimensions become None."""
    user_inputs = program.graph_signature.user_inputs
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta.get("val")
            if value is None:
                return None
            return tuple(d if isinstance(d, int) else None for d in value.shape[1:])
    return None


class ExportedEncoder(nn.Module):
    """A foreign encoder rebuilt from program bytes alone: no user class, no pickle, parameters trainable.

    An exported graph fixes its train/eval behaviour (dropout, batch-norm) when it is exported, so
    `train()` here changes no layer inside it.
    """

    token_input = None
    keeps_tokens = False
    accepts_mask = False

    def __init__(self, program: bytes, out_dim: int):
        super().__init__()
        self.program = program
        self.out_dim = out_dim
        self.graph = load_program(program).module()

    def train(self, mode: bool = True) -> "ExportedEncoder":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.graph(x)
