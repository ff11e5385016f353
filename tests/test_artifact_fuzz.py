"""Property: whatever bytes of an artifact are corrupted, loading gives a working block or one clean ArtifactError."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import legokit
from legokit import ArtifactError, LegoBlock, load_block, save_block
from legokit.wrap import wrap_builtin

from .conftest import VisitEncoder

# derandomize: every run draws the same cases (seeded from each test's name and source; no example database), so a
# failure here is reproducible and a run that passes on one machine passes on all of them
FUZZ = settings(
    max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _artifact_bytes(tmp_path_factory, foreign: bool) -> bytes:
    torch.manual_seed(0)
    if foreign:
        block = legokit.wrap_module(
            VisitEncoder(), "visits", "binary", (None, 6), latent=(4, 8), dim_head=8, device="cpu"
        )
    else:
        block = wrap_builtin(
            "snn", None, "tab", "survival:4", {"in_features": 6, "hidden": 8}, latent=(4, 8), dim_head=8, device="cpu"
        )
    path = save_block(block, tmp_path_factory.mktemp("fuzz") / "a.st")
    data = _canonical(path.read_bytes())
    path.write_bytes(data)
    assert isinstance(load_block(path), LegoBlock)  # the fuzzed file starts from one that loads
    return data


def _canonical(data: bytes) -> bytes:
    """The same artifact with its header's metadata in sorted key order, padded to the same length: safetensors
    writes that map in an order that changes from process to process, and a derandomized case (a byte position)
    must hit the same byte in every run."""
    end = _header_span(data)
    header = json.loads(data[8:end])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    encoded = json.dumps(header, separators=(",", ":")).encode()
    assert len(encoded) <= end - 8
    return data[:8] + encoded.ljust(end - 8) + data[end:]


class Original(bytes):
    """The intact artifact's bytes, with a short repr so that failure reports stay readable."""

    def __repr__(self) -> str:
        return f"<artifact of {len(self)} bytes>"


@pytest.fixture(scope="module", params=[False, True], ids=["builtin", "foreign"])
def artifact(request, tmp_path_factory):
    return Original(_artifact_bytes(tmp_path_factory, request.param))


def _header_span(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def _load_cleanly(tmp_path, data: bytes) -> None:
    path = tmp_path / "fuzzed.st"
    path.write_bytes(data)
    try:
        block = load_block(path)
    except ArtifactError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(str(path)), message
        return
    assert isinstance(block, LegoBlock)


@FUZZ
@given(data=st.data())
def test_corrupted_header_bytes_give_only_the_clean_error(artifact, tmp_path, data):
    end = _header_span(artifact)
    flips = data.draw(st.lists(st.tuples(st.integers(0, end - 1), st.integers(0, 255)), min_size=1, max_size=6))
    corrupted = bytearray(artifact)
    for position, value in flips:
        corrupted[position] = value
    _load_cleanly(tmp_path, bytes(corrupted))


@FUZZ
@given(data=st.data())
def test_corrupted_tensor_bytes_give_only_the_clean_error(artifact, tmp_path, data):
    start = _header_span(artifact)
    flips = data.draw(
        st.lists(st.tuples(st.integers(start, len(artifact) - 1), st.integers(0, 255)), min_size=1, max_size=6)
    )
    corrupted = bytearray(artifact)
    for position, value in flips:
        corrupted[position] = value
    _load_cleanly(tmp_path, bytes(corrupted))


@FUZZ
@given(cut=st.integers(0, 10**9), tail=st.binary(max_size=64))
def test_truncated_or_extended_files_give_only_the_clean_error(artifact, tmp_path, cut, tail):
    _load_cleanly(tmp_path, artifact[: cut % len(artifact)] + tail)


@FUZZ
@given(
    key=st.sampled_from(["legokit.config", "legokit.kind", "legokit.format_version", "legokit.provenance"]),
    value=st.text(max_size=40),
)
def test_rewritten_header_fields_give_only_the_clean_error(artifact, tmp_path, key, value):
    end = _header_span(artifact)
    header = json.loads(artifact[8:end])
    header["__metadata__"][key] = value
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    _load_cleanly(tmp_path, struct.pack("<Q", len(encoded)) + encoded + artifact[end:])
