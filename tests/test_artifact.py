"""The .st artifact: standalone round trips, and a clean one-line error for every kind of bad file."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import legokit
from legokit import ArtifactError, ShapeError, load_block, save_block
from legokit.artifacts.format import FORMAT_VERSION, KEY_CHECKSUM, KEY_CONFIG, KEY_VERSION, read_metadata
from legokit.errors import WriteError

from .conftest import VisitEncoder, run_python

FRESH_PROCESS = """
    import sys, torch, legokit
    from safetensors.torch import load_file, save_file
    block = legokit.load_block(sys.argv[1])
    # clone: safetensors returns tensors 8 bytes off a 64-byte boundary, and oneDNN rounds differently there
    inputs = {name: t.clone() for name, t in load_file(sys.argv[2]).items()}
    with torch.no_grad():
        out = block(inputs["x"], inputs.get("mask"))
    save_file({"out": out.contiguous()}, sys.argv[3])
    assert "tests" not in sys.modules and "VisitEncoder" not in dir(sys.modules["__main__"])
"""


def _roundtrip_in_fresh_process(block, x, tmp_path, mask=None):
    path = save_block(block, tmp_path / "block.st")
    save_file({"x": x, **({"mask": mask} if mask is not None else {})}, tmp_path / "in.safetensors")
    result = run_python(FRESH_PROCESS, str(path), str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors"))
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = block.eval()(x, mask)
    return expected, load_file(tmp_path / "out.safetensors")["out"]


@pytest.mark.parametrize(
    "fixture, shape", [("snn_block", (5, 10)), ("abmil_block", (5, 7, 5)), ("mlp_block", (5, 3, 4))]
)
def test_builtin_block_reloads_bit_identical_in_a_fresh_process(fixture, shape, request, tmp_path):
    block = request.getfixturevalue(fixture)
    expected, got = _roundtrip_in_fresh_process(block, torch.randn(*shape), tmp_path)
    assert torch.equal(expected, got)


def test_foreign_encoder_reloads_bit_identical_where_its_class_is_unknown(tmp_path):
    torch.manual_seed(3)
    block = legokit.wrap_module(
        VisitEncoder(), "visits", "survival:4", (None, 6), latent=(8, 16), dim_head=16, device="cpu"
    )
    x = torch.randn(4, 5, 6)
    expected, got = _roundtrip_in_fresh_process(block, x, tmp_path)
    assert torch.equal(expected, got)


def test_foreign_encoder_stays_fine_tunable_after_loading(tmp_path):
    torch.manual_seed(4)
    block = legokit.wrap_module(
        VisitEncoder(), "visits", "binary", (None, 6), latent=(8, 16), dim_head=16, device="cpu"
    )
    loaded = load_block(save_block(block, tmp_path / "a.st")).train()
    encoder_params = list(loaded.encoder.parameters())
    assert encoder_params and all(p.requires_grad for p in encoder_params)
    x = torch.randn(8, 5, 6)
    before = loaded(x).detach()
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.5)
    loaded(x).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder_params)
    optimizer.step()
    after = loaded(x).detach()
    assert not torch.allclose(before, after)
    again = load_block(save_block(loaded, tmp_path / "b.st"))
    assert torch.equal(again(x), loaded.eval()(x))


def test_artifact_header_names_format_version_kind_and_safetensors_framework(snn_block, tmp_path):
    metadata = read_metadata(save_block(snn_block, tmp_path / "a.st"))
    assert metadata["format"] == "pt"
    assert metadata["legokit.kind"] == "block"
    assert int(metadata[KEY_VERSION]) == FORMAT_VERSION
    assert json.loads(metadata[KEY_CONFIG])["modality"] == "tab"


def test_provenance_is_kept_in_the_header(snn_block, tmp_path):
    path = save_block(snn_block, tmp_path / "a.st", provenance={"data": "pbc", "seed": 3})
    assert load_block(path).provenance == {"data": "pbc", "seed": 3}


def test_save_leaves_no_temporary_file_and_replaces_the_target_atomically(snn_block, tmp_path):
    target = tmp_path / "a.st"
    target.write_bytes(b"old")
    save_block(snn_block, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.st"]
    assert load_block(target).modality == "tab"


def test_save_refuses_to_overwrite_an_input_file(snn_block, tmp_path):
    source = tmp_path / "encoder.pt"
    source.write_bytes(b"precious")
    with pytest.raises(WriteError, match="refusing to overwrite an input file"):
        save_block(snn_block, source, inputs=[source])
    assert source.read_bytes() == b"precious"


def test_failed_save_keeps_the_previous_file(snn_block, tmp_path, monkeypatch):
    target = tmp_path / "a.st"
    save_block(snn_block, target)
    before = target.read_bytes()

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(WriteError, match="a.st: cannot write there \\(disk full\\)"):
        save_block(snn_block, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.st"]


# --- bad files: each one a clean ArtifactError naming the file -----------------------------------------------------


def _rewrite(path, mutate_tensors=None, mutate_metadata=None, reseal=False):
    """Edit an artifact in place; `reseal` recomputes the checksum, as a careless or hostile writer would."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(path)
    if mutate_tensors:
        mutate_tensors(tensors)
    if mutate_metadata:
        mutate_metadata(metadata)
    if reseal:
        metadata[KEY_CHECKSUM] = legokit.artifacts.format.seal(
            metadata, legokit.artifacts.format.tensors_digest(tensors)
        )
    save_file(tensors, path, metadata=metadata)


def test_missing_file_is_a_clean_error(tmp_path):
    with pytest.raises(ArtifactError, match=r"nothing\.st: no such file"):
        load_block(tmp_path / "nothing.st")


def test_a_file_that_is_not_safetensors_is_a_clean_error(tmp_path):
    path = tmp_path / "notes.st"
    path.write_text("this is a text file, not an artifact\n")
    with pytest.raises(ArtifactError, match=r"notes\.st: not a safetensors file"):
        load_block(path)


def test_an_empty_file_is_a_clean_error(tmp_path):
    path = tmp_path / "empty.st"
    path.write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"empty\.st: not a safetensors file \(only 0 bytes\)"):
        load_block(path)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_a_truncated_artifact_is_a_clean_error(snn_block, tmp_path, keep):
    path = save_block(snn_block, tmp_path / "a.st")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ArtifactError, match=r"a\.st: (truncated|not a valid safetensors)"):
        load_block(path)


def test_a_safetensors_file_of_another_program_is_a_clean_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(3)}, path, metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match="a safetensors file, but not a legokit artifact"):
        load_block(path)


def test_a_newer_format_version_asks_for_an_upgrade(snn_block, tmp_path):
    path = save_block(snn_block, tmp_path / "a.st")
    _rewrite(path, mutate_metadata=lambda m: m.update({KEY_VERSION: str(FORMAT_VERSION + 1)}))
    with pytest.raises(
        ArtifactError, match=f"format version {FORMAT_VERSION + 1}; this legokit reads up to {FORMAT_VERSION}"
    ):
        load_block(path)


def test_a_missing_tensor_is_named(snn_block, tmp_path):
    path = save_block(snn_block, tmp_path / "a.st")
    _rewrite(path, lambda tensors: tensors.pop("latent"), reseal=True)
    with pytest.raises(ArtifactError, match="missing tensor 'latent'"):
        load_block(path)


def test_a_mis_shaped_tensor_is_named(snn_block, tmp_path):
    path = save_block(snn_block, tmp_path / "a.st")
    _rewrite(path, lambda tensors: tensors.update({"latent": torch.zeros(8, 15)}), reseal=True)
    with pytest.raises(ArtifactError, match=r"tensor 'latent' has shape \(8, 15\), expected \(8, 16\)"):
        load_block(path)


def test_an_unexpected_tensor_is_named(snn_block, tmp_path):
    path = save_block(snn_block, tmp_path / "a.st")
    _rewrite(path, lambda tensors: tensors.update({"extra": torch.zeros(2)}), reseal=True)
    with pytest.raises(ArtifactError, match="unexpected tensor 'extra'"):
        load_block(path)


def test_changed_tensor_bytes_fail_the_checksum(snn_block, tmp_path):
    path = save_block(snn_block, tmp_path / "a.st")
    _rewrite(path, lambda t: t["latent"].add_(1.0))
    with pytest.raises(ArtifactError, match="does not match the checksum"):
        load_block(path)


def test_an_edited_config_fails_the_checksum(snn_block, tmp_path):
    path = save_block(snn_block, tmp_path / "a.st")

    def other_axes(metadata):
        config = json.loads(metadata[KEY_CONFIG])
        config["fft_axes"] = "channels"
        metadata[KEY_CONFIG] = json.dumps(config)

    _rewrite(path, mutate_metadata=other_axes)
    with pytest.raises(ArtifactError, match="does not match the checksum.*config"):
        load_block(path)


def test_a_corrupt_config_is_a_clean_error(snn_block, tmp_path):
    path = save_block(snn_block, tmp_path / "a.st")
    _rewrite(path, mutate_metadata=lambda m: m.update({KEY_CONFIG: "{not json"}))
    with pytest.raises(ArtifactError, match="legokit.config is not valid JSON"):
        load_block(path)


def test_an_invalid_config_value_is_a_clean_error(snn_block, tmp_path):
    path = save_block(snn_block, tmp_path / "a.st")

    def bad_depth(metadata):
        config = json.loads(metadata[KEY_CONFIG])
        config["depth"] = 0
        metadata[KEY_CONFIG] = json.dumps(config)

    _rewrite(path, mutate_metadata=bad_depth, reseal=True)
    with pytest.raises(ArtifactError, match="invalid block config: depth must be a positive integer"):
        load_block(path)


def test_a_header_length_beyond_the_file_is_a_clean_error(tmp_path):
    path = tmp_path / "a.st"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(ArtifactError, match="truncated file"):
        load_block(path)


def test_loaded_block_still_checks_input_shapes(snn_block, tmp_path):
    block = load_block(save_block(snn_block, tmp_path / "a.st"))
    with pytest.raises(ShapeError, match="modality tab"):
        block(torch.randn(2, 3, 10))


def test_a_format_1_artifact_still_loads_with_its_tensor_only_checksum(snn_block, tmp_path):
    path = save_block(snn_block, tmp_path / "a.st")

    def as_version_1(metadata):
        metadata[KEY_VERSION] = "1"

    _rewrite(path, mutate_metadata=as_version_1, reseal=True)
    assert int(read_metadata(path)[KEY_VERSION]) == 1
    x = torch.randn(3, 10)
    assert torch.equal(load_block(path)(x), snn_block.eval()(x))
