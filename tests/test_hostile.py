"""Hostile inputs against every entry point (generated with hypothesis, 500+ cases): no case runs code from its
input, none escapes as anything but a one-line LegoError, none modifies an input file. Archives (torch.export
programs inside .st files and as .pt2, torch.save and TorchScript files), .st headers and configs, YAML recipes and
specs, CSV tables and sample tensors."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

import legokit
from legokit.artifacts.describe import describe
from legokit.artifacts.format import write_artifact
from legokit.artifacts.kinds.block import block_tensors
from legokit.artifacts.kinds.common import PROGRAM_PREFIX
from legokit.artifacts.registry import BLOCK
from legokit.nn.block import BlockConfig
from legokit.predict import predict_folder
from legokit.recipe import Recipe
from legokit.spec import BlockSpec
from legokit.training.workflows import evaluate_model
from legokit.wrap import wrap_builtin, wrap_file, wrap_module

from .hostile import (
    config_edits,
    header_with,
    hostile_cases,
    payload_bytes,
    program_mutations,
    run_case,
    torch_save_payload,
)

CASES = hostile_cases(100)
SMALL = dict(latent=(4, 8), dim_head=8, device="cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A foreign block and a built-in block (same latent, task), their files, a data folder, and a marker path."""
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    foreign = wrap_module(nn.Sequential(nn.Linear(3, 6), nn.Tanh()), "tab", "survival:4", (3,), **SMALL)
    builtin = wrap_builtin("snn", None, "labs", "survival:4", {"in_features": 2, "hidden": 8}, **SMALL)
    data = root / "data"
    data.mkdir()
    (data / "labels.csv").write_text("id,time,event\na,10,1\nb,20,0\nc,30,1\n", encoding="utf-8")
    (data / "tab.csv").write_text("id,x,y,z\na,1,2,3\nb,0,1,0\nc,2,2,2\n", encoding="utf-8")
    return {
        "root": root,
        "foreign": foreign,
        "builtin": builtin,
        "data": data,
        "marker": root / "ran-code",
        "foreign_path": legokit.save_block(foreign, root / "foreign.st"),
        "builtin_path": legokit.save_block(builtin, root / "builtin.st"),
    }


def _clean(outcome, what: str) -> None:
    assert not outcome.ran_code, f"{what}: code from the input ran"
    assert outcome.traceback is None, f"{what}: {outcome.traceback}"
    assert not outcome.modified, f"{what}: modified {outcome.modified}"


def _case_dir(world) -> Path:
    folder = world["root"] / "case"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


@CASES
@given(data=st.data())
def test_hostile_programs_run_no_code_in_load_merge_or_wrap(world, data):
    program = data.draw(program_mutations(world["foreign"].program(), world["marker"]))
    folder = _case_dir(world)
    tensors = block_tensors(world["foreign"])
    tensors[PROGRAM_PREFIX + "encoder"] = (
        torch.frombuffer(bytearray(program), dtype=torch.uint8) if program else torch.empty(0, dtype=torch.uint8)
    )
    block = write_artifact(folder / "block.st", BLOCK, world["foreign"].config.to_dict(), tensors)
    pt2 = folder / "encoder.pt2"
    pt2.write_bytes(program)
    inputs = [block, pt2, world["builtin_path"]]
    _clean(run_case("program", lambda: legokit.load(block), inputs, world["marker"]), "load")
    _clean(
        run_case(
            "program",
            lambda: legokit.merge_files([block, world["builtin_path"]], folder / "m.st"),
            inputs,
            world["marker"],
        ),
        "merge",
    )
    _clean(run_case("program", lambda: wrap_file(pt2, "tab", "binary", **SMALL), inputs, world["marker"]), "wrap")


PICKLES = ("torch.save zip", "legacy pickle", "TorchScript zip", "zip of junk")


def _pickle_file(kind: str, marker: Path, junk: bytes) -> bytes:
    if kind == "torch.save zip":
        return torch_save_payload(marker)
    if kind == "legacy pickle":
        return payload_bytes(marker)
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        if kind == "TorchScript zip":
            archive.writestr("m/data.pkl", payload_bytes(marker))
            archive.writestr("m/constants.pkl", payload_bytes(marker))
            archive.writestr("m/code/__torch__/m.py", "def forward(self, x):\n    return x\n")
        else:
            archive.writestr("m/data.pkl", junk)
            archive.writestr("m/code/x.py", junk)
    return out.getvalue()


@settings(CASES, max_examples=40)
@given(kind=st.sampled_from(PICKLES), junk=st.binary(max_size=64), arch=st.sampled_from([None, "snn"]))
def test_pickled_files_given_to_wrap_run_no_code(world, kind, junk, arch):
    folder = _case_dir(world)
    path = folder / "encoder.pt"
    path.write_bytes(_pickle_file(kind, world["marker"], junk))
    _clean(
        run_case(
            "pickle",
            lambda: wrap_file(path, "tab", "binary", input_shape=(3,), arch=arch, **SMALL),
            [path],
            world["marker"],
        ),
        kind,
    )


@CASES
@given(
    edit=config_edits(),
    kind=st.sampled_from(["block", "merged", "fused", "adapter", "", "blocks"]),
    version=st.sampled_from(["1", "2", "3", "-1", "x", ""]),
    reseal=st.booleans(),
)
def test_edited_headers_and_configs_are_one_line_errors_everywhere(world, edit, kind, version, reseal):
    folder = _case_dir(world)
    field, value = edit
    config = world["builtin"].config.to_dict()
    config[field] = value
    path = folder / "edited.st"
    if reseal:  # a writer that recomputes the checksum: the config reaches the parsers
        write_artifact(path, kind or BLOCK, config, block_tensors(world["builtin"]))
    else:
        original = world["builtin_path"].read_bytes()

        def change(header: dict) -> None:
            header["__metadata__"]["legokit.config"] = json.dumps(config, default=str)
            header["__metadata__"]["legokit.kind"] = kind
            header["__metadata__"]["legokit.format_version"] = version

        path.write_bytes(header_with(original, change))
    inputs = [path, world["foreign_path"]]
    for action in (
        lambda: legokit.load(path),
        lambda: describe(path),
        lambda: legokit.merge_files([path, world["foreign_path"]], folder / "m.st"),
    ):
        _clean(run_case("header", action, inputs, world["marker"]), f"{field}={value!r}")


TENSOR_EDITS = st.one_of(
    st.tuples(st.just("dtype"), st.sampled_from(["F16", "BF16", "F64", "I64", "C64", "U8", "XX", 3])),
    st.tuples(st.just("shape"), st.sampled_from([[], [0], [-1], [10**12], [2**62, 2**62], "x", [1.5]])),
    st.tuples(st.just("data_offsets"), st.sampled_from([[0, 0], [-8, 0], [0, 10**15], [4, 2], [0], "x"])),
)


@settings(CASES, max_examples=60)
@given(edit=TENSOR_EDITS, which=st.integers(0, 40), deep=st.integers(0, 3))
def test_edited_tensor_entries_and_deep_json_are_one_line_errors(world, edit, which, deep):
    folder = _case_dir(world)
    key, value = edit

    def change(header: dict) -> None:
        names = sorted(n for n in header if n != "__metadata__")
        header[names[which % len(names)]][key] = value
        if deep:
            header["__metadata__"]["legokit.provenance"] = "[" * (10**deep * 3) + "]" * (10**deep * 3)

    path = folder / "edited.st"
    path.write_bytes(header_with(world["foreign_path"].read_bytes(), change))
    for action in (
        lambda: legokit.load(path),
        lambda: describe(path),
        lambda: legokit.merge_files([path, world["builtin_path"]], folder / "m.st"),
    ):
        _clean(run_case("tensors", action, [path, world["builtin_path"]], world["marker"]), f"{key}={value!r}")


YAML_TEXTS = st.one_of(
    st.text(max_size=200),
    st.just("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b]\n"),
    st.builds(lambda n: "name: x\noperation: " + "[" * n + "]" * n + "\n", st.integers(10, 20000)),
    st.builds(
        lambda key, value: (
            f"name: r\noutput: out.st\noperation: {{kind: merge}}\nblocks:\n  tab: {{artifact: "
            f"foreign.st}}\n{key}: {value}\n"
        ),
        st.text(max_size=10),
        st.text(max_size=10),
    ),
    st.builds(
        lambda value: (
            f"name: r\noutput: {value}\noperation: {{kind: merge}}\nblocks:\n  tab: {{artifact: "
            "foreign.st}\n  labs: {artifact: builtin.st}\n"
        ),
        st.sampled_from(["recipe.yaml", "foreign.st", "builtin.st", ".", "''", "data", "/"]),
    ),
    st.builds(
        lambda field, value: f"modality: tab\n{field}: {value}\n",
        st.sampled_from(["latent", "depth", "encoder", "training", "task", "heads"]),
        st.sampled_from(
            ["1000000x1000000", "10000000", "{name: nope}", "{epochs: -1}", "[1, 2]", "!!python/object:os.system"]
        ),
    ),
)


@settings(CASES, max_examples=80)
@given(text=YAML_TEXTS)
def test_hostile_recipes_and_specs_are_one_line_errors(world, text):
    recipe = world["root"] / "recipe.yaml"
    recipe.write_text(text, encoding="utf-8", errors="surrogatepass") if "\ud800" not in text else recipe.write_bytes(
        b"\xff"
    )
    for path in ("foreign.st", "builtin.st"):
        assert (world["root"] / path).is_file()

    def run_recipe() -> None:
        Recipe.from_yaml(recipe).run(progress=False)

    inputs = [recipe, world["foreign_path"], world["builtin_path"]]
    _clean(run_case("yaml", run_recipe, inputs, world["marker"]), "recipe")
    _clean(run_case("yaml", lambda: BlockSpec.from_yaml(recipe), inputs, world["marker"]), "spec")


CELLS = st.sampled_from(["1", "1e39", "-1e39", "nan", "inf", "", "x", "1,2", "\ufeff1", "\x00", "9" * 400, "0x10"])


@settings(CASES, max_examples=80)
@given(
    cells=st.lists(CELLS, min_size=3, max_size=3),
    header=st.sampled_from(["id,x,y,z", "\ufeffid,x,y,z", "x,y,z,id", "id,x,y", "id,x,y,z,w"]),
    encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
    long=st.booleans(),
)
def test_hostile_tables_are_one_line_errors(world, cells, header, encoding, long):
    folder = _case_dir(world)
    shutil.copy(world["data"] / "labels.csv", folder / "labels.csv")
    row = ",".join(cells) + ("," + "é" * 200_000 if long else "")
    (folder / "tab.csv").write_bytes(f"{header}\na,{row}\nb,1,1,1\n".encode(encoding, errors="replace"))
    block = legokit.load(world["foreign_path"])
    inputs = [folder, world["foreign_path"]]
    _clean(run_case("csv", lambda: predict_folder(block, folder, device="cpu"), inputs, world["marker"]), row[:40])
    _clean(run_case("csv", lambda: evaluate_model(block, folder), inputs, world["marker"]), row[:40])


BAG_VALUES = st.sampled_from(["normal", "nan", "inf", "1e300", "complex", "int", "bool", "empty", "3d", "other width"])


@settings(CASES, max_examples=60)
@given(value=BAG_VALUES, dtype=st.sampled_from([torch.float64, torch.float32, torch.float16]), tokens=st.integers(1, 6))
def test_hostile_sample_tensors_are_one_line_errors(world, value, dtype, tokens):
    folder = _case_dir(world)
    shutil.copy(world["data"] / "labels.csv", folder / "labels.csv")
    (folder / "seq").mkdir()
    x = torch.randn(tokens, 4, dtype=dtype)
    tensors = {"x": x}
    if value in ("nan", "inf", "1e300"):  # 1e300 overflows to inf in float32 and float16
        x[0, 0] = torch.tensor(float(value), dtype=torch.float64).to(dtype)
    elif value == "complex":
        tensors["x"] = torch.randn(tokens, 4, dtype=torch.complex64)
    elif value in ("int", "bool"):
        tensors["x"] = torch.ones(tokens, 4, dtype=torch.int32 if value == "int" else torch.bool)
    elif value == "empty":
        tensors["x"] = torch.empty(0, 4)
    elif value == "3d":
        tensors["x"] = torch.randn(tokens, 4, 2)
    elif value == "other width":
        tensors["x"] = torch.randn(tokens, 5)
    save_file(tensors, folder / "seq" / "a.safetensors")
    save_file({"y": torch.randn(2, 4)}, folder / "seq" / "b.safetensors")
    block = wrap_builtin(
        "mlp", None, "seq", "survival:4", {"in_features": 4, "hidden": 8}, input_shape=(None, 4), **SMALL
    )
    _clean(run_case("bags", lambda: predict_folder(block, folder, device="cpu"), [folder], world["marker"]), value)


def test_the_payload_really_runs_code_when_unpickled(world, tmp_path):
    """The harness's own check: the payload used above does create the marker when something unpickles it."""
    import pickle

    marker = tmp_path / "ran"
    pickle.loads(payload_bytes(marker))  # noqa: S301 - the point of this test
    assert marker.exists()


def test_block_config_caps_refuse_gigabyte_configs():
    config = legokit.load(
        legokit.save_block(
            wrap_builtin("snn", None, "t", "binary", {"in_features": 2}, **SMALL),
            Path(pytest.importorskip("tempfile").mkdtemp()) / "b.st",
        )
    ).config.to_dict()
    for field, value in (("latent", [10**6, 10**6]), ("depth", 10**7), ("heads", 10**6)):
        with pytest.raises(legokit.ConfigError, match="caps it at"):
            BlockConfig.from_dict({**config, field: value})


def test_a_write_stopped_by_sigterm_leaves_no_temporary_file(tmp_path):
    from .conftest import run_python

    done = run_python(
        """
        import os, signal, sys
        from legokit.artifacts.format import atomic_output
        from legokit.cli.commands import Terminated, _terminated
        signal.signal(signal.SIGTERM, _terminated)
        try:
            with atomic_output(sys.argv[1]) as out:
                out.write(b"x" * 1000)
                os.kill(os.getpid(), signal.SIGTERM)
        except Terminated:
            print("terminated")
    """,
        str(tmp_path / "out.st"),
    )
    assert done.stdout.strip() == "terminated", done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    stale = tmp_path / ".out.st.999999999.abcd1234.tmp"  # no process has that id
    stale.write_bytes(b"x" * 1000)
    other = tmp_path / ".other.st.999999999.abcd1234.tmp"
    other.write_bytes(b"y")
    legokit.artifacts.format.write_atomic(tmp_path / "out.st", b"data")
    assert not stale.exists() and other.exists()


def test_outputs_honour_the_umask(tmp_path):
    import os

    previous = os.umask(0o027)
    try:
        legokit.artifacts.format.write_atomic(tmp_path / "out.st", b"data")
    finally:
        os.umask(previous)
    assert (tmp_path / "out.st").stat().st_mode & 0o777 == 0o640


def test_an_input_named_like_a_stale_temporary_is_never_removed(world, tmp_path):
    named = tmp_path / ".m.st.999999999.abcd1234.tmp"
    named.write_bytes(world["builtin_path"].read_bytes())
    other = tmp_path / "other.st"
    other.write_bytes(world["foreign_path"].read_bytes())
    legokit.merge_files([named, other], tmp_path / "m.st")
    assert named.read_bytes() == world["builtin_path"].read_bytes()


def test_a_pipe_given_as_an_artifact_or_an_encoder_is_one_line(tmp_path, capsys):
    import os

    from legokit.cli.commands import main

    fifo = tmp_path / "pipe.st"
    os.mkfifo(fifo)
    assert main(["inspect", str(fifo)]) == 1
    assert main(["wrap", str(fifo), "--modality", "x", "-o", str(tmp_path / "x.st")]) == 1
    assert capsys.readouterr().err.count("not a regular file") == 2


def test_a_program_calling_a_file_operator_is_refused(world):
    from legokit.encoders.foreign import load_program

    from .hostile import _rewrite_zip

    def to_from_file(records: dict) -> None:
        model = json.loads(records["models/model.json"])
        model["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.aten.from_file.default"
        records["models/model.json"] = json.dumps(model).encode()

    program = _rewrite_zip(world["foreign"].program(), to_from_file)
    with pytest.raises(
        legokit.EncoderError, match="calls torch.ops.aten.from_file.default, which legokit does not allow"
    ):
        load_program(program)


def test_a_program_whose_buffer_views_a_parameter_loads(tmp_path):
    import io

    from legokit.encoders.foreign import load_program, sanitize_program

    class Viewing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 4))
            self.register_buffer("top", self.weight.data[:4])

        def forward(self, x):
            return x @ self.weight.T + (x @ self.top.T).sum(-1, keepdim=True)

    module = Viewing()
    program = torch.export.export(module, (torch.randn(2, 4),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    x = torch.randn(3, 4)
    assert torch.allclose(load_program(sanitize_program(buffer.getvalue())).module()(x), module(x), atol=1e-6)


def test_a_temporary_with_an_impossible_process_id_is_left_alone(tmp_path):
    odd = tmp_path / ".out.st.99999999999999999999.abcdefgh.tmp"
    odd.write_bytes(b"x")
    legokit.artifacts.format.write_atomic(tmp_path / "out.st", b"data")
    assert odd.exists() and (tmp_path / "out.st").read_bytes() == b"data"
