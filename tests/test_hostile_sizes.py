"""Sizes built before they are checked (issue 20, class 3, and the folder traversal of class 6), as hostile families
generated with hypothesis (300 cases): adapter files whose config asks for more than their tensors hold, Hugging Face
folders whose config.json claims a model its safetensors do not hold or whose index names files outside the folder,
and block specs whose encoder kwargs ask for gigabytes. Each case is a one-line LegoError or a success, within 5 s,
with its inputs untouched; two cases measure their memory in a fresh process. Real adapters and folders still load."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import legokit
from legokit.adapters import SSF, MoRA, attach
from legokit.adapters.files import attach_file, load_adapter, save_adapter
from legokit.artifacts.format import read_artifact, write_artifact
from legokit.artifacts.registry import ADAPTER
from legokit.compose.fuse import fuse
from legokit.data import ModalityBatch
from legokit.encoders import BUILTIN, build_encoder
from legokit.nn.block import BlockConfig
from legokit.spec import BlockSpec
from legokit.training.workflows import build_block
from legokit.wrap import wrap_builtin, wrap_file

from .conftest import SMALL, run_python
from .hostile import run_case

CASES = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SECONDS = 5.0
HUGE = [0, -1, 1, 2, 3, 16, 17, 40, 4096, 65536, 2**24 + 1, 2**31, 10**18, 1.5, "64", None, True, [], {}, [2, 2]]


def _clean(outcome, what: str) -> None:
    assert outcome.traceback is None, f"{what}: {outcome.traceback}"
    assert not outcome.modified, f"{what}: modified {outcome.modified}"
    assert outcome.seconds < SECONDS, f"{what}: took {outcome.seconds:.1f} s"


def _case_dir(root: Path) -> Path:
    folder = root / "case"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


# ---- adapter files ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A fused base file and a MoRA and an SSF adapter saved for it by legokit, with inputs to run them on."""
    root = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(0)
    tab = wrap_builtin("snn", None, "tab", "survival:4", {"in_features": 3, "hidden": 8}, **SMALL).eval()
    seq = wrap_builtin("abmil", None, "seq", "survival:4", {"in_features": 2, "hidden": 8}, **SMALL).eval()
    base_path = legokit.save(fuse([tab, seq], "stack"), root / "base.st")
    files = {}
    for kind, adapter in (("mora", MoRA(["tab", "seq"], rank=2)), ("ssf", SSF(["tab", "seq"]))):
        base = legokit.load(base_path)
        adapted = attach(base, adapter)
        files[kind] = save_adapter(adapted, adapter, root / f"{kind}.st", base.source_sha256)
    inputs = {"tab": ModalityBatch(torch.randn(2, 3)), "seq": ModalityBatch(torch.randn(2, 4, 2))}
    return {"root": root, "base": base_path, "files": files, "inputs": inputs}


def _edit_config(config: dict, key: str, value: object) -> None:
    config[key] = value


def _edit_sites(config: dict, first: object, second: object) -> None:
    config["sites"] = {key: [first, second] for key in config["sites"]}


def _edit_modalities(config: dict, count: int) -> None:
    config["modalities"] = [f"m{i}" for i in range(count)]


def _edit_placement(config: dict, names: object) -> None:
    config["placement"] = names


ADAPTER_CONFIG = st.one_of(
    st.builds(
        lambda k, v: lambda c: _edit_config(c, k, v),
        st.sampled_from(["type", "modalities", "rank", "sites", "placement", "base_sha256", "head_trained"]),
        st.sampled_from(HUGE + ["mora", "ssf", "lora", "0" * 64, "x" * 64, ["tab", "tab"], [1, 2]]),
    ),
    st.builds(lambda a, b: lambda c: _edit_sites(c, a, b), st.sampled_from(HUGE), st.sampled_from(HUGE)),
    st.builds(lambda n: lambda c: _edit_modalities(c, n), st.sampled_from([0, 1, 2, 3, 15, 16, 17, 30, 40, 64])),
    st.builds(
        lambda p: lambda c: _edit_placement(c, p),
        st.sampled_from([[], ["forward"], ["training"], ["a.b"], [""], ["x"] * 2, [1], "layers.0", None]),
    ),
)


def _tensor_edit(tensors: dict, how: str, pick: int) -> None:
    names = sorted(k for k in tensors if k.startswith("adapter."))
    name = names[pick % len(names)]
    if how == "drop":
        del tensors[name]
    elif how == "extra":
        tensors["adapter.sites.extra.scale"] = torch.ones(2, 2)
    elif how == "stranger":
        tensors["other.weight"] = torch.ones(1)
    elif how == "float64":
        tensors[name] = tensors[name].double()
    elif how == "int":
        tensors[name] = tensors[name].to(torch.int32)
    elif how == "flat":
        tensors[name] = tensors[name].reshape(-1)
    elif how == "grown":
        tensors[name] = torch.zeros(tensors[name].shape[0] + 1, *tensors[name].shape[1:])


ADAPTER_TENSORS = st.builds(
    lambda h, p: lambda t: _tensor_edit(t, h, p),
    st.sampled_from(["drop", "extra", "stranger", "float64", "int", "flat", "grown"]),
    st.integers(0, 7),
)


def _consistent_but_many(config: dict, tensors: dict, count: int) -> None:
    """An SSF file that really holds 2^count rows for each site (consistent, so it loads, bounded by the file)."""
    _edit_modalities(config, count)
    for name in [k for k in tensors if k.startswith("adapter.")]:
        tensors[name] = torch.ones(2**count, tensors[name].shape[1])


@settings(CASES, max_examples=100)
@given(
    kind=st.sampled_from(["mora", "ssf"]),
    edit=st.one_of(
        ADAPTER_CONFIG.map(lambda e: ("config", e)),
        ADAPTER_TENSORS.map(lambda e: ("tensors", e)),
        st.sampled_from([3, 10]).map(lambda n: ("many", n)),
    ),
)
def test_hostile_adapter_files_are_refused_before_anything_is_built(adapters, kind, edit):
    source = read_artifact(adapters["files"][kind])
    config, tensors = json.loads(json.dumps(source.config)), dict(source.tensors)
    what, change = edit
    if what == "config":
        change(config)
    elif what == "tensors":
        change(tensors)
    elif kind == "ssf":
        _consistent_but_many(config, tensors, change)
    path = write_artifact(_case_dir(adapters["root"]) / "adapter.st", ADAPTER, config, tensors)

    def load_attach_run() -> None:
        load_adapter(path)
        adapted = attach_file(legokit.load(adapters["base"]), path)
        adapted(adapters["inputs"])

    _clean(run_case("adapter-sizes", load_attach_run, [path, adapters["base"]], path.parent / "ran"), str(edit))


def test_real_adapters_still_load_and_give_the_same_outputs(adapters):
    for kind, path in adapters["files"].items():
        adapter, head, base_sha, _ = load_adapter(path)
        assert adapter.kind == kind and base_sha == legokit.load(adapters["base"]).source_sha256
        first = attach_file(legokit.load(adapters["base"]), path)(adapters["inputs"])
        again = attach_file(legokit.load(adapters["base"]), path)(adapters["inputs"])
        assert torch.equal(first, again)


def test_forty_modalities_and_a_huge_rank_are_one_line_errors(adapters, tmp_path):
    source = read_artifact(adapters["files"]["mora"])
    for change, message in (
        (lambda c: _edit_modalities(c, 40), "caps it at 16|legokit reads 1 to 16"),
        (lambda c: c.update(rank=10**6), "MoRA rank is 1,000,000"),
        (lambda c: _edit_sites(c, 2**24, 2**24), "config asks for"),
    ):
        config = json.loads(json.dumps(source.config))
        change(config)
        path = write_artifact(tmp_path / "a.st", ADAPTER, config, dict(source.tensors))
        with pytest.raises(legokit.ArtifactError, match=message):
            load_adapter(path)
    with pytest.raises(legokit.ConfigError, match="caps it at 16"):
        SSF([f"m{i}" for i in range(40)])


def test_a_file_site_of_other_widths_than_its_module_is_refused_at_attach(adapters, tmp_path):
    source = read_artifact(adapters["files"]["mora"])
    config, tensors = json.loads(json.dumps(source.config)), dict(source.tensors)
    for key in config["sites"]:
        config["sites"][key] = [5, 7]
        tensors[f"adapter.sites.{key}.down"] = torch.zeros(2, 5)
        tensors[f"adapter.sites.{key}.up"] = torch.zeros(2, 7, 2)
    path = write_artifact(tmp_path / "a.st", ADAPTER, config, tensors)
    load_adapter(path)  # consistent in itself
    with pytest.raises(legokit.ConfigError, match="has sizes \\[5, 7\\]"):
        attach_file(legokit.load(adapters["base"]), path)


# ---- Hugging Face folders ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A small real BERT folder (random weights, tokenizer.json) and a file outside any case folder."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from benchmarks.encoder_families import bert

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    path, _ = bert(root)
    outside = root / "outside"
    outside.mkdir()
    shutil.copy(path / "model.safetensors", outside / "x.safetensors")
    return {"root": root, "bert": path, "outside": outside / "x.safetensors"}


CONFIG_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "type_vocab_size",
    "num_labels",
    "image_size",
    "model_type",
    "auto_map",
    "num_local_experts",
    "depths",
    "pad_token_id",
)
HF_VALUES = st.sampled_from(
    HUGE + [32, 64, 4096, 16384, 16385, 300000, [10**6], ["a"], "bert", "nonesuch", 1e309, {"hidden_size": 10**6}]
)


def _config_edit(folder: Path, key: str, value: object, nested: bool) -> None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if nested:
        config["text_config"] = {key: value}
    else:
        config[key] = value
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


def _claim(folder: Path, hidden: int, layers: int, dummy: bool) -> None:
    """config.json claims a bigger model; the weights stay the small ones, or become one dummy tensor."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.update(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
        vocab_size=30522,
        max_position_embeddings=512,
    )
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if dummy:
        save_file({"x": torch.zeros(1)}, folder / "model.safetensors")


def _weights_edit(folder: Path, how: str, pick: int) -> None:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    tensors = load_file(path)
    names = sorted(tensors)
    name = names[pick % len(names)]
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "header length":
        path.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    elif how == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif how == "empty":
        path.write_bytes(b"")
    elif how in ("drop", "rename", "reshape", "prefixed"):
        if how == "drop":
            del tensors[name]
        elif how == "rename":
            tensors["other." + name] = tensors.pop(name)
        elif how == "reshape":
            tensors[name] = torch.zeros(tensors[name].numel() + 1)
        else:
            tensors = {"bert." + k: v for k, v in tensors.items()}
        save_file(tensors, path, metadata={"format": "pt"})
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)


def _index(folder: Path, outside: Path, shard: object, text: str | None) -> None:
    """model.safetensors replaced by an index naming `shard` (or by `text` as the index itself)."""
    weights = folder / "model.safetensors"
    keys = sorted(load_file(weights))
    if shard == "link":
        (folder / "link.safetensors").symlink_to(outside)
        shard = "link.safetensors"
    elif shard == "inside":
        weights.rename(folder / "inside.safetensors")
        shard = "inside.safetensors"
    elif shard == "absolute":
        shard = str(outside)
    if weights.exists():
        weights.unlink()
    index = text if text is not None else json.dumps({"metadata": {}, "weight_map": dict.fromkeys(keys, shard)})
    (folder / "model.safetensors.index.json").write_text(index, encoding="utf-8")


SHARDS = st.sampled_from(
    [
        "../outside/x.safetensors",
        "absolute",
        "sub/x.safetensors",
        "..",
        ".",
        "",
        "link",
        "inside",
        "missing.safetensors",
        "config.json",
        5,
        None,
        ["a"],
    ]
)
INDEX_TEXTS = st.sampled_from(
    [
        "[]",
        "{}",
        '{"weight_map": []}',
        '{"weight_map": {}}',
        "not json",
        "[" * 5000 + "]" * 5000,
        '{"weight_map": {"a": {"b": 1}}}',
    ]
)
HF_EDITS = st.one_of(
    st.builds(
        lambda k, v, n: lambda f, o: _config_edit(f, k, v, n), st.sampled_from(CONFIG_KEYS), HF_VALUES, st.booleans()
    ),
    st.builds(
        lambda h, layers, d: lambda f, o: _claim(f, h, layers, d),
        st.sampled_from([64, 256, 1024, 4096]),
        st.sampled_from([1, 12, 24]),
        st.booleans(),
    ),
    st.builds(
        lambda how, p: lambda f, o: _weights_edit(f, how, p),
        st.sampled_from(
            [
                "truncate",
                "header length",
                "garbage",
                "empty",
                "drop",
                "rename",
                "reshape",
                "prefixed",
                "directory",
                "fifo",
            ]
        ),
        st.integers(0, 40),
    ),
    st.builds(lambda s: lambda f, o: _index(f, o, s, None), SHARDS),
    st.builds(lambda t: lambda f, o: _index(f, o, "inside", t), INDEX_TEXTS),
)


@settings(CASES, max_examples=100)
@given(edit=HF_EDITS)
def test_hostile_hugging_face_folders_are_refused_before_transformers_builds(folders, edit):
    from legokit.encoders.huggingface import load_hf_folder

    folder = _case_dir(folders["root"]) / "model"
    shutil.copytree(folders["bert"], folder)
    edit(folder, folders["outside"])
    inputs = [folders["outside"], folders["bert"]]
    _clean(run_case("hf-sizes", lambda: load_hf_folder(folder), inputs, folder.parent / "ran"), "hf folder")


MEASURE = """
import json, resource, sys, time
from pathlib import Path
import legokit, transformers
from legokit.adapters.files import load_adapter
from legokit.encoders.huggingface import load_hf_folder
transformers.BertModel  # the model's code is imported before anything is measured
found = {}
for kind, path in json.loads(sys.argv[1]).items():
    before, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    try:
        (load_hf_folder if kind == "hf" else load_adapter)(Path(path))
        message = "loaded"
    except legokit.LegoError as exc:
        message = str(exc)
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
    found[kind] = {"message": message, "grew_mb": grew, "seconds": time.perf_counter() - started}
print(json.dumps(found))
"""


def test_tiny_files_asking_for_gigabytes_stay_small(folders, tmp_path):
    """The issue's probes, measured in a fresh process: adapter files of under a kilobyte whose SSF config asks for
    2^16 rows of 2^24 channels or whose MoRA config asks for rank 4096 x width 2^24, and a folder whose config.json
    claims hidden size 4096 over one dummy tensor; each refused in a few megabytes, within seconds."""
    common = {"placement": ["layers.0"], "base_sha256": "0" * 64, "head_trained": False}
    probes = {
        "ssf": (
            {"type": "ssf", "modalities": [f"m{i}" for i in range(16)], "sites": {"layers__0": [2**24, -1]}},
            ["scale", "shift"],
        ),
        "mora": (
            {"type": "mora", "modalities": ["a", "b"], "rank": 4096, "sites": {"layers__0": [2**24, 2**24]}},
            ["down", "up"],
        ),
    }
    paths = {}
    for kind, (config, names) in probes.items():
        tensors = {f"adapter.sites.layers__0.{name}": torch.zeros(1) for name in names}
        paths[kind] = str(write_artifact(tmp_path / f"{kind}.st", ADAPTER, {**config, **common}, tensors))
        assert Path(paths[kind]).stat().st_size < 1024
    folder = tmp_path / "claim"
    shutil.copytree(folders["bert"], folder)
    _claim(folder, 4096, 12, dummy=True)
    paths["hf"] = str(folder)
    done = run_python(MEASURE, json.dumps(paths))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert "config asks for" in found["ssf"]["message"] and "config asks for" in found["mora"]["message"], found
    assert "parameters the weights do not hold" in found["hf"]["message"], found
    assert all(f["grew_mb"] < 100 and f["seconds"] < SECONDS for f in found.values()), found


def test_an_index_naming_a_shard_outside_the_folder_is_refused_before_it_is_read(folders, tmp_path):
    from legokit.encoders.huggingface import load_hf_folder

    folder = tmp_path / "model"
    shutil.copytree(folders["bert"], folder)
    _index(folder, folders["outside"], "../outside/x.safetensors", None)
    with pytest.raises(legokit.EncoderError, match="not a plain file name inside the folder"):
        load_hf_folder(folder)
    with pytest.raises(legokit.EncoderError, match="not a plain file name inside the folder"):
        wrap_file(folder, "notes", "binary", latent=(4, 8), depth=1, dim_head=8, device="cpu")


def test_real_folders_still_wrap_sharded_prefixed_and_from_a_cache_snapshot(folders, tmp_path):
    from legokit.encoders.huggingface import load_hf_folder

    block = wrap_file(folders["bert"], "notes", "binary", latent=(4, 8), depth=1, dim_head=8, device="cpu")
    assert block.config.text is not None
    weights = load_file(folders["bert"] / "model.safetensors")
    keys = sorted(weights)
    sharded = tmp_path / "sharded"
    shutil.copytree(folders["bert"], sharded)
    (sharded / "model.safetensors").unlink()
    halves = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2 :]}
    for shard, names in halves.items():
        save_file({k: weights[k] for k in names}, sharded / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, names in halves.items() for k in names}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    snapshot = tmp_path / "models--x" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--x" / "blobs").mkdir()
    for file in folders["bert"].iterdir():
        shutil.copy(file, tmp_path / "models--x" / "blobs" / f"b{file.name}")
        (snapshot / file.name).symlink_to(Path("../../blobs") / f"b{file.name}")
    for folder in (sharded, snapshot):
        assert load_hf_folder(folder).text is not None


def test_a_real_image_folder_still_loads(tmp_path):
    pytest.importorskip("transformers")
    from benchmarks.encoder_families import vit
    from legokit.encoders.huggingface import load_hf_folder

    path, _ = vit(tmp_path)
    assert load_hf_folder(path).input_shape == (3, 16, 16)


# ---- block specs and built-in encoders --------------------------------------------------------------------------

SPEC_VALUES = st.sampled_from(HUGE + [8, 12000, 300000, 0.5, 2.0, -0.1, "x" * 2000])
SPEC_KWARGS = st.dictionaries(
    st.sampled_from(["in_features", "hidden", "depth", "attention", "dim", "max_tokens", "dropout", "bogus"]),
    SPEC_VALUES,
    max_size=4,
)


@settings(CASES, max_examples=100)
@given(name=st.sampled_from(sorted(BUILTIN)), kwargs=SPEC_KWARGS)
def test_hostile_spec_encoder_kwargs_are_capped_before_building(tmp_path_factory, name, kwargs):
    spec_path = tmp_path_factory.getbasetemp() / "spec.yaml"
    spec_path.write_text(
        json.dumps(
            {
                "modality": "labs",
                "encoder": {"name": name, "kwargs": kwargs},
                "latent": "4x8",
                "depth": 1,
                "dim_head": 8,
            }
        ),
        encoding="utf-8",
    )
    shape = (None, 5) if name == "abmil" else (5,)

    def parse_and_build() -> None:
        build_block(BlockSpec.from_yaml(spec_path), shape)

    _clean(run_case("spec-sizes", parse_and_build, [spec_path], spec_path.parent / "ran"), f"{name} {kwargs}")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden": 300000}, "hidden is 300,000; legokit caps it at 65,536"),
        ({"hidden": 12000, "depth": 8}, "hidden=12,000, depth=8 make"),
        ({"depth": 10**9}, "depth is 1,000,000,000"),
        ({"dropout": 3}, "dropout must be in"),
    ],
)
def test_the_issues_spec_kwargs_are_one_line_config_errors(tmp_path, kwargs, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"modality": "labs", "encoder": {"name": "snn", "kwargs": kwargs}}), encoding="utf-8")
    with pytest.raises(legokit.ConfigError, match=message):
        BlockSpec.from_yaml(spec)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("snn", {"in_features": 5, "hidden": 7, "depth": 3}),
        ("mlp", {"in_features": 5, "hidden": 7, "depth": 3}),
        ("abmil", {"in_features": 5, "hidden": 7, "attention": 4}),
        ("tokens", {"in_features": 30, "dim": 8, "max_tokens": 7}),
    ],
)
def test_each_builtin_encoders_arithmetic_is_its_real_shapes(name, kwargs):
    encoder = build_encoder(name, kwargs)
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert shapes == BUILTIN[name].weight_shapes(**kwargs)


def test_a_block_whose_capped_sizes_multiply_to_gigabytes_is_refused():
    data = wrap_builtin("snn", None, "t", "binary", {"in_features": 2}, **SMALL).config.to_dict()
    with pytest.raises(legokit.ConfigError, match="legokit caps a block at"):
        BlockConfig.from_dict({**data, "latent": [64, 4096], "depth": 64, "heads": 64, "dim_head": 1024})
