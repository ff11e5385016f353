"""Pins, on the installed torch, each private torch API and file format that legokit relies on (all of them in
legokit.torch_internals): a torch upgrade that changes one fails here, by name, rather than inside a user's file."""

from __future__ import annotations

import ast
import io
import json
import pickletools
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version
from safetensors.torch import save as safetensors_save
from torch import nn

import legokit
from legokit import torch_internals as ti
from legokit.artifacts.allowlist import SAFE_OPCODES, check_torch_save, program_records
from legokit.artifacts.program_schema import HIGHER_ORDER

PACKAGE = Path(legokit.__file__).parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"
# storage type name (torch.<kind>Storage in a pickle) -> the dtype whose tensors torch.save writes with it
STORAGE_DTYPES = {
    "Double": torch.float64,
    "Float": torch.float32,
    "Half": torch.float16,
    "BFloat16": torch.bfloat16,
    "Long": torch.int64,
    "Int": torch.int32,
    "Short": torch.int16,
    "Char": torch.int8,
    "Byte": torch.uint8,
    "Bool": torch.bool,
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _Tiny(nn.Module):
    """A linear layer, a buffer of every dtype legokit names, and one tensor constant (not a buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        for dtype in ti.DTYPE_CODES:
            self.register_buffer(f"b_{_dtype_name(dtype)}", torch.zeros(2, dtype=dtype))
        self.constant = torch.ones(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.constant


@pytest.fixture(scope="module")
def saved() -> tuple[bytes, torch.export.ExportedProgram]:
    """The bytes torch.export.save writes for `_Tiny`, made here, and the program they hold."""
    torch.manual_seed(0)
    program = torch.export.export(_Tiny(), (torch.randn(4, 3),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue(), program


def _records(data: bytes) -> dict[str, zipfile.ZipInfo]:
    """A zip archive's entries by name below its one root folder."""
    entries = zipfile.ZipFile(io.BytesIO(data)).infolist()
    roots = {e.filename.split("/", 1)[0] for e in entries}
    assert len(roots) == 1, roots
    return {e.filename.split("/", 1)[1]: e for e in entries}


def _read(data: bytes, name: str) -> bytes:
    return zipfile.ZipFile(io.BytesIO(data)).read(_records(data)[name].filename)


# --- torch.export's serialized dtype, layout and memory-format codes -------------------------------------------------


def test_the_dtype_codes_are_those_torch_export_writes_for_each_dtype(saved):
    data, _ = saved
    config = json.loads(_read(data, ti.PROGRAM_JSON[1]))["config"]
    records = _records(data)
    for dtype, code in ti.DTYPE_CODES.items():
        meta = config[f"b_{_dtype_name(dtype)}"]
        assert meta["tensor_meta"]["dtype"] == code, dtype
        # the record of a 2-element tensor is 2 elements of ELEMENT_BYTES[code] each
        assert records[ti.WEIGHTS_DIR + meta["path_name"]].file_size == 2 * ti.ELEMENT_BYTES[code], dtype


def test_the_serialized_enum_tables_are_torchs_own():
    from torch._export.serde import schema, serialize

    assert {int(member.value) for member in schema.ScalarType} == ti.SCALAR_TYPE_CODES
    assert set(ti.ELEMENT_BYTES) == ti.SCALAR_TYPE_CODES - {int(schema.ScalarType.UNKNOWN.value)}
    to_dtype = {int(code): dtype for code, dtype in serialize._SERIALIZE_TO_TORCH_DTYPE.items()}
    for code, size in ti.ELEMENT_BYTES.items():
        assert to_dtype[code].itemsize == size, (code, to_dtype[code])
    for dtype, code in ti.DTYPE_CODES.items():
        assert to_dtype[code] == dtype
    assert {int(schema.Layout.Unknown.value), int(schema.Layout.Strided.value)} == ti.LAYOUT_CODES
    assert {int(member.value) for member in schema.MemoryFormat} == ti.MEMORY_FORMAT_CODES


def test_the_safetensors_names_map_to_the_codes_of_the_dtypes_safetensors_writes_them_for():
    seen = {}
    for dtype, code in ti.DTYPE_CODES.items():
        data = safetensors_save({"t": torch.zeros(1, dtype=dtype)})
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        seen[header["t"]["dtype"]] = code
    assert dict(ti.SAFETENSORS_CODES) == seen


# --- the records of a torch.export.save archive ---------------------------------------------------------------------


def test_a_freshly_saved_program_holds_exactly_the_records_the_allowlist_names(saved):
    data, program = saved
    records = _records(data)
    weights = json.loads(_read(data, ti.PROGRAM_JSON[1]))["config"]
    constants = json.loads(_read(data, ti.PROGRAM_JSON[2]))["config"]
    assert set(weights) == set(program.state_dict) and set(constants) == {"constant"}
    for table, pattern in ((weights, ti.RAW_WEIGHT), (constants, ti.RAW_CONSTANT)):
        for fqn, meta in table.items():
            assert meta["use_pickle"] is False and pattern.match(meta["path_name"]), (fqn, meta["path_name"])
    expected = {
        *ti.PROGRAM_SMALL,
        *ti.PROGRAM_JSON,
        ti.SAMPLE_INPUTS,
        *(ti.WEIGHTS_DIR + m["path_name"] for m in weights.values()),
        *(ti.CONSTANTS_DIR + m["path_name"] for m in constants.values()),
    }
    assert set(records) == expected
    assert all(e.compress_type == zipfile.ZIP_STORED for e in records.values())
    assert [n for n in records if n.startswith(ti.MODELS_DIR)] == [ti.PROGRAM_JSON[0]]
    assert set(program_records(data, strict=False).data) == expected  # and the allowlist passes it whole


def test_the_record_names_are_torchs_archive_constants():
    from torch.export.pt2_archive import constants

    assert (ti.WEIGHTS_DIR, ti.CONSTANTS_DIR, ti.MODELS_DIR) == (
        constants.WEIGHTS_DIR,
        constants.CONSTANTS_DIR,
        constants.MODELS_DIR,
    )
    assert (
        constants.MODELS_FILENAME_FORMAT.format("model"),
        constants.WEIGHTS_CONFIG_FILENAME_FORMAT.format("model"),
        constants.CONSTANTS_CONFIG_FILENAME_FORMAT.format("model"),
    ) == ti.PROGRAM_JSON
    assert constants.SAMPLE_INPUTS_FILENAME_FORMAT.format("model") == ti.SAMPLE_INPUTS
    assert ti.PROGRAM_SMALL[:2] == (constants.ARCHIVE_FORMAT_PATH, constants.ARCHIVE_VERSION_PATH)
    assert ti.RAW_WEIGHT.match(f"{constants.WEIGHT_FILENAME_PREFIX}12")
    assert ti.RAW_CONSTANT.match(f"{constants.TENSOR_CONSTANT_FILENAME_PREFIX}3")


def test_torchs_archive_writer_adds_its_own_version_records_and_torch_loads_what_it_wrote(saved):
    data, program = saved
    out = io.BytesIO()
    writer = ti.pt2_archive_writer(out)
    for name in _records(data):
        if not name.startswith(ti.WRITER_RECORDS):
            writer.write_bytes(name, _read(data, name))
    writer.close()
    written = _records(out.getvalue())
    assert {n for n in written if n.startswith(ti.WRITER_RECORDS)} == {".data/version", ".data/serialization_id"}
    x = torch.randn(4, 3)
    assert torch.equal(torch.export.load(io.BytesIO(out.getvalue())).module()(x), program.module()(x))


# --- torch.save's format and the pickle globals it names -----------------------------------------------------------


def test_a_torch_saved_state_dict_names_exactly_the_allowlisted_globals_with_allowed_opcodes():
    assert set(STORAGE_DTYPES) == set(ti.STORAGES)
    state = OrderedDict((kind, torch.zeros(2, dtype=dtype)) for kind, dtype in STORAGE_DTYPES.items())
    state["parameter"] = nn.Parameter(torch.ones(2))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    records = _records(data)
    assert all(n == ti.TORCH_SAVE_PICKLE or n in ti.TORCH_SAVE_SMALL or ti.STORAGE_RECORD.match(n) for n in records)
    names, found = set(), set()
    for opcode, argument, _ in pickletools.genops(_read(data, ti.TORCH_SAVE_PICKLE)):
        names.add(opcode.name)
        if opcode.name == "GLOBAL":
            module, _, name = str(argument).partition(" ")
            found.add((module, name))
    assert names <= SAFE_OPCODES, names - SAFE_OPCODES
    assert found == ti.STATE_DICT_GLOBALS
    check_torch_save(data, "a state dict torch.save wrote")  # the allowlist passes it


# --- scan, the TorchScript converter, fake tensors and dispatch ----------------------------------------------------


def test_scan_computes_what_a_python_loop_computes():
    scan = ti.scan_operator()
    torch.manual_seed(0)
    w, h0, xs = torch.randn(3, 3), torch.zeros(2, 3), torch.randn(5, 2, 3)

    def step(h: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(x + h @ w)
        return h, h.clone()

    last, outputs = scan(step, h0, xs)
    h, expected = h0, []
    for x in xs:
        h, y = step(h, x)
        expected.append(y)
    assert torch.allclose(last, h) and torch.allclose(outputs, torch.stack(expected))


def test_the_higher_order_operators_legokit_allows_are_higher_order_operators_of_those_names():
    for name in HIGHER_ORDER:
        operator = getattr(torch.ops.higher_order, name)
        assert isinstance(operator, ti.HigherOrderOperator) and operator.__name__ == name
        assert ti.op_schema(operator) is None  # cost.py counts their bodies instead of reading a schema


def test_the_torchscript_converter_turns_a_scripted_module_into_an_equal_program():
    torch.manual_seed(0)
    scripted, x = torch.jit.script(nn.Linear(3, 2).eval()), torch.randn(4, 3)
    program = ti.ts2ep_converter()(scripted, (x,)).convert()
    assert isinstance(program, torch.export.ExportedProgram)
    assert torch.allclose(program.module()(x), scripted(x))


def test_fake_tensors_refuse_value_dependent_shapes_with_the_exceptions_legokit_catches():
    with ti.FakeTensorMode() as mode:
        x = mode.from_tensor(torch.tensor([0, 1, 2]))
        assert isinstance(x, ti.FakeTensor) and x.shape == (3,)
        with pytest.raises(ti.DynamicOutputShapeException):
            torch.nonzero(x)
        with pytest.raises(ti.DataDependentOutputException):
            x.sum().item()


def test_a_dispatch_mode_sees_aten_overloads_with_their_packets_and_schemas():
    seen = []

    class Record(ti.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append((func, ti.tree_flatten((args, kwargs or {}))[0]))
            return func(*args, **(kwargs or {}))

    a, b = torch.ones(2), torch.ones(2)
    with Record():
        torch.add(a, b)
        a.add_(b)
    (add, leaves), (add_, _) = seen
    assert add is torch.ops.aten.add.Tensor and [t for t in leaves if isinstance(t, torch.Tensor)] == [a, b]
    assert isinstance(add.overloadpacket, ti.OpOverloadPacket) and "Tensor" in add.overloadpacket.overloads()
    assert all(r.alias_info is None for r in ti.op_schema(add).returns)
    assert any(r.alias_info is not None for r in ti.op_schema(add_).returns)  # in-place: an alias of its input
    assert not any(arg.is_out for arg in ti.op_schema(add).arguments)
    assert any(arg.is_out for arg in ti.op_schema(torch.ops.aten.add.out).arguments)


def test_the_version_counter_counts_in_place_writes():
    tensor = torch.zeros(3)
    before = ti.version_counter(tensor)
    tensor.add_(1)
    assert ti.version_counter(tensor) == before + 1
    tensor + 1  # noqa: B018 - an out-of-place operation leaves the counter
    assert ti.version_counter(tensor) == before + 1


# --- one module holds them ------------------------------------------------------------------------------------------

# private attributes of torch objects that legokit reads, with the accessor that reads each
PRIVATE_ATTRIBUTES = {"_schema": "op_schema", "_version": "version_counter"}


def _private(dotted: str) -> bool:
    """A torch name with a private part (`torch._ops`, `torch.utils._pytree.x`); dunders such as __version__ pass."""
    parts = dotted.split(".")
    return parts[0] == "torch" and any(
        p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts[1:]
    )


def _offences(tree: ast.Module) -> set[str]:
    """What a module touches of torch's private names: imports, attribute paths from a name bound to torch, dotted
    names in strings (pickle globals, importlib), and the private attributes of torch objects legokit reads."""
    bound: dict[str, str] = {}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in (a for a in node.names if a.name.split(".")[0] == "torch"):
                found |= {f"import {alias.name}"} if _private(alias.name) else set()
                bound[alias.asname or "torch"] = alias.name if alias.asname else "torch"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "torch":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found |= {f"from {node.module} import {alias.name}"} if _private(full) else set()
                bound[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, root = [], node
            while isinstance(root, ast.Attribute):
                chain.append(root.attr)
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound and _private(".".join([bound[root.id], *chain[::-1]])):
                found.add(".".join([root.id, *chain[::-1]]))
            if node.attr in PRIVATE_ATTRIBUTES:
                found.add(f".{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"torch(\.\w+)+", node.value) and _private(node.value):
                found.add(repr(node.value))
            if node.value in PRIVATE_ATTRIBUTES:
                found.add(repr(node.value))
    return found


def test_the_private_name_check_catches_each_kind_of_use():
    source = (
        "import torch\nimport torch.utils._pytree as pytree\nfrom torch._ops import OpOverload\n"
        "from torch import _C\nt = torch\ntorch._ops.HigherOrderOperator\nop._schema\n"
        "G = ('torch._utils', '_rebuild_tensor_v2')\ngetattr(op, '_schema')\ntorch.__version__\n"
    )
    assert _offences(ast.parse(source)) >= {
        "import torch.utils._pytree",
        "from torch._ops import OpOverload",
        "from torch import _C",
        "torch._ops.HigherOrderOperator",
        "._schema",
        "'torch._utils'",
        "'_schema'",
    }
    assert _offences(ast.parse("import torch\ntorch.__version__\ntorch.ops.aten.add\n")) == set()


def test_no_module_outside_torch_internals_touches_a_private_torch_name():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name != "torch_internals.py":
            found[name] = _offences(ast.parse(path.read_text()))
    assert {n: sorted(o) for n, o in found.items() if o} == {}


def test_torch_internals_imports_torchs_compiler_stack_only_inside_its_accessors():
    tree = ast.parse((PACKAGE / "torch_internals.py").read_text())
    top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert not any(m.startswith(("legokit", "torch._higher_order_ops", "torch._export", "torch.export")) for m in top)
    inside = {
        n.module
        for f in tree.body
        if isinstance(f, ast.FunctionDef)
        for n in ast.walk(f)
        if isinstance(n, ast.ImportFrom)
    }
    assert inside == {"torch._higher_order_ops.scan", "torch._export.converter", "torch.export.pt2_archive._package"}


def test_the_declared_torch_range_admits_the_installed_torch_and_no_unchecked_release():
    line = re.search(r'^\s*"(torch[<>=!~,. \d]+)",', PYPROJECT.read_text(), re.MULTILINE)
    assert line, "pyproject.toml has no torch dependency with a version range"
    spec = Requirement(line.group(1)).specifier
    installed = Version(torch.__version__.split("+")[0])
    assert installed in spec, f"torch {installed} is outside pyproject.toml's {spec}"
    assert Version(f"{installed.major}.{installed.minor + 1}.0") not in spec, "the range admits newer, unchecked torch"
