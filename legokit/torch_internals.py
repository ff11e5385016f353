"""Every private torch API and torch file-format detail that legokit relies on, in this one module, so that a torch
upgrade is checked in one place; tests/test_torch_internals.py pins each entry on the installed torch.

Each entry says what it is and the torch versions it was checked against. The accessors of torch's compiler stack
(`scan_operator`, `ts2ep_converter`, `pt2_archive_writer`) import it when called, never when legokit is imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import IO, Any

import torch
from torch._ops import HigherOrderOperator, OpOverloadPacket
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "CONSTANTS_DIR",
    "DTYPE_CODES",
    "DataDependentOutputException",
    "DynamicOutputShapeException",
    "ELEMENT_BYTES",
    "FakeTensor",
    "FakeTensorMode",
    "HigherOrderOperator",
    "LAYOUT_CODES",
    "MEMORY_FORMAT_CODES",
    "MODELS_DIR",
    "OpOverloadPacket",
    "PROGRAM_JSON",
    "PROGRAM_SMALL",
    "RAW_CONSTANT",
    "RAW_WEIGHT",
    "SAFETENSORS_CODES",
    "SAMPLE_INPUTS",
    "SCALAR_TYPE_CODES",
    "STATE_DICT_GLOBALS",
    "STORAGES",
    "STORAGE_RECORD",
    "TORCH_SAVE_PICKLE",
    "TORCH_SAVE_SMALL",
    "TorchDispatchMode",
    "WEIGHTS_DIR",
    "WRITER_RECORDS",
    "op_schema",
    "pt2_archive_writer",
    "scan_operator",
    "tree_flatten",
    "ts2ep_converter",
    "version_counter",
]

# ---- private classes and functions, re-exported above (checked: torch 2.13.0) ----
# HigherOrderOperator (torch._ops): the type of scan/cond, which a dispatch mode sees as `func`; checked 2.13.0
# OpOverloadPacket (torch._ops): what torch.ops.<namespace>.<name> is, with .overloads(); checked 2.13.0
# FakeTensor, FakeTensorMode, DataDependentOutputException, DynamicOutputShapeException
#   (torch._subclasses.fake_tensor): shape-only tensors, and what they raise on value-dependent shapes; checked 2.13.0
# TorchDispatchMode (torch.utils._python_dispatch): the base of a mode that sees every aten call; checked 2.13.0
# tree_flatten (torch.utils._pytree): the leaves of nested outputs and arguments; checked 2.13.0


def scan_operator() -> Callable[..., Any]:
    """torch._higher_order_ops.scan.scan: scan(combine_fn(carry, x) -> (carry, y), init, xs) -> (carry, ys); checked
    2.13.0. Imported when called, since it loads torch's compiler stack."""
    from torch._higher_order_ops.scan import scan

    return scan


def ts2ep_converter() -> type:
    """torch._export.converter.TS2EPConverter: TS2EPConverter(script_module, args).convert() -> ExportedProgram;
    checked 2.13.0. Imported when called (the compiler stack)."""
    from torch._export.converter import TS2EPConverter

    return TS2EPConverter


def pt2_archive_writer(out: IO[bytes]) -> Any:
    """torch.export.pt2_archive._package.PT2ArchiveWriter on `out`: .write_bytes(name, data), .close(); it adds
    WRITER_RECORDS itself; checked 2.13.0. Imported when called (torch.export loads the compiler stack)."""
    from torch.export.pt2_archive._package import PT2ArchiveWriter

    return PT2ArchiveWriter(out)


def op_schema(func: Any) -> Any | None:
    """An operator overload's FunctionSchema (its private `_schema`: .arguments[i].is_out, .returns[i].alias_info),
    None for anything without one (a higher-order operator); checked 2.13.0."""
    return getattr(func, "_schema", None)


def version_counter(tensor: torch.Tensor) -> int:
    """A tensor's private version counter (`Tensor._version`), which every in-place write bumps; checked 2.13.0."""
    return tensor._version


# ---- torch.export's serialized enums (torch._export.serde.schema; checked: torch 2.13.0, schema version 8.20) ----

# ScalarType codes a program's JSON may hold (0 is UNKNOWN)
SCALAR_TYPE_CODES = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 33, 34, 35})
# ScalarType code -> bytes per element, for every dtype a tensor record can hold (not UNKNOWN)
ELEMENT_BYTES: Mapping[int, int] = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 2,
    7: 4,
    8: 8,
    9: 4,
    10: 8,
    11: 16,
    12: 1,
    13: 2,
    28: 2,
    29: 1,
    30: 1,
    31: 1,
    32: 1,
    33: 1,
    34: 4,
    35: 8,
}
# torch dtypes of a legokit file -> their ScalarType codes
DTYPE_CODES: Mapping[torch.dtype, int] = {
    torch.uint8: 1,
    torch.int8: 2,
    torch.int16: 3,
    torch.int32: 4,
    torch.int64: 5,
    torch.float16: 6,
    torch.float32: 7,
    torch.float64: 8,
    torch.complex64: 10,
    torch.bool: 12,
    torch.bfloat16: 13,
}
# the safetensors dtypes of a legokit file -> their ScalarType codes (as in DTYPE_CODES)
SAFETENSORS_CODES: Mapping[str, int] = {
    "U8": 1,
    "I8": 2,
    "I16": 3,
    "I32": 4,
    "I64": 5,
    "F16": 6,
    "F32": 7,
    "F64": 8,
    "C64": 10,
    "BOOL": 12,
    "BF16": 13,
}
# Layout codes legokit accepts: Unknown (torch writes it for some arguments) and Strided; no sparse tensors
LAYOUT_CODES = frozenset({0, 7})
# MemoryFormat codes: Unknown, Contiguous, ChannelsLast, ChannelsLast3d, Preserve
MEMORY_FORMAT_CODES = frozenset(range(5))

# ---- record names of a torch.export.save archive (PT2 archive with raw tensor records: written since pytorch#161520,
# in torch 2.10; checked: torch 2.13.0), below its root folder ----

WEIGHTS_DIR = "data/weights/"  # raw weight records, and the weights config
CONSTANTS_DIR = "data/constants/"  # raw constant-tensor records, and the constants config
MODELS_DIR = "models/"  # one <name>.json per program in the archive
# small records: format marker and version, byte order, and the zip writer's own version records
PROGRAM_SMALL = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")
# the program's JSON, its weights config and its constants config (each fqn -> path_name, use_pickle, tensor_meta)
PROGRAM_JSON = (
    "models/model.json",
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
)
SAMPLE_INPUTS = "data/sample_inputs/model.pt"  # the pickled example inputs
RAW_WEIGHT = re.compile(r"^weight_\d{1,9}$")  # path_name of a raw (unpickled) weight record
RAW_CONSTANT = re.compile(r"^tensor_\d{1,9}$")  # path_name of a raw (unpickled) constant record
WRITER_RECORDS = ".data/"  # prefix of the records torch's zip writer adds on its own

# ---- torch.save's zip format and the pickle globals it names for tensors (checked: torch 2.13.0) ----

TORCH_SAVE_PICKLE = "data.pkl"  # the pickle of the saved object
STORAGE_RECORD = re.compile(r"^data/\d+$")  # one raw storage per record
TORCH_SAVE_SMALL = (
    "byteorder",
    "version",
    ".format_version",
    ".storage_alignment",
    ".data/version",
    ".data/serialization_id",
)
STORAGES = ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
# the globals a state dict's pickle names: its OrderedDict, the tensor and parameter rebuilders, the storage types
STATE_DICT_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        *(("torch", f"{kind}Storage") for kind in STORAGES),
    }
)
