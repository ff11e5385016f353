"""Hostile torch.export programs (generated with hypothesis): no string from a program reaches a parser that runs
code (shape expressions, operator names, value names, pytree specs, metadata, guard code, unknown fields), and a
program's cost is bounded before it runs (memory, FLOPs, loops, batch-dependent and value-dependent costs). Every
case goes through the entry points that read programs: `legokit.load` (and so predict, eval, train --block, fuse,
adapt, from_pretrained), `merge_files`, `wrap_file` on a .pt2, and a forward pass."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.export import Dim

import legokit
from legokit.artifacts.format import write_artifact
from legokit.artifacts.kinds.block import block_tensors
from legokit.artifacts.kinds.common import PROGRAM_PREFIX
from legokit.artifacts.registry import BLOCK
from legokit.artifacts.symexpr import ExprError, parse_expr
from legokit.encoders.cost import Caps, check_cost, measure
from legokit.encoders.foreign import load_program, program_module, sanitize_program
from legokit.wrap import wrap_file, wrap_module

from .hostile import _rewrite_zip, hostile_cases, run_case

CASES = hostile_cases(100)
SMALL = dict(latent=(4, 8), dim_head=8, device="cpu")
SECONDS = 5.0


class Tokens(nn.Module):
    """A sequence encoder with a padding mask: its program carries symbolic sizes for the batch and the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 6)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(x)) * mask.unsqueeze(-1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("programs"))


def make_world(root: Path) -> dict[str, Any]:
    """A foreign sequence block (program with symbolic sizes), a built-in block to merge with, and a marker."""
    torch.manual_seed(0)
    foreign = wrap_module(Tokens(), "seq", "survival:4", (None, 3), **SMALL)
    builtin = legokit.wrap.wrap_builtin("snn", None, "labs", "survival:4", {"in_features": 2, "hidden": 8}, **SMALL)
    return {
        "root": root,
        "foreign": foreign,
        "program": foreign.program(),
        "marker": root / "ran-code",
        "builtin_path": legokit.save_block(builtin, root / "builtin.st"),
    }


def _case_dir(world) -> Path:
    folder = world["root"] / "case"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def _edit_model(program: bytes, change: Callable[[dict], None]) -> bytes:
    def edit(records: dict[str, bytes]) -> None:
        model = json.loads(records["models/model.json"])
        change(model)
        records["models/model.json"] = json.dumps(model).encode()

    return _rewrite_zip(program, edit)


def _block_with(world, program: bytes, folder: Path) -> Path:
    tensors = block_tensors(world["foreign"])
    tensors[PROGRAM_PREFIX + "encoder"] = torch.frombuffer(bytearray(program), dtype=torch.uint8)
    return write_artifact(folder / "block.st", BLOCK, world["foreign"].config.to_dict(), tensors)


def _forward(path: Path) -> None:
    block = legokit.load(path)
    with torch.no_grad():
        block(torch.randn(3, 5, 3), torch.ones(3, 5, dtype=torch.bool))


def _clean(outcome, what: str) -> None:
    assert not outcome.ran_code, f"{what}: code from the input ran"
    assert outcome.traceback is None, f"{what}: {outcome.traceback}"
    assert not outcome.modified, f"{what}: modified {outcome.modified}"
    assert outcome.seconds < SECONDS, f"{what}: took {outcome.seconds:.1f} s"


def _every_entry_point(world, program: bytes, family: str, what: str) -> None:
    """The program inside a block (load + forward, merge) and as a .pt2 given to wrap: each a clean answer."""
    folder = _case_dir(world)
    block = _block_with(world, program, folder)
    pt2 = folder / "encoder.pt2"
    pt2.write_bytes(program)
    inputs = [block, pt2, world["builtin_path"]]
    marker = world["marker"]
    _clean(run_case(family, lambda: _forward(block), inputs, marker), f"load+forward {what}")
    _clean(
        run_case(family, lambda: legokit.merge_files([block, world["builtin_path"]], folder / "m.st"), inputs, marker),
        f"merge {what}",
    )
    _clean(run_case(family, lambda: wrap_file(pt2, "seq", "binary", **SMALL), inputs, marker), f"wrap {what}")


# ---- family 1: shape expressions (the strings torch hands to sympy) ----


def _expr_places(model: dict) -> list[dict]:
    """Every SymExpr object of a program's JSON (sizes, strides, offsets, symbolic values), found by walking it."""
    found, stack = [], [model]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "expr_str" in item:
                found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _payloads(marker: Path) -> st.SearchStrategy[str]:
    run = f"__import__('os').system('touch {marker}')"
    templates = [
        run,
        f"({run}, {{orig}})[1]",
        f"Add({{orig}}, Integer(0)) if {run} else {{orig}}",
        "{orig}.__class__",
        "Symbol('s0').__class__.__init__.__globals__",
        "Pow(Integer(10), Integer(99999999))",
        "Pow(Pow(Integer(99), Integer(8)), Integer(8))",
        "Integer(" + "9" * 40 + ")",
        "Mul(" * 40 + "Integer(1)" + ")" * 40,
        "lambda: 0",
        "{orig}; import os",
        "Symbol('__import__')",
        "Symbol('s999999', positive=True)",
        "Function('eval')(Integer(1))",
        "Symbol('s0', evaluate=True)",
        "{orig} + 1",
        "S.true",
        "Integer(1)[0]",
        "Integer('1')",
        "Mod({orig})",
        "Max(" + ", ".join(["{orig}"] * 70) + ")",
        "Integer(1)\x00",
        'Symbol("s0")',
        "Symbol('s0', positive=True, positive=True)",
        "Integer(१)",
        "  ",
        "",
    ]
    return st.one_of(
        st.sampled_from(templates),
        st.text(max_size=40),
        st.text(alphabet="()',=SymbolIntegrMuAd 0123456789_", max_size=60),
    )


@CASES
@given(data=st.data())
def test_shape_expressions_never_reach_sympy_unchecked(world, data):
    model = json.loads(_model_json(world["program"]))
    places = _expr_places(model)
    where = data.draw(st.integers(0, len(places) - 1))
    template = data.draw(_payloads(world["marker"]))

    def change(edited: dict) -> None:
        target = _expr_places(edited)[where]
        target["expr_str"] = template.replace("{orig}", target["expr_str"])

    _every_entry_point(world, _edit_model(world["program"], change), "expression", repr(template)[:80])


def _model_json(program: bytes) -> bytes:
    import zipfile

    archive = zipfile.ZipFile(io.BytesIO(program))
    return archive.read(next(n for n in archive.namelist() if n.endswith("models/model.json")))


# ---- family 2: every other string torch interprets, by its role ----

TARGETS = [
    "_operator.attrgetter",
    "_operator.methodcaller",
    "_operator.call",
    "builtins.eval",
    "os.system",
    "torch.ops.aten.add.Tensor.__globals__",
    "torch.ops.aten.__class__.__init__",
    "torch.ops.aten.add",
    "torch.ops.higher_order.while_loop",
    "torch.ops.higher_order.auto_functionalized",
    "#custom:evil",
    "torch.ops.aten.from_file.default",
    "torch.ops.aten._local_scalar_dense.default.__call__",
    "torch.ops.myns.op.default",
    "math.__loader__",
    "torch.load",
    "torch.sym_int.__globals__",
    "importlib.import_module",
    "torch.ops.aten.resize_.default",
    "torch.ops.aten.set_.source_Tensor",
    "torch.ops.aten.zeros.out",
    "torch.ops.aten._sparse_coo_tensor_with_dims_and_tensors.default",
    "torch.ops.aten._to_dense.default",
    "torch.ops.higher_order.map_impl",
    "torch.ops.aten._unsafe_index.Tensor",
    "torch.ops.aten.linalg_inv.default",
    "torch.ops.aten.add.out",
]
NAMES = ["x; import os", "__import__", "a.b", "1abc", "class", "x\ny", "é", "", "a" * 300, "__class__", "x = 1"]
SPECS = [
    '[1, {"type": "collections.namedtuple", "context": "null", "children_spec": []}]',
    '[1, {"type": "builtins.dict", "context": "{\\"__enum__\\": \\"os.system\\"}", "children_spec": []}]',
    "[2, {}]",
    "not json",
    '[1, {"type": "builtins.tuple", "context": "null", "children_spec": [], "x": 1}]',
    '[1, {"type": "torch.fx.immutable_collections.immutable_dict", "context": "[]", "children_spec": []}]',
]


def _string_edits(marker: Path) -> st.SearchStrategy[tuple[str, Any]]:
    run = f"__import__('os').system('touch {marker}')"
    return st.one_of(
        st.tuples(st.just("target"), st.sampled_from(TARGETS)),
        st.tuples(
            st.sampled_from(["node name", "tensor name", "argument name", "parameter name", "call fqn"]),
            st.one_of(st.sampled_from(NAMES), st.text(max_size=12)),
        ),
        st.tuples(st.sampled_from(["in_spec", "out_spec"]), st.sampled_from(SPECS)),
        st.tuples(st.just("verifier"), st.sampled_from(["EVIL", "os.system", "", "TRAINING"])),
        st.tuples(st.just("torch_version"), st.sampled_from(["2.0", "x" * 100, "2.0'); import os; ('", None, 3])),
        st.tuples(st.just("guards_code"), st.sampled_from([[run], [f"L['x'].size()[0] == 2 or {run}"], "x", [1]])),
        st.tuples(
            st.just("metadata"),
            st.sampled_from(
                [
                    {"custom": "{" * 3000},
                    {"nn_module_stack": run},
                    {"source_fn_stack": f"a,{run}"},
                    {"from_node": "[[["},
                    "x",
                ]
            ),
        ),
        st.tuples(st.just("device"), st.sampled_from(["cpu'); import os", "cuda:0", "mps", 7])),
        st.tuples(st.just("range key"), st.sampled_from(["__import__", "s0 + 1", "s" + "9" * 20, "s0"])),
    )


def _apply_string_edit(model: dict, role: str, value: Any) -> None:
    graph = model["graph_module"]["graph"]
    node = graph["nodes"][0]
    if role == "target":
        node["target"] = value
    elif role == "node name":
        node["name"] = value
    elif role == "tensor name":
        graph["inputs"][0]["as_tensor"]["name"] = value
    elif role == "argument name":
        node["inputs"][0]["name"] = value
    elif role == "parameter name":
        spec = next(s for s in model["graph_module"]["signature"]["input_specs"] if "parameter" in s)
        spec["parameter"]["parameter_name"] = value
    elif role == "call fqn":
        model["graph_module"]["module_call_graph"][0]["fqn"] = value
    elif role in ("in_spec", "out_spec"):
        model["graph_module"]["module_call_graph"][0]["signature"][role] = value
    elif role == "verifier":
        model["verifiers"] = [value]
    elif role == "torch_version":
        model["torch_version"] = value
    elif role == "guards_code":
        model["guards_code"] = value
    elif role == "metadata":
        node["metadata"] = value
    elif role == "device":
        next(iter(graph["tensor_values"].values()))["device"]["type"] = value
    elif role == "range key":
        model["range_constraints"][value] = {"min_val": 0, "max_val": None}


@CASES
@given(edit=st.data())
def test_no_other_string_of_a_program_runs_code(world, edit):
    role, value = edit.draw(_string_edits(world["marker"]))
    program = _edit_model(world["program"], lambda model: _apply_string_edit(model, role, value))
    _every_entry_point(world, program, "strings", f"{role}={str(value)[:60]!r}")


# ---- family 3: the closed schema (unknown fields, unions with two members, wrong types) ----


def _dict_paths(model: Any) -> list[dict]:
    found, stack = [], [model]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


@CASES
@given(
    where=st.integers(0, 10**6),
    key=st.sampled_from(
        [
            "extra",
            "as_custom_obj",
            "as_operator",
            "custom_obj_values",
            "as_string_to_argument",
            "example_inputs",
            "__reduce__",
        ]
    ),
    value=st.sampled_from([None, 1, "x", [], {"name": "evil", "class_fqn": "os.system"}, {"a": 1}]),
    mode=st.sampled_from(["add", "retype", "drop"]),
)
def test_fields_outside_the_closed_schema_are_refused(world, where, key, value, mode):
    def change(model: dict) -> None:
        objects = [d for d in _dict_paths(model) if d]
        target = objects[where % len(objects)]
        if mode == "add":
            target[key] = value
        elif mode == "retype":
            first = next(iter(target))
            target[first] = value
        else:
            target.pop(next(iter(target)))

    program = _edit_model(world["program"], change)
    folder = _case_dir(world)
    block = _block_with(world, program, folder)
    _clean(run_case("schema", lambda: _forward(block), [block], world["marker"]), f"{mode} {key}")


def test_a_real_program_passes_the_schema_and_computes_the_same(world):
    program = world["program"]
    x, mask = torch.randn(2, 4, 3), torch.ones(2, 4, dtype=torch.bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = torch.export.load(io.BytesIO(program)).module()
    assert torch.equal(load_program(program).module()(x, mask), raw(x, mask))


def test_the_sympy_payload_does_run_code_through_raw_torch_export_load(world, tmp_path):
    """Control: the payload is real. torch's own loader runs it; legokit refuses the same bytes first."""
    marker = tmp_path / "ran"
    run = f"__import__('os').system('touch {marker}')"

    def change(model: dict) -> None:
        target = _expr_places(model)[0]
        target["expr_str"] = f"({run}, {target['expr_str']})[1]"

    program = _edit_model(world["program"], change)
    with pytest.raises(legokit.EncoderError, match="shape expression refused"):
        load_program(program)
    assert not marker.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(Exception):  # only whether the payload ran matters here
            torch.export.load(io.BytesIO(program))
    assert marker.exists(), "the control payload did not run through torch.export.load"


@pytest.mark.parametrize(
    "text, message",
    [
        ("Mul(Integer(4), Symbol('s1', positive=True, integer=True))", None),
        ("Pow(Symbol('s1', positive=True, integer=True), Integer(2))", None),
        ("Symbol('s2', positive=True, integer=True)", "not one the program declares"),
        ("Pow(Integer(10), Integer(9))", "exponent from 0 to 8"),
        ("Integer(" + "1" * 20 + ")", "at most 19 digits"),
        ("Eval(Integer(1))", "function 'Eval' is not allowed"),
    ],
)
def test_the_expression_grammar_accepts_what_torch_writes_and_nothing_else(text, message):
    if message is None:
        assert parse_expr(text, {"s1"}).text() == text
    else:
        with pytest.raises(ExprError, match=message):
            parse_expr(text, {"s1"})


# ---- family 4: cost bombs in allowlisted programs ----


class MemoryBomb(nn.Module):
    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.zeros(self.side, self.side, device=x.device).sum()


class FlopBomb(nn.Module):
    def __init__(self, side: int, rounds: int):
        super().__init__()
        self.side, self.rounds = side, rounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.ones(self.side, self.side, device=x.device)
        for _ in range(self.rounds):
            a = a @ a * 0.0
        return x + a.sum()


class BatchSquared(nn.Module):
    """Small for one sample, quadratic in the batch: hides from a one-sample check."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outer = x.sum(-1)[:, None, None] * x.sum(-1)[None, :, None] * torch.ones(self.width, device=x.device)
        return x + outer.sum(1).sum(-1, keepdim=True)


class BroadcastSum(nn.Module):
    """A broadcast view is free to make and costly to read: 4e10 elements summed from one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x[:1, :1].expand(200_000, 200_000).sum()


class Trainable(nn.Module):
    """Cheap without gradients; with them, autograd keeps twelve 200 MB activations per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * self.scale
        y = h[:, :1] * torch.ones(1, 50 << 20, device=x.device)
        for _ in range(12):
            y = y * h[:, 1:2]
        return x + y.mean(1, keepdim=True)


class ValueSized(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.zeros(int(x.abs().sum().item()) + 1).sum()


class Nonzero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x.nonzero().float().sum()


class Loop(nn.Module):
    """A while_loop with a bound of 1e12 steps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._higher_order_ops.while_loop import while_loop

        _, out = while_loop(lambda i, acc: i < 10**12, lambda i, acc: (i + 1, acc + 1.0), (torch.tensor(0), x))
        return out


def _export(module: nn.Module, width: int = 3) -> bytes:
    """torch.export's own program of `module` (batch dynamic), as torch writes it, before legokit checks it."""
    x = torch.randn(2, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, (x,), dynamic_shapes=({0: Dim.DYNAMIC},), strict=False)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


class Programs(dict):
    """Program bytes by name (shown by name only in failure reports)."""

    def __repr__(self) -> str:
        return f"Programs({', '.join(self)})"


@pytest.fixture(scope="module")
def bombs():
    """Programs torch.export makes without complaint, each one costly in its own way (or unknowable in advance)."""
    made = Programs({f"memory {side}": _export(MemoryBomb(side)) for side in (30_000, 60_000)})
    made.update(
        {f"flops {side}x{rounds}": _export(FlopBomb(side, rounds)) for side, rounds in ((2_000, 150), (4_000, 20))}
    )
    made["batch squared"] = _export(BatchSquared(1 << 22))
    made["broadcast sum"] = _export(BroadcastSum())
    for name, module in (("value-sized", ValueSized()), ("nonzero", Nonzero()), ("while loop", Loop())):
        try:
            made[name] = _export(module)
        except Exception:  # noqa: BLE001 - torch.export may refuse these itself; then there is nothing to bound
            continue
    return made


def _stored(program: bytes) -> bytes:
    """What a block would store: the program as legokit rewrites it when that passes, else the raw bytes (a crafted
    block can hold anything)."""
    try:
        return sanitize_program(program)
    except legokit.EncoderError:
        return program


def _flat_block(program: bytes, folder: Path) -> Path:
    """A flat (b, 3) block whose stored program is `program` (rewritten as legokit would store it)."""
    program = _stored(program)
    torch.manual_seed(0)
    config_source = wrap_module(nn.Sequential(nn.Linear(3, 3)), "tab", "survival:4", (3,), **SMALL)
    tensors = {k: v for k, v in block_tensors(config_source).items() if not k.startswith("encoder.")}  # bombs hold none
    tensors[PROGRAM_PREFIX + "encoder"] = torch.frombuffer(bytearray(program), dtype=torch.uint8)
    config = config_source.config.to_dict()
    return write_artifact(folder / "bomb.st", BLOCK, config, tensors)


REFUSALS = {
    "memory": "holds",
    "flops": "computes",
    "broadcast": "reads and writes",
    "nonzero": "does not allow",
    "while": "does not allow",
}


@settings(CASES, max_examples=40)
@given(
    name=st.sampled_from(
        [
            "memory 30000",
            "memory 60000",
            "flops 2000x150",
            "flops 4000x20",
            "batch squared",
            "broadcast sum",
            "value-sized",
            "nonzero",
            "while loop",
        ]
    ),
    batch=st.sampled_from([1, 2, 64, 256]),
    entry=st.sampled_from(["forward", "wrap", "merge"]),
)
def test_costly_programs_are_refused_before_they_run(bombs, world, tmp_path_factory, name, batch, entry):
    if name not in bombs:
        return
    folder = tmp_path_factory.mktemp("bomb")
    program = bombs[name]
    marker = folder / "never"
    if entry == "wrap":
        pt2 = folder / "bomb.pt2"
        pt2.write_bytes(program)
        outcome = run_case("cost", lambda: wrap_file(pt2, "tab", "binary", **SMALL), [pt2], marker)
    else:
        block = _flat_block(program, folder)

        def action() -> object:
            if entry == "merge":
                merged = legokit.merge_files([block, world["builtin_path"]], folder / "m.st")
                return legokit.load(merged)({"tab": torch.randn(batch, 3), "labs": torch.randn(batch, 2)})
            return legokit.load(block)({"tab": torch.randn(batch, 3)})

        outcome = run_case("cost", action, [block], marker)
    _clean(outcome, f"{name} at batch {batch} via {entry}")
    expected = REFUSALS.get(name.split()[0])
    if expected:  # refused for its cost (or its operator), not for anything else on the way
        with pytest.raises(legokit.LegoError, match=expected):
            if entry == "wrap":
                wrap_file(pt2, "tab", "binary", **SMALL)
            else:
                action()


def test_training_memory_is_measured_with_gradients(tmp_path):
    """Without gradients the trainable bomb is cheap; a block that fine-tunes it is refused before the forward."""
    program = sanitize_program(_export(Trainable()))
    module = program_module(program)
    with torch.no_grad():
        module(torch.randn(1, 3))
    module.requires_grad_(True)
    with pytest.raises(legokit.EncoderError, match="holds"):
        module(torch.randn(1, 3))


def test_a_batch_over_the_caps_runs_in_chunks_with_the_same_result(world, monkeypatch):
    """One sample fits the caps, 64 do not: the encoder runs them in chunks, and each sample's tokens are the same."""
    encoder = legokit.load(legokit.save_block(world["foreign"], world["root"] / "chunks.st")).encoder
    x, mask = torch.randn(64, 5, 3), torch.ones(64, 5, dtype=torch.bool)
    with torch.no_grad():
        whole = encoder(x, mask)
    one = encoder.cost.one((x, mask))
    encoder.cost.caps = Caps(peak_bytes=one.peak_bytes * 8, traffic_bytes=one.traffic_bytes * 8, flops=one.flops * 8)
    assert encoder.cost.chunk((x, mask)) == 4
    with torch.no_grad():
        chunked = encoder(x, mask)
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_a_memory_bomb_is_refused_without_the_memory(bombs, tmp_path):
    """In a fresh process: refusing a program that asks for 14 GB raises the process's peak by well under 1 GB."""
    program = tmp_path / "bomb.pt2"
    program.write_bytes(_stored(bombs["memory 60000"]))
    code = (
        "import resource, sys, legokit\n"
        "from legokit.encoders.foreign import program_module\n"
        "import torch\n"
        "module = program_module(open(sys.argv[1], 'rb').read())\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    module(torch.randn(2, 3))\nexcept legokit.EncoderError as exc:\n    print('refused', exc)\n"
        "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(program)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert "refused" in out.stdout and "holds 14,400,000,004 bytes" in out.stdout, out.stdout + out.stderr[-2000:]
    grew = int(out.stdout.split("grew_kb")[1])
    assert grew < 1 << 20, f"the refusal raised peak memory by {grew} KiB"


def test_the_cost_of_real_encoders_is_counted_and_within_the_caps(world):
    program = load_program(world["program"]).module()
    one = measure(program, (torch.randn(1, 7, 3), torch.ones(1, 7, dtype=torch.bool)))
    many = measure(program, (torch.randn(8, 7, 3), torch.ones(8, 7, dtype=torch.bool)))
    assert one.flops >= 2 * 7 * 3 * 6 and many.flops == 8 * one.flops  # the product, and elementwise work
    assert 0 < one.peak_bytes <= many.peak_bytes <= 8 * one.peak_bytes + 1024
    assert one.traffic_bytes > 0 and many.traffic_bytes <= 8 * one.traffic_bytes + 1024
    with torch.no_grad():  # the program's parameters require gradients: with them on, training's cost is measured
        assert check_cost(program, (torch.randn(1, 7, 3), torch.ones(1, 7, dtype=torch.bool)), "p") == one


def test_the_caps_follow_their_environment_variables(monkeypatch):
    monkeypatch.setenv("LEGOKIT_MAX_PROGRAM_MEMORY", "1e6")
    assert Caps.from_env().peak_bytes == 1_000_000
    monkeypatch.setenv("LEGOKIT_MAX_PROGRAM_FLOPS", "-3")
    with pytest.raises(legokit.ConfigError, match="LEGOKIT_MAX_PROGRAM_FLOPS must be a positive number"):
        Caps.from_env()
