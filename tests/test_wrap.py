"""`legokit wrap` from every encoder format, and its refusals, through the library and the real CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import legokit
from legokit import ConfigError, EncoderError, load_block
from legokit.cli.commands import main
from legokit.encoders import SNN
from legokit.wrap import wrap_file

from .conftest import VisitEncoder, run_cli

OPTS = dict(latent=(8, 16), device="cpu", dim_head=16)
CLI_SMALL = ["--latent", "8x16", "--device", "cpu"]


@pytest.fixture
def export_file(tmp_path):
    torch.manual_seed(0)
    module = VisitEncoder()
    program = torch.export.export(
        module, (torch.randn(2, 3, 6),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC},)
    )
    path = tmp_path / "visits.pt2"
    torch.export.save(program, path)
    return path, module


@pytest.fixture
def torchscript_file(tmp_path):
    torch.manual_seed(0)
    module = VisitEncoder()
    path = tmp_path / "visits.ts"
    torch.jit.save(torch.jit.script(module), path)
    return path, module


@pytest.fixture
def snn_state_file(tmp_path):
    torch.manual_seed(0)
    encoder = SNN(in_features=10, hidden=16, depth=3)
    path = tmp_path / "snn.pt"
    torch.save(encoder.state_dict(), path)
    return path, encoder


def test_export_program_is_wrapped_with_its_input_shape_read_off_the_graph(export_file):
    path, module = export_file
    block = wrap_file(path, "visits", "binary", **OPTS)
    assert block.config.input_shape == (None, 6)
    x = torch.randn(3, 4, 6)
    assert torch.equal(block.encoder(x), module(x))


def test_torchscript_archive_is_converted_to_an_export_program(torchscript_file, tmp_path):
    path, module = torchscript_file
    block = wrap_file(path, "visits", "binary", input_shape=(None, 6), trust_pickle=True, **OPTS)
    x = torch.randn(3, 5, 6)
    assert torch.allclose(block.encoder(x), module(x), atol=1e-6)
    reloaded = load_block(legokit.save_block(block, tmp_path / "ts.st"))
    assert torch.equal(reloaded(x), block.eval()(x))


def test_torchscript_without_input_shape_asks_for_it(torchscript_file):
    with pytest.raises(ConfigError, match="give --input-shape"):
        wrap_file(torchscript_file[0], "visits", "binary", trust_pickle=True, **OPTS)


def test_torchscript_is_refused_unless_trusted_since_loading_it_runs_its_code(torchscript_file):
    with pytest.raises(EncoderError, match="TorchScript archive; loading one compiles its code.*--trust-pickle"):
        wrap_file(torchscript_file[0], "visits", "binary", input_shape=(None, 6), **OPTS)


def test_state_dict_of_a_builtin_is_wrapped_with_sizes_inferred(snn_state_file):
    path, encoder = snn_state_file
    block = wrap_file(path, "tab", "survival:4", arch="snn", **OPTS)
    assert block.config.encoder.kwargs == {"in_features": 10, "hidden": 16, "depth": 3}
    x = torch.randn(4, 10)
    assert torch.equal(block.encoder.eval()(x), encoder.eval()(x))


def test_state_dict_in_safetensors_or_nested_in_a_checkpoint_is_accepted(snn_state_file, tmp_path):
    _, encoder = snn_state_file
    save_file(encoder.state_dict(), tmp_path / "snn.safetensors")
    torch.save({"state_dict": encoder.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    for name in ("snn.safetensors", "ckpt.pt"):
        block = wrap_file(tmp_path / name, "tab", "binary", arch="snn", **OPTS)
        assert torch.equal(block.encoder.net[0].weight, encoder.net[0].weight)


def test_state_dict_without_arch_names_the_flag(snn_state_file):
    with pytest.raises(ConfigError, match="is a state dict; name its built-in encoder with --encoder"):
        wrap_file(snn_state_file[0], "tab", "binary", **OPTS)


def test_state_dict_that_does_not_fit_the_arch_is_named(snn_state_file):
    with pytest.raises(EncoderError, match="state dict does not fit encoder abmil"):
        wrap_file(snn_state_file[0], "tab", "binary", arch="abmil", **OPTS)


def test_pickled_module_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(nn.Sequential(nn.Linear(4, 8)), path)
    with pytest.raises(EncoderError, match="unpickling runs code named in the file"):
        wrap_file(path, "tab", "binary", **OPTS)


def test_pickled_module_is_exported_when_trusted(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    path = tmp_path / "model.pt"
    torch.save(module, path)
    block = wrap_file(path, "tab", "binary", input_shape=(4,), trust_pickle=True, **OPTS)
    x = torch.randn(3, 4)
    assert torch.equal(block.encoder(x), module(x))


def test_a_corrupt_export_program_is_a_clean_error(export_file):
    path, _ = export_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(legokit.LegoError):
        wrap_file(path, "visits", "binary", **OPTS)


def test_an_input_shape_that_disagrees_with_the_program_is_refused(export_file):
    with pytest.raises(ConfigError, match="disagrees with the program"):
        wrap_file(export_file[0], "visits", "binary", input_shape=(None, 7), **OPTS)


def test_a_legokit_artifact_is_not_an_encoder(snn_block, tmp_path):
    path = legokit.save_block(snn_block, tmp_path / "a.st")
    with pytest.raises(EncoderError, match="already a legokit artifact"):
        wrap_file(path, "tab", "binary", arch="snn", **OPTS)


# --- the CLI -------------------------------------------------------------------------------------------------------


def test_cli_wrap_then_inspect_in_fresh_processes(snn_state_file, tmp_path):
    out = tmp_path / "tab.st"
    wrapped = run_cli(
        "wrap",
        str(snn_state_file[0]),
        "--encoder",
        "snn",
        "--modality",
        "tab",
        "--task",
        "survival:4",
        *CLI_SMALL,
        "-o",
        str(out),
    )
    assert wrapped.returncode == 0, wrapped.stderr
    assert "wrote" in wrapped.stdout
    inspected = run_cli("inspect", str(out), "--json", "-")
    assert inspected.returncode == 0, inspected.stderr
    facts = json.loads(inspected.stdout)
    assert facts["modality"] == "tab" and facts["task"] == "survival:4" and facts["latent"] == "8x16"
    assert facts["format_version"] == 2 and len(facts["sha256"]) == 64
    assert facts["params"] == sum(p.numel() for p in load_block(out).state_dict().values())


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda p: p.write_text("hello"), ["inspect"], "not a safetensors file"),
        (
            lambda p: torch.save(nn.Linear(2, 2), p),
            ["wrap", "--modality", "tab", "-o", "x.st"],
            "pickled Python object",
        ),
        (lambda p: None, ["inspect"], "no such file"),
    ],
    ids=["text-file", "pickled-module", "missing"],
)
def test_cli_bad_input_is_one_line_exit_1_no_traceback(tmp_path, make, args, message):
    path = tmp_path / "input.bin"
    make(path)
    command = [args[0], str(path), *args[1:]]
    if "-o" in command:
        command[command.index("-o") + 1] = str(tmp_path / "x.st")
    result = run_cli(*command)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_output_never_overwrites_its_input(snn_state_file, capsys):
    path, _ = snn_state_file
    before = path.read_bytes()
    status = main(["wrap", str(path), "--encoder", "snn", "--modality", "tab", *CLI_SMALL, "-o", str(path)])
    assert status == 1
    assert "refusing to overwrite an input file" in capsys.readouterr().err
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--latent", "64by64"], "latent shape must look like 64x64"),
        (["--task", "survival"], "needs a size"),
        (["--task", "regression:1"], "unknown task"),
        (["--encoder-kwargs", "{hidden: 3}"], "--encoder-kwargs is not valid JSON"),
        (["--modality", "tab lab"], "modality name must be"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--depth", "0"], ""),
    ],
)
def test_cli_bad_flags_are_one_line_errors(snn_state_file, tmp_path, capsys, flags, message):
    base = ["wrap", str(snn_state_file[0]), "--encoder", "snn", "--modality", "tab", "-o", str(tmp_path / "o.st")]
    status = main(base + flags)
    err = capsys.readouterr().err
    assert status == 1
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.st").exists()
