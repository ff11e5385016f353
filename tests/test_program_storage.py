"""A foreign encoder is stored once in a `.st` file: its torch.export program is thin (weight records that the
block's `encoder.graph.<fqn>` tensors rebuild are empty) and refilled from those tensors at load; old files with a
full program still load and merge; a crafted thin program is refused in one line. And `legokit merge` of blocks
whose programs a summary holds as placeholders describes them without reading a meta tensor."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import legokit
import legokit.artifacts.format
import legokit.artifacts.kinds.block
from legokit.artifacts.allowlist import SAFETENSORS_CODES, program_records
from legokit.artifacts.describe import describe
from legokit.artifacts.format import read_artifact, read_artifact_summary, write_artifact
from legokit.artifacts.kinds.block import block_tensors
from legokit.artifacts.kinds.common import GRAPH, PROGRAM_PREFIX
from legokit.artifacts.kinds.composite import SHARED_TABLE, blocks_view
from legokit.artifacts.registry import BLOCK
from legokit.encoders.foreign import DTYPE_CODES, fill_program, load_program, thin_program
from legokit.errors import ArtifactError, EncoderError
from legokit.wrap import wrap_module

from .hostile import _rewrite_zip, program_mutations
from .textmodels import bert_folder

KEY = PROGRAM_PREFIX + "encoder"


def _bert_folder(folder: Path, seed: int) -> Path:
    return bert_folder(folder, seed, vocab_size=1000, hidden_size=64, intermediate_size=128)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """Two wrapped BERT blocks (modalities notes and reports), saved thin, and the first one's encoder bytes."""
    root = tmp_path_factory.mktemp("storage")
    blocks, paths = {}, {}
    for seed, modality in enumerate(("notes", "reports")):
        folder = _bert_folder(root / f"bert-{modality}", seed)
        block = legokit.wrap_file(folder, modality=modality, task="binary", latent=(8, 8), depth=1, device="cpu")
        blocks[modality] = block
        paths[modality] = legokit.save_block(block, root / f"{modality}.st")
    return {"root": root, "blocks": blocks, "paths": paths}


def _tokens(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(4, 19, (3, 7), generator=generator)
    mask = torch.arange(7) < torch.tensor([[7], [4], [2]])
    return x, mask


def _logits(block: nn.Module, seed: int = 0) -> torch.Tensor:
    block.eval()
    with torch.no_grad():
        return block(*_tokens(seed))


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _records(program: bytes) -> dict[str, int]:
    archive = zipfile.ZipFile(io.BytesIO(program))
    return {e.filename.split("/", 1)[1]: e.file_size for e in archive.infolist()}


def _full_layout(monkeypatch) -> None:
    """Save as legokit did before thin programs: the whole program beside the state dict."""
    monkeypatch.setattr(legokit.artifacts.kinds.block, "thin_program", lambda program, state: program)


# ---- the pure helpers -------------------------------------------------------------------------------------------


def test_dtype_codes_are_torch_exports_own():
    from torch._export.serde.serialize import _TORCH_TO_SERIALIZE_DTYPE

    for dtype, code in DTYPE_CODES.items():
        assert _TORCH_TO_SERIALIZE_DTYPE[dtype].value == code
    for name, code in SAFETENSORS_CODES.items():
        assert DTYPE_CODES[legokit.artifacts.format.TORCH_DTYPES[name]] == code


def test_thin_then_fill_gives_the_program_back(bert):
    block = bert["blocks"]["notes"]
    program = block.program()
    state = block.encoder.graph.state_dict()
    thin = thin_program(program, state)
    weights = [n for n in _records(program) if n.startswith("data/weights/weight_")]
    assert weights and all(_records(thin)[n] == 0 for n in weights)  # every weight is a whole tensor here
    assert all(_records(thin)[n] == size for n, size in _records(program).items() if n.startswith("data/constants/"))
    assert len(thin) < 0.3 * _bytes(state.values())
    assert thin_program(thin, state) == thin  # already thin
    assert fill_program(thin, state) == program
    assert fill_program(program, state) == program  # a full program is used as it is
    with pytest.raises(EncoderError, match="holds 0 bytes"):  # alone, a thin program is no program
        load_program(thin)


def test_tied_weights_and_views_are_stored_once_or_kept(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight  # tied: one record, two fqns
            self.register_buffer("tail", self.a.bias.detach()[2:])  # a view into another storage, with an offset

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.tanh(self.a(x))) + self.tail.sum()

    torch.manual_seed(0)
    block = wrap_module(Tied(), "tab", "binary", (4,), latent=(4, 8), dim_head=8, device="cpu")
    path = legokit.save_block(block, tmp_path / "tied.st")
    loaded = legokit.load(path)
    x = torch.randn(5, 4)
    block.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(block(x), loaded(x))
    stored = read_artifact(path).tensors[KEY].numpy().tobytes()
    config = json.loads(zipfile.ZipFile(io.BytesIO(stored)).read("archive/data/weights/model_weights_config.json"))
    record = {fqn: "data/weights/" + meta["path_name"] for fqn, meta in config["config"].items()}
    assert record["module.a.weight"] == record["module.b.weight"]
    assert _records(stored)[record["module.a.weight"]] == 0  # tied and equal: stored once, in the state dict
    assert _records(stored)[record["module.tail"]] == 16  # a view with an offset: kept in the program
    assert fill_program(stored, loaded.encoder.graph.state_dict()) == loaded.program()


# ---- a block file ----------------------------------------------------------------------------------------------


def test_a_wrapped_bert_block_holds_its_weights_once(bert, tmp_path, monkeypatch):
    block, path = bert["blocks"]["notes"], bert["paths"]["notes"]
    tensors = block_tensors(block)
    encoder = _bytes(block.encoder.parameters())
    own = _bytes(t for k, t in tensors.items() if not k.startswith(("encoder.", PROGRAM_PREFIX)))
    size = path.stat().st_size
    program = tensors[KEY].numpy().tobytes()
    structure = sum(n for name, n in _records(program).items() if name.endswith(".json"))
    ratio = size / (encoder + own)
    print(
        f"thin block file: {size:,} bytes; encoder weights {encoder:,}, block tensors {own:,}, program JSON "
        f"{structure:,}: {ratio:.3f}x (without the JSON {(size - structure) / (encoder + own):.3f}x)"
    )
    # the graph's JSON is a fixed cost (about 120 kB for this tiny BERT, 19% of its 0.56 MB of weights)
    assert size - structure <= 1.1 * (encoder + own)
    _full_layout(monkeypatch)
    old = legokit.save_block(block, tmp_path / "full.st").stat().st_size
    assert old > size + 0.9 * encoder  # what the thin layout saves: one copy of the weights


def test_reload_gives_identical_outputs(bert):
    block, path = bert["blocks"]["notes"], bert["paths"]["notes"]
    loaded = legokit.load(path)
    assert torch.equal(_logits(block), _logits(loaded))
    assert loaded.program() == block.program()  # refilled whole, byte for byte


def test_a_fine_tuned_encoder_round_trips_its_new_weights(bert, tmp_path):
    block = legokit.load(bert["paths"]["notes"])
    before = _logits(block)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in block.encoder.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    tuned = _logits(block)
    assert not torch.allclose(before, tuned)
    loaded = legokit.load(legokit.save_block(block, tmp_path / "tuned.st"))
    assert torch.equal(_logits(loaded), tuned)
    for name, value in block.encoder.graph.state_dict().items():
        assert torch.equal(loaded.encoder.graph.state_dict()[name], value)
    # the refilled program itself holds the new weights, not the ones it was exported with
    program = load_program(loaded.program())
    assert all(torch.equal(program.state_dict[n], v) for n, v in block.encoder.graph.named_parameters())


def test_an_old_full_program_file_still_loads_and_merges(bert, tmp_path, monkeypatch):
    block = bert["blocks"]["notes"]
    with monkeypatch.context() as patch:
        _full_layout(patch)
        old = legokit.save_block(block, tmp_path / "old.st")
    stored = read_artifact(old).tensors[KEY].numpy().tobytes()
    assert stored == block.program() and not any(v == 0 for n, v in _records(stored).items() if "weight_" in n)
    assert torch.equal(_logits(legokit.load(old)), _logits(block))
    merged = legokit.merge_files([old, bert["paths"]["reports"]], tmp_path / "m.st")
    model = legokit.load(merged)
    assert torch.equal(_logits(model.blocks["notes"]), _logits(block))
    assert torch.equal(_logits(model.blocks["reports"]), _logits(bert["blocks"]["reports"]))


# ---- crafted files ---------------------------------------------------------------------------------------------


def _crafted(bert, tmp_path: Path, change, program: bytes | None = None) -> Path:
    tensors = dict(read_artifact(bert["paths"]["notes"]).tensors)
    if program is not None:
        tensors[KEY] = torch.frombuffer(bytearray(program), dtype=torch.uint8)
    change(tensors)
    return write_artifact(tmp_path / "crafted.st", BLOCK, bert["blocks"]["notes"].config.to_dict(), tensors)


def _one_line_refusal(path: Path, pattern: str) -> str:
    with pytest.raises(ArtifactError, match=pattern) as caught:
        legokit.load(path)
    assert "\n" not in str(caught.value)
    return str(caught.value)


WORD = GRAPH + "module.embeddings.word_embeddings.weight"


@pytest.mark.parametrize(
    "tensor",
    [
        torch.zeros(999, 64),
        torch.zeros(1000, 64, dtype=torch.float64),
        torch.zeros(64000),
        torch.zeros(1000, 64, dtype=torch.int32),
    ],
)
def test_a_thin_program_beside_a_tensor_of_another_size_or_dtype_is_refused(bert, tmp_path, tensor):
    path = _crafted(bert, tmp_path, lambda tensors: tensors.__setitem__(WORD, tensor))
    message = _one_line_refusal(
        path,
        "record data/weights/weight_0 is empty, and the tensor beside it for "
        "module.embeddings.word_embeddings.weight is",
    )
    assert "F32 [1000, 64]" in message
    with pytest.raises(ArtifactError, match="record data/weights/weight_0 is empty|is F64; legokit merges float32"):
        legokit.merge_files([path, bert["paths"]["reports"]], tmp_path / "m.st")


def test_a_thin_program_without_its_tensor_is_refused_naming_the_record(bert, tmp_path):
    path = _crafted(bert, tmp_path, lambda tensors: tensors.pop(WORD))
    _one_line_refusal(path, "record data/weights/weight_0 is empty, and no tensor beside the program refills it")


def _edit_weights_config(program: bytes, change) -> bytes:
    def edit(records: dict[str, bytes]) -> None:
        config = json.loads(records["data/weights/model_weights_config.json"])
        change(config["config"])
        records["data/weights/model_weights_config.json"] = json.dumps(config).encode()

    return _rewrite_zip(program, edit)


def _meta(fqn: str = "module.embeddings.word_embeddings.weight", **fields):
    def change(config: dict) -> None:
        config[fqn]["tensor_meta"].update(fields)

    return change


@pytest.mark.parametrize(
    "change, pattern",
    [
        # a huge shape in tensor_meta, and a tensor of that shape claimed beside it: refused, nothing allocated
        (
            _meta(sizes=[{"as_int": 10**12}, {"as_int": 64}], strides=[{"as_int": 64}, {"as_int": 1}]),
            "is F32 \\[1000, 64\\], not F32 \\[1000000000000, 64\\]",
        ),
        # a view (offset, strides) cannot be rebuilt from a tensor alone
        (_meta(storage_offset={"as_int": 64}), "none of its tensors covers it whole"),
        (_meta(strides=[{"as_int": 1}, {"as_int": 1000}]), "none of its tensors covers it whole"),
    ],
)
def test_a_crafted_thin_program_is_refused_before_anything_is_allocated(bert, tmp_path, change, pattern):
    thin = read_artifact(bert["paths"]["notes"]).tensors[KEY].numpy().tobytes()
    path = _crafted(bert, tmp_path, lambda tensors: None, _edit_weights_config(thin, change))
    _one_line_refusal(path, pattern)


def test_a_record_of_the_wrong_length_is_still_refused(bert, tmp_path):
    thin = read_artifact(bert["paths"]["notes"]).tensors[KEY].numpy().tobytes()

    def shorten(records: dict[str, bytes]) -> None:
        records["data/weights/weight_1"] = b"\0" * 8  # neither whole nor exactly empty

    path = _crafted(bert, tmp_path, lambda tensors: None, _rewrite_zip(thin, shorten))
    _one_line_refusal(path, "record data/weights/weight_1 holds 8 bytes")

    def empty_constant(records: dict[str, bytes]) -> None:
        records["data/constants/tensor_0"] = b""  # constants are never refilled

    path = _crafted(bert, tmp_path, lambda tensors: None, _rewrite_zip(thin, empty_constant))
    _one_line_refusal(path, "record data/constants/tensor_0 holds 0 bytes")

    def extra(records: dict[str, bytes]) -> None:
        records["data/weights/extra.pkl"] = b""

    path = _crafted(bert, tmp_path, lambda tensors: None, _rewrite_zip(thin, extra))
    _one_line_refusal(path, "record data/weights/extra.pkl is not part of a torch.export program")

    def data_record(records: dict[str, bytes]) -> None:
        records[".data/payload"] = b"x"  # torch's writer replaces .data/ records: refused, not dropped

    path = _crafted(bert, tmp_path, lambda tensors: None, _rewrite_zip(thin, data_record))
    _one_line_refusal(path, "record .data/payload is not part of a torch.export program")

    def long_version(records: dict[str, bytes]) -> None:
        records[".data/version"] = b"9" * 5000

    path = _crafted(bert, tmp_path, lambda tensors: None, _rewrite_zip(thin, long_version))
    _one_line_refusal(path, "record .data/version is 5,000 bytes")


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 6)
        self.out = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.proj(x))) * mask.unsqueeze(-1)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small foreign block's thin program and the tensors beside it."""
    torch.manual_seed(0)
    block = wrap_module(Tokens(), "seq", "binary", (None, 3), latent=(4, 8), dim_head=8, device="cpu")
    state = block.encoder.graph.state_dict()
    return {
        "thin": thin_program(block.program(), state),
        "state": state,
        "marker": tmp_path_factory.mktemp("marker") / "ran-code",
    }


def _thin_mutations(thin: bytes) -> st.SearchStrategy[bytes]:
    """Edits that only a thin program can have: records emptied, refilled wrongly, views and shapes changed."""

    def records(change) -> bytes:
        return _rewrite_zip(thin, change)

    def set_record(name: str, body: bytes) -> bytes:
        return records(lambda r: r.__setitem__(name, body))

    def meta(which: int, field: str, value) -> bytes:
        def change(config: dict) -> None:
            entry = list(config.values())[which % len(config)]
            entry["tensor_meta"][field] = value

        return _edit_weights_config(thin, change)

    def shape(which: int, sizes: list[int]) -> bytes:
        def change(config: dict) -> None:
            entry = list(config.values())[which % len(config)]
            strides = [1] * len(sizes)
            for i in range(len(sizes) - 2, -1, -1):
                strides[i] = strides[i + 1] * sizes[i + 1]
            entry["tensor_meta"]["sizes"] = [{"as_int": n} for n in sizes]
            entry["tensor_meta"]["strides"] = [{"as_int": n} for n in strides]

        return _edit_weights_config(thin, change)

    def path_of_first(target: str) -> bytes:
        def change(config: dict) -> None:
            first = next(iter(config.values()))
            first["path_name"] = target

        return _edit_weights_config(thin, change)

    names = st.sampled_from(
        [
            "data/weights/weight_0",
            "data/weights/weight_1",
            "data/weights/weight_9",
            "data/constants/tensor_0",
            ".data/version",
            "data/sample_inputs/model.pt",
        ]
    )
    return st.one_of(
        st.builds(set_record, names, st.sampled_from([b"", b"\0" * 4, b"\0" * 72, b"\0" * 24, b"\0" * 96])),
        st.builds(shape, st.integers(0, 3), st.lists(st.sampled_from([0, 1, 2, 3, 6, 18, 10**12]), max_size=3)),
        st.builds(
            meta,
            st.integers(0, 3),
            st.just("strides"),
            st.lists(st.builds(lambda n: {"as_int": n}, st.sampled_from([0, 1, 3, 6])), min_size=1, max_size=2),
        ),
        st.builds(
            meta,
            st.integers(0, 3),
            st.just("storage_offset"),
            st.builds(lambda n: {"as_int": n}, st.sampled_from([0, 1, 10**9])),
        ),
        st.builds(meta, st.integers(0, 3), st.just("dtype"), st.sampled_from([1, 5, 7, 8, 13, 99])),
        st.builds(path_of_first, st.sampled_from(["weight_1", "weight_2", "weight_3", "tensor_0", "evil"])),
    )


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_loading_and_merging_agree_on_every_crafted_thin_program(small, data):
    """What merge accepts (the thin archive checked with the tensors beside it) is exactly what load accepts (the
    archive refilled, then checked whole); any refusal is an EncoderError."""
    thin, state = small["thin"], small["state"]
    program = data.draw(st.one_of(_thin_mutations(thin), program_mutations(thin, small["marker"])))
    beside = {n: (DTYPE_CODES[t.dtype], tuple(t.shape)) for n, t in state.items()}
    try:
        program_records(program, strict=True, beside=beside)
        merged = True
    except EncoderError:
        merged = False
    try:
        program_records(fill_program(program, state), strict=True)
        loaded = True
    except EncoderError:
        loaded = False
    assert merged == loaded
    assert not small["marker"].exists()


# ---- merge ---------------------------------------------------------------------------------------------------------


def test_a_merge_of_two_thin_blocks_holds_each_encoder_once_and_loads(bert, tmp_path):
    a, b = bert["paths"]["notes"], bert["paths"]["reports"]
    merged = legokit.merge_files([a, b], tmp_path / "m.st")
    weights = sum(_bytes(block.encoder.parameters()) for block in bert["blocks"].values())
    assert merged.stat().st_size < a.stat().st_size + b.stat().st_size + 64 * 1024  # the inputs' tensors, once
    assert merged.stat().st_size < weights * 1.5  # twice the weights would be 2x and more
    stored, _ = blocks_view(read_artifact(merged), ("notes", "reports"))  # the blocks' names, shared ones resolved
    for modality in ("notes", "reports"):
        program = stored[f"{PROGRAM_PREFIX}blocks.{modality}.encoder"].numpy().tobytes()
        beside = {
            n[len(f"blocks.{modality}.{GRAPH}") :]: (DTYPE_CODES[t.dtype], tuple(t.shape))
            for n, t in stored.items()
            if n.startswith(f"blocks.{modality}.{GRAPH}")
        }
        assert program_records(program, beside=beside).refill  # thin
    model = legokit.load(merged)
    for modality, block in bert["blocks"].items():
        assert torch.equal(_logits(model.blocks[modality]), _logits(block))


def test_a_fused_model_holds_each_encoder_once(bert, tmp_path):
    from legokit.artifacts.kinds.composite import composite_tensors

    merged = legokit.load(legokit.merge_files([bert["paths"]["notes"], bert["paths"]["reports"]], tmp_path / "m.st"))
    tensors = composite_tensors(merged)
    for modality, block in bert["blocks"].items():
        program = tensors[f"{PROGRAM_PREFIX}blocks.{modality}.encoder"]
        assert program.numel() < 0.3 * _bytes(block.encoder.parameters())


# ---- task 2: describe and `legokit merge` with programs held as placeholders ------------------------------------


def test_a_summary_describes_programs_it_holds_as_placeholders(bert, tmp_path, monkeypatch):
    merged = legokit.merge_files([bert["paths"]["notes"], bert["paths"]["reports"]], tmp_path / "m.st")
    summary = read_artifact_summary(merged, small=16)
    key = dict(summary.config[SHARED_TABLE])[f"{PROGRAM_PREFIX}blocks.notes.encoder"]  # equal programs, stored once
    assert summary.tensors[key].device.type == "meta" and key in summary.digests
    full = describe(merged)
    monkeypatch.setattr(legokit.artifacts.format, "SUMMARY_SMALL", 16)
    facts = describe(merged, verify=False)
    assert facts["blocks"]["notes"]["encoder"] == full["blocks"]["notes"]["encoder"]
    assert facts["blocks"]["reports"]["encoder"] == full["blocks"]["reports"]["encoder"]
    assert "sha256" in facts["blocks"]["notes"]["encoder"]


def test_the_merge_command_exits_0_when_the_summary_holds_placeholders(bert, tmp_path, monkeypatch, capsys):
    from legokit.cli.commands import main

    monkeypatch.setattr(legokit.artifacts.format, "SUMMARY_SMALL", 16)
    out = tmp_path / "m.st"
    assert main(["merge", str(bert["paths"]["notes"]), str(bert["paths"]["reports"]), "-o", str(out)]) == 0
    assert "sha256" in capsys.readouterr().out
    assert os.path.getsize(out) > 0
    legokit.load(out)
