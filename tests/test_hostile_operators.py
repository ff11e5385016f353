"""A block's program is a pure function with a known cost: only operators from legokit's table (`encoders.ops`) may
appear in it, each with its own cost formula. Side effects (printing, global state, in-place writes, uninitialised
memory, out= overloads) are refused at load, merge and wrap; costs the old meter missed (pooling windows, cdist,
half-precision products on CPU, a broadcast output, integer products) are counted and refused over the caps; a
weights config that ties two names to one record cannot change what the block loads."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import legokit
from legokit.artifacts.format import read_artifact, write_artifact
from legokit.artifacts.kinds.block import block_tensors
from legokit.artifacts.kinds.common import PROGRAM_PREFIX
from legokit.artifacts.registry import BLOCK
from legokit.encoders.cost import Caps, measure
from legokit.encoders.foreign import load_program, program_module, sanitize_program
from legokit.encoders.ops import CONV_SLOW, OPS, WINDOW, graph_op_problem
from legokit.wrap import wrap_file, wrap_module

from .hostile import _rewrite_zip, run_case
from .test_hostile_programs import (
    CASES,
    SMALL,
    _block_with,
    _case_dir,
    _clean,
    _edit_model,
    _export,
    _flat_block,
    make_world,
)

# what the attacker put in programs, by the list: printing, global state, uninitialised memory, in-place
# writes to weights, slow kernels and integer products without a formula, an out= overload
NAMED = (
    "_print.default",
    "set_grad_enabled.default",
    "manual_seed.default",
    "empty_like.default",
    "empty.memory_format",
    "mul_.Tensor",
    "add_.Tensor",
    "copy_.default",
    "slow_conv3d_forward.default",
    "_int_mm.default",
    "add.out",
    "save.default",
    "_local_scalar_dense.default",
    "nonzero.default",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("operators"))


def _all_overloads() -> list[str]:
    """Every aten overload torch knows, as `name.overload`, sorted (the generated family draws from these)."""
    names = torch._C._dispatch_get_all_op_names()
    found = []
    for full in names:
        if full.startswith("aten::"):
            name, _, overload = full[len("aten::") :].partition(".")
            found.append(f"{name}.{overload or 'default'}")
    return sorted(set(found))


REFUSED = [op for op in _all_overloads() if graph_op_problem("aten", *op.split(".", 1))]


def _swap_target(program: bytes, op: str) -> bytes:
    """The program with its tanh node calling torch.ops.aten.<op> instead (same inputs)."""

    def change(model: dict) -> None:
        for node in model["graph_module"]["graph"]["nodes"]:
            if node["target"] == "torch.ops.aten.tanh.default":
                node["target"] = f"torch.ops.aten.{op}"
                return
        raise AssertionError("no tanh node")

    return _edit_model(program, change)


def _refused_everywhere(world, program: bytes, family: str, what: str) -> None:
    """Load + forward and merge refuse the program by its operator; wrap of the .pt2 gives a clean answer."""
    folder = _case_dir(world)
    block = _block_with(world, program, folder)
    pt2 = folder / "encoder.pt2"
    pt2.write_bytes(program)
    inputs, marker = [block, pt2, world["builtin_path"]], world["marker"]

    def forward() -> object:
        return legokit.load(block)(torch.randn(2, 5, 3), torch.ones(2, 5, dtype=torch.bool))

    def merge() -> object:
        return legokit.merge_files([block, world["builtin_path"]], folder / "m.st")

    for name, action in (("load+forward", forward), ("merge", merge)):
        _clean(run_case(family, action, inputs, marker), f"{name} {what}")
        with pytest.raises(legokit.LegoError, match="does not allow"):
            action()
    _clean(run_case(family, lambda: wrap_file(pt2, "seq", "binary", **SMALL), inputs, marker), f"wrap {what}")


def test_the_table_names_real_operators_marked_random_where_torch_says_so():
    for key, rule in OPS.items():
        namespace, name = key.split(".")
        packet = getattr(getattr(torch.ops, namespace), name, None)
        assert packet is not None and packet.overloads(), key
        if rule.graph and namespace == "aten":
            seeded = any(torch.Tag.nondeterministic_seeded in getattr(packet, o).tags for o in packet.overloads())
            assert rule.random or not seeded, f"{key} draws random numbers but is not marked random"


def test_no_allowed_overload_writes_to_an_argument():
    for key, rule in OPS.items():
        if not rule.graph:
            continue
        packet = getattr(torch.ops.aten, key.split(".")[1])
        for overload in packet.overloads():
            schema = getattr(packet, overload)._schema
            writes = any(a.is_out or (a.alias_info is not None and a.alias_info.is_write) for a in schema.arguments)
            if writes:
                assert graph_op_problem("aten", key.split(".")[1], overload), f"{key}.{overload} writes"


@pytest.mark.parametrize("op", NAMED)
def test_side_effects_and_unmetered_kernels_are_refused_by_name(world, op):
    _refused_everywhere(world, _swap_target(world["program"], op), "operators", op)


@settings(CASES, max_examples=120)
@given(op=st.sampled_from(REFUSED))
def test_any_operator_outside_the_table_is_refused_at_load_merge_and_wrap(world, op):
    _refused_everywhere(world, _swap_target(world["program"], op), "operators", op)


def test_the_refusal_names_the_operator(world):
    program = _swap_target(world["program"], "_print.default")
    with pytest.raises(legokit.EncoderError, match=r"calls torch\.ops\.aten\._print\.default, which legokit does not"):
        load_program(program)


# ---- costs the old meter missed ----


class WidePool(nn.Module):
    """A max pool of kernel 1023 over a broadcast 1024 x 1024 map with many channels: ~1e12 comparisons."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plane = x[:, :1, None, None].expand(x.shape[0], 100_000, 1024, 1024)
        return x + F.max_pool2d(plane, 1023, stride=1).sum((1, 2, 3))[:, None]


class FarDistances(nn.Module):
    """cdist with p=3.7 between 4,000 broadcast points of 1,000 features: 16 x 1.6e7 x 1e3 operations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        points = x[:, :1, None].expand(x.shape[0], 4000, 1000)
        return x + torch.cdist(points, points, p=3.7).mean((1, 2))[:, None]


class HalfProducts(nn.Module):
    """A float16 bmm: 4.3e9 FLOPs, fine in float32, 64x slower in float16 on CPU."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x[:, :1, None, None].expand(x.shape[0], 16, 512, 512).to(self.dtype)
        return x + (a @ a).float().mean((1, 2, 3))[:, None]


class WideOutput(nn.Module):
    """A broadcast (b, 262144, 64) view returned as the output: 64 MiB per sample from 12 bytes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1, None].expand(x.shape[0], 262144, 64)


class BroadcastBatchDistances(nn.Module):
    """cdist of a real (1, 4096, 8192) set against 16 broadcast points: the kernel copies the set 16 times (2 GB)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        points = x[:, None, :1, None].expand(b, 1, 4096, 8192) * 1.0
        single = x[:, None, 1:2, None].expand(b, 16, 1, 8192)
        return x + torch.cdist(points, single, p=1.0).mean((1, 2, 3))[:, None]


class DoubleConvolution(nn.Module):
    """A float64 conv2d, 48 channels of 160 x 160, kernel 15: its im2col buffer takes 1.8 GB no output shows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plane = (x[:, :1, None, None].expand(x.shape[0], 48, 160, 160) * 1.0).double()
        return x + F.conv2d(plane, torch.ones(1, 48, 15, 15, dtype=torch.float64)).mean((1, 2, 3)).float()[:, None]


class SlowWindows(nn.Module):
    """avg_pool2d with a 64 x 64 window over 64 broadcast 384 x 384 planes: 2.7e10 window reads, ~30 s on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plane = x[:, :1, None, None].expand(x.shape[0], 64, 384, 384)
        return x + F.avg_pool2d(plane, 64, stride=1).mean((1, 2, 3))[:, None]


class Depthwise(nn.Module):
    """A depthwise conv2d with a 31 x 31 kernel over 64 planes of 256 x 256: 8e9 FLOPs at ~1 GFLOP/s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plane = x[:, :1, None, None].expand(x.shape[0], 64, 256, 256) * 1.0
        return x + F.conv2d(plane, torch.ones(64, 1, 31, 31), groups=64, padding=15).mean((1, 2, 3))[:, None]


class GeneralDistances(nn.Module):
    """cdist with p=3.7 between 2,000 points of 1,000 features: a power and a root per element, ~20 s on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        points = x[:, :1, None].expand(x.shape[0], 2000, 1000) * 1.0
        return x + torch.cdist(points, points, p=3.7).mean((1, 2))[:, None]


COSTLY = {
    "cdist broadcast batch": (BroadcastBatchDistances(), "holds"),
    "float64 conv im2col": (DoubleConvolution(), "holds"),
    "wide avg pool": (SlowWindows(), "computes"),
    "depthwise 31x31": (Depthwise(), "holds|computes"),
    "cdist p=3.7 2000x1000": (GeneralDistances(), "computes"),
    "wide pool": (WidePool(), "reads and writes|holds|computes"),
    "cdist p=3.7": (FarDistances(), "computes"),
    "float16 bmm": (HalfProducts(torch.float16), "computes"),
    "wide output": (WideOutput(), "output is"),
}


@pytest.fixture(scope="module")
def costly():
    return {name: (_export(module), expected) for name, (module, expected) in COSTLY.items()}


@pytest.mark.parametrize("name", list(COSTLY))
@pytest.mark.parametrize("entry", ["forward", "merge", "wrap"])
def test_costs_the_old_meter_missed_are_refused_before_they_run(costly, world, tmp_path, name, entry):
    program, expected = costly[name]
    marker = tmp_path / "never"
    if entry == "wrap":
        pt2 = tmp_path / "bomb.pt2"
        pt2.write_bytes(program)
        inputs: list[Path] = [pt2]

        def action() -> object:
            return wrap_file(pt2, "tab", "binary", **SMALL)

    else:
        block = _flat_block(program, tmp_path)
        inputs = [block]

        def action() -> object:
            if entry == "merge":
                merged = legokit.merge_files([block, world["builtin_path"]], tmp_path / "m.st")
                return legokit.load(merged)({"tab": torch.randn(2, 3), "labs": torch.randn(2, 2)})
            return legokit.load(block)({"tab": torch.randn(2, 3)})

    _clean(run_case("operator-costs", action, inputs, marker), f"{name} via {entry}")
    with pytest.raises(legokit.LegoError, match=expected):
        action()


def test_a_float32_product_of_the_same_size_runs():
    module = program_module(sanitize_program(_export(HalfProducts(torch.float32))))
    with torch.no_grad():
        assert module(torch.randn(2, 3)).shape == (2, 3)


def _flops(module: nn.Module, *args: torch.Tensor) -> int:
    return measure(module, args).flops


def test_pooling_counts_kernel_volume_times_outputs():
    class Pool(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(x, 5, stride=2, dilation=2)

    x = torch.randn(2, 3, 40, 40)
    out = F.max_pool2d(x, 5, stride=2, dilation=2)
    assert _flops(Pool(), x) == WINDOW * 25 * out.numel()


def test_convolution_counts_groups_and_dilation_through_its_output():
    conv = nn.Conv2d(8, 16, 3, dilation=2, groups=4, bias=False)
    x = torch.randn(2, 8, 20, 20)
    out = conv(x)
    assert _flops(conv, x) == CONV_SLOW * 2 * out.numel() * (8 // 4) * 9  # grouped: the slow kernel


def test_cdist_and_attention_have_their_own_formulas():
    class Dist(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.cdist(a, b, p=3.7)

    a, b = torch.randn(2, 30, 7), torch.randn(2, 40, 7)
    assert _flops(Dist(), a, b) >= 16 * 2 * 30 * 40 * 7

    class Attend(nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, q, q)

    q = torch.randn(2, 4, 50, 8)
    assert _flops(Attend(), q) >= 2 * 2 * 4 * 50 * 50 * (8 + 8)


def test_an_operator_without_a_formula_is_refused_by_the_meter():
    class IntProduct(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.aten._int_mm(x, x)

    with pytest.raises(legokit.EncoderError, match="_int_mm has no cost formula"):
        measure(IntProduct(), (torch.ones(32, 32, dtype=torch.int8),))


def test_the_output_cap_follows_its_environment_variable(monkeypatch):
    monkeypatch.setenv("LEGOKIT_MAX_PROGRAM_OUTPUT", "1e12")
    assert Caps.from_env().output_bytes == 10**12


class Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x + 1


def test_a_program_that_returns_a_tuple_is_a_one_line_error(world, tmp_path):
    block = _flat_block(_export(Pair()), tmp_path)
    outcome = run_case(
        "operator-costs", lambda: legokit.load(block)({"tab": torch.randn(2, 3)}), [block], tmp_path / "x"
    )
    _clean(outcome, "tuple output")
    with pytest.raises(legokit.EncoderError, match="returns a tuple, not one tensor"):
        legokit.load(block)({"tab": torch.randn(2, 3)})


# ---- in-place writes: allowed in a user's file at wrap, never in what a block stores ----


class MaskedInPlace(nn.Module):
    """A Hugging Face style attention mask filled in place on a fresh tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.zeros(x.shape[0], 6)
        bias.masked_fill_(x[:, :1] > 0, -1.0)
        return self.proj(x) + bias


def _targets(program: bytes) -> set[str]:
    model = json.loads(zipfile.ZipFile(io.BytesIO(program)).read("archive/models/model.json"))
    return {node["target"] for node in model["graph_module"]["graph"]["nodes"]}


def test_a_program_that_writes_in_place_is_stored_as_a_pure_function(tmp_path):
    torch.manual_seed(0)
    module = MaskedInPlace().eval()
    pt2 = tmp_path / "inplace.pt2"
    pt2.write_bytes(_export(module))
    assert "torch.ops.aten.masked_fill_.Scalar" in _targets(pt2.read_bytes())
    with pytest.raises(legokit.EncoderError, match="in-place"):
        load_program(pt2.read_bytes())  # a stored program may not write in place
    block = wrap_file(pt2, "tab", "binary", **SMALL)
    targets = _targets(block.program())
    assert "torch.ops.aten.masked_fill.Scalar" in targets and not any(t.endswith("_.Scalar") for t in targets)
    x = torch.randn(7, 3)
    with torch.no_grad():
        assert torch.allclose(block.encoder(x).reshape(7, -1), module(x).reshape(7, -1), atol=1e-6)


class BufferCounter(nn.Module):
    """Counts its runs in a buffer: state kept from one run to the next."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("runs", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.runs.add_(1)
        return x * self.runs


def test_a_program_that_changes_its_buffers_is_refused_at_wrap():
    with pytest.raises(legokit.EncoderError, match="buffer_mutation"):
        wrap_module(BufferCounter(), "tab", "binary", (3,), **SMALL)


# ---- refill one to one ----


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def _point_b_at_a(program: bytes) -> bytes:
    """The weights config edited so that b.weight reads a.weight's record (b's own record dropped)."""

    def edit(records: dict[str, bytes]) -> None:
        name = "data/weights/model_weights_config.json"
        config = json.loads(records[name])
        table = config["config"]
        a, b = (next(k for k in table if k.endswith(f"{layer}.weight")) for layer in "ab")
        records.pop("data/weights/" + table[b]["path_name"])
        table[b]["path_name"] = table[a]["path_name"]
        records[name] = json.dumps(config).encode()

    return _rewrite_zip(program, edit)


def test_a_weights_config_that_ties_two_names_cannot_change_the_loaded_weights(tmp_path):
    torch.manual_seed(0)
    block = wrap_module(TwoLayers(), "tab", "binary", (3,), **SMALL)
    path = legokit.save_block(block, tmp_path / "two.st")
    stored = read_artifact(path)
    tensors = dict(stored.tensors)
    tensors[PROGRAM_PREFIX + "encoder"] = torch.frombuffer(
        bytearray(_point_b_at_a(tensors[PROGRAM_PREFIX + "encoder"].numpy().tobytes())), dtype=torch.uint8
    )
    forged = write_artifact(tmp_path / "forged.st", BLOCK, stored.config, tensors)
    outcome = run_case("refill", lambda: legokit.load(forged), [forged], tmp_path / "never")
    _clean(outcome, "tied records")
    with pytest.raises(legokit.ArtifactError, match="not what the block loads"):
        legokit.load(forged)


def test_the_loaded_program_weights_equal_the_file_tensors_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    path = legokit.save_block(wrap_module(TwoLayers(), "tab", "binary", (3,), **SMALL), tmp_path / "two.st")
    tensors = block_tensors(legokit.load(path))
    stored = read_artifact(path).tensors
    for name, value in tensors.items():
        if name.startswith("encoder.graph."):
            assert torch.equal(value, stored[name]), name
