"""Hostile HDF5 bags (issue 32 item 4), family "hdf5": files that declare huge shapes, hold other objects, link to
other files or to themselves, map other files (virtual datasets), keep their data elsewhere (external storage),
compress (bombs), leave chunks unwritten, hold strings or compounds, or are truncated or corrupt. Each is a one-line
DataError naming the file, refused before `features` is read (`legokit.data.hdf5._read`), through a dataset
folder's batches, `predict_folder` and `train_block`; generated cases (hypothesis) each give no traceback, modify no
input and take under 5 s; a huge declared shape and compression bombs cost a fresh process under 50 MB."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from legokit.data import hdf5 as hdf5_module
from legokit.data.folder import DataError, DatasetFolder, load_bag, modality_shape
from legokit.predict import predict_folder
from legokit.spec import BlockSpec
from legokit.tasks import TaskSpec
from legokit.training.workflows import train_block
from legokit.wrap import wrap_builtin

from .conftest import run_python
from .hostile import deadline, hostile_cases, labelled_folder, run_case

CASES = hostile_cases(60)
IDS = "abcdefgh"  # `a` is the hostile bag: first by name, so it is also the file a modality's shape is read from
SLOWEST = 5.0
GOOD = np.arange(12, dtype="f4").reshape(3, 4) / 7


# ---- hostile files: each writer makes `path` and returns what the refusal must say ---------------------------------


def _plain(path: Path, features: Any = GOOD, **options: Any) -> h5py.File:
    handle = h5py.File(path, "w")
    if features is not None:
        handle.create_dataset("features", data=features, **options)
    return handle


def huge(path: Path, rows: int, chunked: bool, width: int = 4) -> str:
    """A declared shape past the cap, no data written: the file is a few KB."""
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", (rows, width), "f4", chunks=(1024, width) if chunked else None)
    return "as stored or read"


def bomb(path: Path, rows: int, width: int = 4) -> str:
    """Zeros, gzip level 9: each chunk written precompressed, so a file of KB declares up to GBs."""
    chunk = min(rows, (64 << 20) // (4 * width))
    with h5py.File(path, "w") as handle:
        dataset = handle.create_dataset("features", (rows, width), "f4", chunks=(chunk, width), compression="gzip")
        packed = zlib.compress(bytes(chunk * width * 4), 9)
        for start in range(0, rows, chunk):
            dataset.id.write_direct_chunk((start, 0), packed)
    return "stored through gzip"  # refused by its filter before its shape is looked at


def extra(path: Path, name: str, kind: str, first: bool) -> str:
    with _plain(path, None) as handle:
        make = {
            "dataset": lambda: handle.create_dataset(name, data=np.ones(3)),
            "group": lambda: handle.create_group(name),
            "soft": lambda: handle.__setitem__(name, h5py.SoftLink("/features")),
            "external": lambda: handle.__setitem__(name, h5py.ExternalLink("other.h5", "/x")),
            "datatype": lambda: handle.__setitem__(name, np.dtype("f4")),
        }
        if first:
            make[kind]()
        handle.create_dataset("features", data=GOOD)
        if not first:
            make[kind]()
    return f"holds {name!r} beside 'features'"


def link(path: Path, kind: str, target: str) -> str:
    """`features` (or `coords`) a link: soft, external (to a file, a pipe, itself), a group, a named datatype."""
    with _plain(path, None) as handle:
        handle.create_dataset("coords", data=np.zeros((3, 2), "i8"))
        if kind == "soft":
            handle["features"] = h5py.SoftLink(target)
        elif kind == "external":
            handle["features"] = h5py.ExternalLink(target, "/features")
        elif kind == "group":
            handle.create_group("features").create_dataset("x", data=GOOD)
        elif kind == "datatype":
            handle["features"] = np.dtype("f4")
        else:  # coords a soft link beside good features
            handle["features"] = GOOD
            del handle["coords"]
            handle["coords"] = h5py.SoftLink(target)
    return {"soft": "soft link", "external": "external link", "group": "is a Group", "datatype": "is a Datatype"}.get(
        kind, "'coords' is a soft link"
    )


def virtual(path: Path, source: str, unlimited: bool) -> str:
    with h5py.File(path, "w") as handle:
        if unlimited:
            layout = h5py.VirtualLayout((0, 4), "f4", maxshape=(None, 4))
            layout[: h5py.h5s.UNLIMITED, :] = h5py.VirtualSource(source, "x", (0, 4), maxshape=(None, 4))[
                : h5py.h5s.UNLIMITED, :
            ]
        else:
            layout = h5py.VirtualLayout((3, 4), "f4")
            layout[:] = h5py.VirtualSource(source, "x", (3, 4))
        handle.create_virtual_dataset("features", layout, fillvalue=0)
    return "virtual dataset"


FILTERS: dict[str, dict[str, Any]] = {
    "gzip": {"compression": "gzip", "compression_opts": 9},
    "lzf": {"compression": "lzf"},
    "shuffle": {"shuffle": True, "chunks": (1, 4)},
    "fletcher32": {"fletcher32": True, "chunks": (1, 4)},
    "scaleoffset": {"scaleoffset": 3},
    "shuffle, gzip": {"compression": "gzip", "shuffle": True},
}


def filtered(path: Path, name: str) -> str:
    _plain(path, **FILTERS[name]).close()
    return f"stored through {name}"


DTYPES: dict[str, Any] = {
    "strings": np.array([[b"ab"] * 4] * 3, dtype="S2"),
    "text": np.array([["ab"] * 4] * 3, dtype=h5py.string_dtype()),
    "compound": np.zeros((3, 4), dtype=[("a", "f4"), ("b", "i4")]),
    "enum": np.zeros((3, 4), dtype=h5py.enum_dtype({"no": 0, "yes": 1}, basetype="i1")),
    "bool": np.zeros((3, 4), dtype=bool),
    "complex": np.zeros((3, 4), dtype="c8"),
    "uint16": np.zeros((3, 4), dtype="u2"),
    "uint64": np.zeros((3, 4), dtype="u8"),
    "array": None,  # 3 elements of an HDF5 array type of 4 floats (numpy would unfold a subarray dtype)
    "opaque": np.zeros((3, 4), dtype="V4"),
}


def dtype(path: Path, name: str) -> str:
    with _plain(path, DTYPES[name]) as handle:
        if name == "array":
            handle.create_dataset("features", (3,), np.dtype("(4,)f4"))[:] = GOOD
    return "'features' holds"


SHAPES = {"scalar": np.float32(1), "1-D": np.ones(12, "f4"), "3-D": np.ones((3, 4, 1), "f4")}
SHAPES |= {"no rows": np.ones((0, 4), "f4"), "width 5": np.ones((3, 5), "f4"), "empty": h5py.Empty("f4")}


def shape(path: Path, name: str) -> str:
    _plain(path, SHAPES[name]).close()
    return "must have shape"


def other_width(path: Path) -> str:
    """A well-formed bag 5 wide among bags 4 wide: refused against the others, a modality of width 5 alone."""
    return shape(path, "width 5")


def unwritten(path: Path, kind: str) -> str:
    with h5py.File(path, "w") as handle:
        if kind == "contiguous":
            handle.create_dataset("features", (3, 4), "f4")
            return "are stored"
        if kind == "external":
            (path.parent / "raw.bin").write_bytes(GOOD.tobytes())
            handle.create_dataset("features", (3, 4), "f4", external=[("raw.bin", 0, 48)])
            return "external files"
        dataset = handle.create_dataset("features", (3, 4), "f4", chunks=(1, 4))
        dataset[0] = 1
    return "1 of its 3 chunks written"


def corrupt(path: Path, kind: str, at: float, byte: int) -> str | None:
    """A valid bag truncated or with one byte changed (None: it may still be valid), or bytes that are no HDF5."""
    _plain(path, chunks=(1, 4)).close()
    data = path.read_bytes()
    cut = int(at * len(data))
    if kind == "truncated":
        path.write_bytes(data[:cut])
        return "not a readable HDF5 bag"
    if kind == "flipped":
        path.write_bytes(data[:cut] + bytes([byte]) + data[cut + 1 :])
        return None
    header = json.dumps({"x": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}).encode()
    junk = {"empty": b"", "text": b"id,x\n1,2\n", "safetensors": struct.pack("<Q", len(header)) + header + bytes(48)}
    path.write_bytes(junk.get(kind, b"\x89HDF\r\n\x1a\n" + bytes([byte]) * 64))
    return "not a readable HDF5 bag"


def values(path: Path, value: float, kind: str) -> str:
    features = GOOD.astype(kind)
    with np.errstate(over="ignore"):  # 1e300 is infinite as float16 and float32: so it should be
        features[1, 2] = value
    _plain(path, features).close()
    return "holds NaN or infinite values" if kind != "f8" or not np.isfinite(value) else "float32 range"


HOSTILE: dict[str, st.SearchStrategy[Callable[[Path], str | None]]] = {
    "huge": st.builds(lambda n, c: lambda p: huge(p, n, c), st.sampled_from([2**17, 10**6, 10**9]), st.booleans()),
    "bomb": st.builds(lambda n: lambda p: bomb(p, n), st.sampled_from([2**14, 2**16, 2**18, 2**26])),
    "extra": st.builds(
        lambda n, k, f: lambda p: extra(p, n, k, f),
        st.sampled_from(["labels", "x", "Features", "coords2", "features ", "é"]),
        st.sampled_from(["dataset", "group", "soft", "external", "datatype"]),
        st.booleans(),
    ),
    "link": st.builds(
        lambda k, t: lambda p: link(p, k, t),
        st.sampled_from(["soft", "external", "group", "datatype", "coords"]),
        st.sampled_from(["/coords", "/features", "/missing", "other.h5", "/dev/zero", "a.h5"]),
    ),
    "virtual": st.builds(
        lambda s, u: lambda p: virtual(p, s, u), st.sampled_from([".", "other.h5", "/dev/zero"]), st.booleans()
    ),
    "filter": st.builds(lambda n: lambda p: filtered(p, n), st.sampled_from(sorted(FILTERS))),
    "dtype": st.builds(lambda n: lambda p: dtype(p, n), st.sampled_from(sorted(DTYPES))),
    "shape": st.builds(lambda n: lambda p: shape(p, n), st.sampled_from(sorted(set(SHAPES) - {"width 5"}))),
    "width": st.just(other_width),
    "unwritten": st.builds(lambda k: lambda p: unwritten(p, k), st.sampled_from(["contiguous", "chunked", "external"])),
    "corrupt": st.builds(
        lambda k, a, b: lambda p: corrupt(p, k, a, b),
        st.sampled_from(["truncated", "flipped", "empty", "text", "safetensors", "signature"]),
        st.floats(0, 0.99),
        st.integers(0, 255),
    ),
    "values": st.builds(
        lambda v, k: lambda p: values(p, v, k),
        st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e300]),
        st.sampled_from(["f2", "f4", "f8"]),
    ),
}
READ = {"values", "width"}  # read: its values are the problem, or a bag of width 5 is the modality's first (train)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset folder of eight HDF5 bags (splits fixed, `a` in training), a block and a spec for its modality."""
    root = tmp_path_factory.mktemp("hostile-hdf5")
    data = root / "data"
    labelled_folder(data, IDS)
    generator = np.random.default_rng(0)
    for k, sample in enumerate(IDS):
        _plain(data / "seq" / f"{sample}.h5", generator.standard_normal((1 + k % 3, 4)).astype("f4")).close()
    _plain(root / "other.h5").close()  # what external links and virtual datasets name, beside the folder
    small = dict(latent=(4, 8), dim_head=8)
    block = wrap_builtin(
        "mlp", None, "seq", "survival:4", {"in_features": 4, "hidden": 8}, (None, 4), device="cpu", **small
    )
    spec = BlockSpec("seq", "mlp", {"in_features": 4, "hidden": 8}, task=TaskSpec("survival", 4), depth=1, **small)
    spec = spec.override(epochs=1)
    train_block(data, spec, progress=False)  # the clean folder trains; the first training's one-off costs paid here
    return {"root": root, "data": data, "block": block, "spec": spec, "marker": root / "ran-code"}


@pytest.fixture
def spied(monkeypatch) -> list[Any]:
    """The bags `_read` was asked to read, with the cap lowered to 1 MiB (a file of KB declares past it)."""
    monkeypatch.setattr(hdf5_module, "MAX_SAMPLE_BYTES", 1 << 20)
    reads: list[Any] = []
    real = hdf5_module._read
    monkeypatch.setattr(hdf5_module, "_read", lambda path, *rest: reads.append(path) or real(path, *rest))
    return reads


def _fresh(world: dict[str, Any], name: str) -> tuple[Path, Path]:
    folder = world["root"] / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(world["data"], folder)
    return folder, folder / "seq" / "a.h5"


def _clean(outcome: Any, what: str) -> None:
    assert not outcome.ran_code, f"{what}: code from the input ran"
    assert outcome.traceback is None, f"{what}: {outcome.traceback}"
    assert not outcome.modified, f"{what}: modified {outcome.modified}"
    assert outcome.seconds < SLOWEST, f"{what}: took {outcome.seconds:.1f} s"


NAMED = [
    ("huge declared shape", lambda p: huge(p, 10**9, False)),
    ("huge chunked shape", lambda p: huge(p, 10**9, True)),
    ("gzip bomb of 4 GB", lambda p: bomb(p, 2**28)),
    ("gzip bomb within the cap", lambda p: bomb(p, 2**15)),
    ("extra dataset", lambda p: extra(p, "labels", "dataset", False)),
    ("extra group", lambda p: extra(p, "meta", "group", True)),
    ("external link", lambda p: link(p, "external", "other.h5")),
    ("external link to a device", lambda p: link(p, "external", "/dev/zero")),
    ("soft link", lambda p: link(p, "soft", "/coords")),
    ("soft link to itself", lambda p: link(p, "soft", "/features")),
    ("coords a soft link", lambda p: link(p, "coords", "/features")),
    ("features a group", lambda p: link(p, "group", "")),
    ("features a named datatype", lambda p: link(p, "datatype", "")),
    ("virtual dataset", lambda p: virtual(p, "other.h5", False)),
    ("virtual dataset of itself", lambda p: virtual(p, ".", False)),
    ("unlimited virtual dataset of a pipe", lambda p: virtual(p, str(p.parent / "pipe"), True)),
    *[(f"{name} filter", lambda p, n=name: filtered(p, n)) for name in FILTERS],
    *[(f"dtype {name}", lambda p, n=name: dtype(p, n)) for name in DTYPES],
    *[(f"shape {name}", other_width if name == "width 5" else lambda p, n=name: shape(p, n)) for name in SHAPES],
    *[(f"unwritten {kind}", lambda p, k=kind: unwritten(p, k)) for kind in ("contiguous", "chunked", "external")],
    ("no features", lambda p: _plain(p, None).close() or "no dataset named 'features'"),
    ("truncated", lambda p: corrupt(p, "truncated", 0.5, 0)),
    ("not HDF5", lambda p: corrupt(p, "text", 0, 0)),
    ("empty file", lambda p: corrupt(p, "empty", 0, 0)),
    ("safetensors bytes named .h5", lambda p: corrupt(p, "safetensors", 0, 0)),
    ("signature then zeros", lambda p: corrupt(p, "signature", 0, 0)),
]


@pytest.mark.parametrize("write", [w for _, w in NAMED], ids=[n for n, _ in NAMED])
def test_a_hostile_hdf5_bag_is_one_line_naming_it_before_any_read(world, spied, write, tmp_path):
    folder, hostile = _fresh(world, "named")
    os.mkfifo(folder / "seq" / "pipe")  # what a virtual dataset may name: opening it would block
    expected = write(hostile)
    attempts = [
        lambda: DatasetFolder(folder, {"seq": (None, 4)}).batch(list(IDS)),
        lambda: load_bag(hostile, (None, 4)),
    ]
    if write is not other_width:  # a bag of another width is a modality of that width, until another bag is read
        attempts.append(lambda: modality_shape(folder, "seq"))
    for attempt in attempts:
        with deadline(), pytest.raises(DataError) as caught:
            attempt()
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"{hostile}: "), message
        assert expected in message, message
    assert hostile not in spied, "a hostile bag was read before it was refused"


def test_values_out_of_range_are_refused_after_the_read(world, spied):
    folder, hostile = _fresh(world, "values")
    for value, kind in [(float("nan"), "f2"), (float("inf"), "f4"), (1e300, "f8")]:
        expected = values(hostile, value, kind)
        with pytest.raises(DataError, match=expected):
            load_bag(hostile, (None, 4))


@CASES
@given(kind=st.sampled_from(sorted(HOSTILE)), data=st.data())
def test_generated_hostile_hdf5_bags_give_no_traceback_and_change_nothing(world, spied, kind, data):
    write = data.draw(HOSTILE[kind], label=kind)
    folder, hostile = _fresh(world, "case")
    spied.clear()  # the fixture lives across the examples
    expected = write(hostile)
    seen: dict[str, str] = {}

    def attempt(name: str, action: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            try:
                return action()
            except DataError as exc:
                seen[name] = str(exc)
                raise

        return run

    actions: dict[str, Callable[[], object]] = {
        "folder": lambda: DatasetFolder(folder, {"seq": (None, 4)}).batch(list(IDS)),
        "predict": lambda: predict_folder(world["block"], folder, device="cpu", cache=False),
        "train": lambda: train_block(folder, world["spec"], progress=False),
    }
    for name, action in actions.items():
        with deadline(SLOWEST * 2):
            outcome = run_case("hdf5", attempt(name, action), [folder], world["marker"])
        _clean(outcome, f"{kind} {name}")
    if expected is not None:  # a refusal naming the file and saying why (train reads the modality's width off it)
        for name in ("folder", "predict"):
            assert seen.get(name, "").startswith(f"{hostile}: ") and expected in seen[name], seen
        if kind not in READ:
            assert hostile not in spied, f"{kind}: read before it was refused"


def test_a_huge_declared_shape_and_a_bomb_cost_a_fresh_process_under_50_mb(tmp_path):
    files = {"huge": tmp_path / "huge.h5", "bomb": tmp_path / "bomb.h5", "bomb-in-cap": tmp_path / "small-bomb.h5"}
    huge(files["huge"], 10**9, False, 1024)  # 4 TB declared
    bomb(files["bomb"], 2**28)  # 4 GiB of zeros declared, in about 4 MB
    bomb(files["bomb-in-cap"], 2**25, 4)  # 512 MiB declared, within the 1 GiB cap
    assert all(path.stat().st_size < 8 << 20 for path in files.values())
    done = run_python(
        """
        import json, resource, sys
        from pathlib import Path
        from legokit.data.folder import DataError, load_bag
        from legokit.data.hdf5 import features_layout
        import h5py
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        said = []
        for name in sys.argv[1:]:
            for attempt in (lambda: load_bag(Path(name), (None, None)), lambda: features_layout(Path(name))):
                try:
                    attempt()
                    said.append("read")
                except DataError as exc:
                    said.append(str(exc))
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps({"grew_mb": grew, "said": said}))
        """,
        *map(str, files.values()),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["grew_mb"] < 50, report
    said = report["said"]
    assert "as stored or read" in said[0] and "stored through gzip" in said[2] and "stored through gzip" in said[4]
    assert all(message.startswith(str(path)) for message, path in zip(said[::2], files.values())), said
