"""Hostile sample files and CSV numbers (issue 31), generated with hypothesis, through the entry points that read
them: a dataset folder's batches, `predict_folder` and `train_block` for `NAME/ID.safetensors` samples (family
"sample-header"), `read_table` and `read_labels` for numbers (family "csv-numbers"). Each case gives no traceback,
modifies no input and takes under 5 s; a sample whose header is wrong is refused before any of its tensor bytes is
read, and a cell is read as a number exactly when it follows the ASCII grammar."""

from __future__ import annotations

import csv
import json
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from legokit.data import samples as samples_module
from legokit.data.folder import DataError, DatasetFolder, read_table
from legokit.data.labels import read_labels
from legokit.predict import predict_folder
from legokit.spec import BlockSpec
from legokit.tasks import TaskSpec
from legokit.training.workflows import train_block
from legokit.wrap import wrap_builtin

from .hostile import hostile_cases, labelled_folder, run_case

CASES = hostile_cases(50)
IDS = "abcdefgh"  # `a` is the hostile sample: first by name, so it is also the file a modality's shape is read from
SLOWEST = 5.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset folder of eight samples (splits fixed, `a` in training), a block and a spec for its modality."""
    root = tmp_path_factory.mktemp("hostile-samples")
    data = root / "data"
    labelled_folder(data, IDS)
    generator = torch.Generator().manual_seed(0)
    for k, sample in enumerate(IDS[1:]):
        save_file({"x": torch.randn(1 + k % 3, 4, generator=generator)}, data / "seq" / f"{sample}.safetensors")
    small = dict(latent=(4, 8), dim_head=8)
    block = wrap_builtin(
        "mlp", None, "seq", "survival:4", {"in_features": 4, "hidden": 8}, (None, 4), device="cpu", **small
    )
    spec = BlockSpec("seq", "mlp", {"in_features": 4, "hidden": 8}, task=TaskSpec("survival", 4), depth=1, **small)
    return {"root": root, "data": data, "block": block, "spec": spec.override(epochs=1), "marker": root / "ran-code"}


def _clean(outcome: Any, what: str) -> None:
    assert not outcome.ran_code, f"{what}: code from the input ran"
    assert outcome.traceback is None, f"{what}: {outcome.traceback}"
    assert not outcome.modified, f"{what}: modified {outcome.modified}"
    assert outcome.seconds < SLOWEST, f"{what}: took {outcome.seconds:.1f} s"


# ---- sample-header: safetensors samples whose header is sparse, oversized, lying, or holds more than `x` ----------

GOOD = {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}
FAR = [2**17, 2**20, 10**9, 2**40, 10**30]  # token counts past the (lowered) cap
DTYPES = ["BOOL", "C64", "U16", "U32", "U64", "F4", "F8_E8M0", "f32", "F32 ", "", None, 7, ["F32"], {"F32": 1}]
DTYPES += ["F64", "F16", "BF16", "I8", "U8", "F8_E5M2"]  # real numbers: read (zeros, from the sparse tail)
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I8": 1, "U8": 1, "F8_E5M2": 1, "C64": 8, "U16": 2}
OFFSETS = [[0, 47], [0, 49], [1, 49], [-1, 47], [0], [0, 48, 48], ["0", 48], [0.0, 48], [48, 0], [0, 2**64], None, {}]
SHAPES = [[], [12], [3, 4, 1], [0, 4], [3, 0], [-1, 4], ["3", 4], [3.0, 4], [True, 4], [2**63, 4], None, "3,4"]
NAMES = ["y", "mask", "X", "x ", "coords", "__metadata", "", "x\x00"]


def _header(header: Any, pad: bool = True) -> bytes:
    text = json.dumps(header).encode()
    return text + b" " * (-len(text) % 8 if pad else 0)


def _file(header: Any, data: int, body: bytes = b"") -> tuple[bytes, int]:
    """A sample's first bytes (prefix, header, `body`) and the file's size once its data are truncated or extended
    to `data` bytes (a sparse tail): what a hostile writer controls."""
    text = _header(header)
    return struct.pack("<Q", len(text)) + text + body, 8 + len(text) + data


def _sparse(tokens: int, dtype: str) -> tuple[bytes, int]:
    size = tokens * 4 * SIZES[dtype]
    return _file({"x": {"dtype": dtype, "shape": [tokens, 4], "data_offsets": [0, size]}}, min(size, 16 << 20))


def _oversized(tokens: int, data: int) -> tuple[bytes, int]:
    return _file({"x": {"dtype": "F32", "shape": [tokens, 4], "data_offsets": [0, tokens * 16]}}, data)


def _extra(name: str, before: bool, declared: int, data: int) -> tuple[bytes, int]:
    other = {"dtype": "F32", "shape": [declared // 4], "data_offsets": [48, 48 + declared]}
    entries = [(name, other), ("x", GOOD)] if before else [("x", GOOD), (name, other)]
    return _file(dict(entries), 48 + data, torch.ones(3, 4).numpy().tobytes())


def _dtype(dtype: Any) -> tuple[bytes, int]:
    size = 12 * SIZES.get(dtype, 4) if isinstance(dtype, str) else 48
    return _file({"x": {"dtype": dtype, "shape": [3, 4], "data_offsets": [0, size]}}, size)


def _offsets(offsets: Any) -> tuple[bytes, int]:
    return _file({"x": {**GOOD, "data_offsets": offsets}}, 48)


def _shape(shape: Any) -> tuple[bytes, int]:
    return _file({"x": {**GOOD, "shape": shape}}, 48)


def _length(delta: int) -> tuple[bytes, int]:
    """The 8-byte prefix lies about the header's length."""
    text = _header({"x": GOOD})
    return struct.pack("<Q", max(0, min(len(text) + delta, 2**64 - 1))) + text, 8 + len(text) + 48


def _json(text: bytes) -> tuple[bytes, int]:
    return struct.pack("<Q", len(text)) + text, 8 + len(text) + 48


JUNK = [
    b"[1, 2]",
    b'"x"',
    b"{" * 300 + b"}" * 300,
    b"[" * 5000 + b"]" * 5000,
    b'{"x": ' + json.dumps(GOOD).encode() + b', "x": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 4800]}}',
    b'{"x": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}',
    b'{"__metadata__": {"a": 1}, "x": ' + json.dumps(GOOD).encode() + b"}",
    b"\xff\xfe{}",
    b'{"x": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 1' + b"0" * 5000 + b"]}}",
]

SAMPLE_HEADERS: dict[str, st.SearchStrategy[tuple[bytes, int]]] = {
    "sparse": st.builds(_sparse, st.sampled_from(FAR[:2]), st.sampled_from(["F64", "F32", "F16", "U8"]))
    | st.builds(lambda n: _oversized(n, 16 << 20), st.sampled_from(FAR)),
    "oversized": st.builds(_oversized, st.sampled_from([4, 100, 2**16, 2**40]), st.sampled_from([0, 16, 48, 60])),
    "extra-tensor": st.builds(
        _extra, st.sampled_from(NAMES), st.booleans(), st.sampled_from([4, 400, 1 << 20]), st.sampled_from([0, 4, 400])
    ),
    "wrong-dtype": st.builds(_dtype, st.sampled_from(DTYPES)),
    "offsets": st.builds(_offsets, st.sampled_from(OFFSETS)),
    "shape": st.builds(_shape, st.sampled_from(SHAPES)),
    "length": st.builds(_length, st.sampled_from([-8, -1, 1, 8, 1 << 20, 2**40, 2**63, 2**64])),
    "json": st.builds(_json, st.sampled_from(JUNK)),
}


def _write_sample(path: Path, content: bytes, size: int) -> None:
    with open(path, "wb") as handle:
        handle.write(content)
        handle.truncate(max(len(content), size))


@CASES
@given(kind=st.sampled_from(sorted(SAMPLE_HEADERS)), data=st.data())
def test_hostile_sample_headers_are_refused_before_their_tensors_are_read(world, monkeypatch, kind, data):
    content, size = data.draw(SAMPLE_HEADERS[kind], label=kind)
    monkeypatch.setattr(samples_module, "MAX_SAMPLE_BYTES", 1 << 20)  # sparse files of a few MB reach the cap
    reads: list[Path] = []
    real = samples_module._read_range
    monkeypatch.setattr(samples_module, "_read_range", lambda path, *rest: reads.append(path) or real(path, *rest))
    folder = world["root"] / "case"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(world["data"], folder)
    hostile = folder / "seq" / "a.safetensors"
    _write_sample(hostile, content, size)
    actions: dict[str, Callable[[], object]] = {
        "folder": lambda: DatasetFolder(folder, {"seq": (None, 4)}).batch(list(IDS)),
        "predict": lambda: predict_folder(world["block"], folder, device="cpu"),
        "train": lambda: train_block(folder, world["spec"], progress=False),
    }
    for name, action in actions.items():
        _clean(run_case("sample-header", action, [folder], world["marker"]), f"{kind} {name}: {content[:80]!r}")
    dtype = json.loads(content[8:])["x"]["dtype"] if kind == "wrong-dtype" else None
    if not (isinstance(dtype, str) and dtype in samples_module.SAMPLE_DTYPES):  # all but a real dtype: refused
        assert hostile not in reads, f"{kind}: {content[:80]!r} was read before it was refused"


# ---- csv-numbers: spellings Python's float() reads, and others, through read_table and read_labels ---------------

SCRIPTS = ["0123456789", "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19", "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹"]
SCRIPTS += ["०१२३४५६७८९", "⁰¹²³⁴⁵⁶⁷⁸⁹"]
PIECES = ["", "-", "+", "--", "_", ".", "e", "E", "e-", "e+", "x", "0x", "0b", "inf", "nan", "NaN", "Infinity", "NA"]
PIECES += ["\xa0", " ", "\t", "\u2007", "\u202f", "\u3000", "\u200b", "\ufeff", ",", "'", '"', "\n", "\u2212", "j"]
LATIN = str.maketrans("".join(SCRIPTS[1:]), "0123456789" * (len(SCRIPTS) - 1))  # other scripts' digits as ASCII
DIGIT_RUNS = st.builds(
    lambda script, picks: "".join(script[i] for i in picks),
    st.sampled_from(SCRIPTS),
    st.lists(st.integers(0, 9), min_size=1, max_size=4),
)
SPELLINGS = st.one_of(
    st.lists(
        st.one_of(st.sampled_from(PIECES), DIGIT_RUNS, DIGIT_RUNS.map(lambda s: s.translate(LATIN))), max_size=6
    ).map("".join),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1_5", "３_65", "3_65", "+15", "\xa015\xa0", "١٥", "１５", "0x10", "1e999", "-0", ".5", "5."]),
)
GRAMMAR = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", re.ASCII)  # the rule, written apart from legokit's


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


def _attempt(read: Callable[[], Any], got: dict[str, Any]) -> Callable[[], None]:
    def action() -> None:
        got.clear()
        try:
            got["value"] = read()
        except DataError as exc:
            got["error"] = str(exc)
            raise

    return action


@settings(CASES, max_examples=50)
@given(text=SPELLINGS)
def test_a_csv_cell_is_a_number_exactly_when_it_follows_the_ascii_grammar(world, text):
    folder = world["root"] / "numbers"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    number = float(text) if GRAMMAR.fullmatch(text) else None
    table = _csv(folder / "tab.csv", ["id", "a", "b"], [["p", text, "1"]])
    times = _csv(folder / "times.csv", ["id", "time", "event"], [["p", text, "1"]])
    events = _csv(folder / "events.csv", ["id", "time", "event"], [["p", "10", text]])
    task = TaskSpec("survival", 2)
    cases = {
        "table": (lambda: float(read_table("tab", table).rows["p"][0]), "column a"),
        "time": (lambda: float(read_labels(times, task).targets["time"][0]), "column time"),
        "event": (lambda: float(read_labels(events, task).targets["event"][0]), "column event"),
    }
    in_float32 = number is not None and bool(torch.isfinite(torch.tensor(number, dtype=torch.float32)))
    expected = {
        "table": float(torch.tensor(number, dtype=torch.float32)) if in_float32 else None,
        "time": number if number is not None and 0 < number < float("inf") else None,
        "event": number if number in (0.0, 1.0) else None,
    }
    for name, (read, column) in cases.items():
        got: dict[str, Any] = {}
        _clean(run_case("csv-numbers", _attempt(read, got), [folder], world["marker"]), f"{name} {text!r}")
        if expected[name] is None:
            assert "row 2, " + column in got.get("error", ""), f"{name} {text!r}: {got}"
        else:
            assert got.get("value") == expected[name], f"{name} {text!r}: {got}"
