"""Hostile inputs for every entry point, as hypothesis strategies, and the harness that judges them.

Each case is a file (or folder) an attacker controls and an entry point that reads it: `load`, `merge_files`,
`wrap_file`, `describe`, recipes and specs, dataset folders and `predict_folder`. The harness runs a case and
records whether code from the input ran (a pickle payload touches a marker file), whether anything other than a
one-line LegoError escaped (a traceback), whether an input file changed, and how long the case took. The tests
(`tests/test_hostile.py`) assert the first three are zero; `python -m benchmarks.hostile` runs them with
LEGOKIT_HOSTILE_REPORT set, so that every outcome is also appended to that file, and reports all four.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import resource
import signal
import struct
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from legokit.artifacts.format import KEY_CHECKSUM, KEY_CONFIG, seal, tensors_digest
from legokit.errors import LegoError

REPORT_ENV = "LEGOKIT_HOSTILE_REPORT"


class Payload:
    """Unpickling this runs `os.system`, which creates the marker file: proof that code from the input ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payload_bytes(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker), protocol=2)


def torch_save_payload(marker: Path) -> bytes:
    """A torch.save zip whose data.pkl runs the payload."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("model/data.pkl", payload_bytes(marker))
        archive.writestr("model/byteorder", "little")
        archive.writestr("model/version", "3\n")
    return out.getvalue()


@dataclass
class Outcome:
    """What one hostile case did."""

    ran_code: bool
    traceback: str | None
    modified: list[str]
    seconds: float
    peak_rise_mb: float = 0.0
    peak_mb: float = 0.0


def _digests(paths: list[Path]) -> dict[Path, str]:
    found = {}
    for path in paths:
        for file in [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []:
            if file.is_file():
                found[file] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def run_case(family: str, action: Callable[[], object], inputs: list[Path], marker: Path) -> Outcome:
    """Run one case: a LegoError with a one-line message, or success, is a clean answer."""
    before = _digests(inputs)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    problem = None
    try:
        action()
    except LegoError as exc:
        if "\n" in str(exc) or not str(exc):
            problem = f"LegoError without a one-line message: {exc!r}"
    except Exception as exc:  # noqa: BLE001 - what the harness exists to catch
        problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    seconds = time.perf_counter() - started
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    after = _digests(inputs)
    modified = sorted(str(p) for p in before if after.get(p) != before[p])
    ran = marker.exists()
    if ran:
        marker.unlink()
    outcome = Outcome(ran, problem, modified, seconds, (peak_after - peak_before) / 1024, peak_after / 1024)
    report = os.environ.get(REPORT_ENV)
    if report:
        with open(report, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"family": family, **outcome.__dict__}) + "\n")
    return outcome


class Hung(BaseException):
    """Raised by the alarm in a case that blocked: not an Exception, so that nothing in legokit swallows it."""


@contextmanager
def deadline(seconds: float = 5.0) -> Iterator[None]:
    """Stop a case after `seconds` (an open() blocked on a pipe is interrupted by the signal), not hang the suite."""

    def stop(signum: int, frame: object) -> None:
        raise Hung(f"blocked for over {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def labelled_folder(data: Path, ids: str, modality: str = "seq") -> Path:
    """A dataset folder's survival labels and fixed splits for `ids` (the first five train, the sixth val, the rest
    test), and its empty `modality/` folder for the sample files a test writes."""
    (data / modality).mkdir(parents=True)
    (data / "labels.csv").write_text(
        "id,time,event\n" + "".join(f"{i},{10 + 5 * k},{k % 2}\n" for k, i in enumerate(ids))
    )
    splits = "".join(f"{i},{'train' if k < 5 else 'val' if k < 6 else 'test'}\n" for k, i in enumerate(ids))
    (data / "splits.csv").write_text("id,split\n" + splits)
    return data


# ---- archive mutations: records added in every place the loaders read, and the allowlist's other rules ----

PROGRAM_PLACES = (
    "models/other.json",
    "data/weights/extra",
    "data/constants/extra",
    "data/sample_inputs/model.pt",
    "data.pkl",
    "constants.pkl",
    "extra/x.pkl",
    "data/weights/model_weights_config.json.pt",
    ".data/payload",
    "models/model.pt",
    "data/constants/lifted_tensor_0",
    "archive_format.pkl",
)


def _rewrite_zip(
    program: bytes, change: Callable[[dict[str, bytes]], None], deflate: set[str] = frozenset(), root: str | None = None
) -> bytes:
    archive = zipfile.ZipFile(io.BytesIO(program))
    old_root = archive.namelist()[0].split("/", 1)[0]
    records = {n.split("/", 1)[1]: archive.read(n) for n in archive.namelist()}
    change(records)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name, data in records.items():
            kind = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            target.writestr(f"{root or old_root}/{name}", data, compress_type=kind)
    return out.getvalue()


def program_mutations(program: bytes, marker: Path) -> st.SearchStrategy[bytes]:
    """Hostile variants of a valid torch.export program."""
    evil = payload_bytes(marker)

    def add_record(place: str, body: bytes) -> bytes:
        return _rewrite_zip(program, lambda r: r.__setitem__(place, body))

    def pickled_weight(which: str) -> bytes:
        def change(records: dict[str, bytes]) -> None:
            name = f"data/{which}/model_{which}_config.json"
            config = json.loads(records[name])
            config["config"]["evil"] = {
                "path_name": "evil",
                "is_param": False,
                "use_pickle": True,
                "tensor_meta": {"dtype": 7, "sizes": []},
            }
            records[name] = json.dumps(config).encode()
            records[f"data/{which}/evil"] = evil

        return _rewrite_zip(program, change)

    def object_constant(prefix: str, which: str) -> bytes:
        """A record named the way torch's loader unpickles (custom_obj_*, opaque_obj_*), declared as a raw tensor
        of exactly its length, with use_pickle false: it must still be refused."""

        def change(records: dict[str, bytes]) -> None:
            name = f"data/{which}/model_{which}_config.json"
            config = json.loads(records[name])
            config["config"]["evil"] = {
                "path_name": f"{prefix}0",
                "is_param": False,
                "use_pickle": False,
                "tensor_meta": {
                    "dtype": 1,
                    "sizes": [{"as_int": len(evil)}],
                    "strides": [{"as_int": 1}],
                    "requires_grad": False,
                    "storage_offset": {"as_int": 0},
                    "device": {"type": "cpu", "index": None},
                    "layout": 7,
                },
            }
            records[name] = json.dumps(config).encode()
            records[f"data/{which}/{prefix}0"] = evil

        return _rewrite_zip(program, change)

    def json_edit(name: str, text: bytes) -> bytes:
        return _rewrite_zip(program, lambda r: r.__setitem__(name, text))

    def custom_objects() -> bytes:
        def change(records: dict[str, bytes]) -> None:
            model = json.loads(records["models/model.json"])
            model["graph_module"]["graph"]["custom_obj_values"] = {"obj": {"name": "evil", "class_fqn": "os.system"}}
            records["models/model.json"] = json.dumps(model).encode()

        return _rewrite_zip(program, change)

    def resize(delta: int) -> bytes:
        def change(records: dict[str, bytes]) -> None:
            name = next(n for n in records if n.startswith("data/weights/weight_"))
            records[name] = (
                records[name][: max(0, len(records[name]) + delta)] if delta < 0 else records[name] + b"\0" * delta
            )

        return _rewrite_zip(program, change)

    json_records = (
        "models/model.json",
        "data/weights/model_weights_config.json",
        "data/constants/model_constants_config.json",
    )
    junk = st.one_of(
        st.just(evil),
        st.binary(max_size=64),
        st.just(b"{}"),
        st.just(b"[" * 5000 + b"]" * 5000),
        st.just(b'{"config": {}}'),
    )
    return st.one_of(
        st.builds(add_record, st.sampled_from(PROGRAM_PLACES), junk),
        st.builds(pickled_weight, st.sampled_from(["weights", "constants"])),
        st.builds(
            object_constant,
            st.sampled_from(["opaque_obj_", "custom_obj_", "tensor_x", "weight_"]),
            st.sampled_from(["weights", "constants"]),
        ),
        st.builds(json_edit, st.sampled_from(json_records), junk),
        st.just(custom_objects()),
        st.builds(resize, st.sampled_from([-4, -1, 1, 4, 1 << 20])),
        st.builds(lambda n: _rewrite_zip(program, lambda r: None, deflate={n}), st.sampled_from(json_records)),
        st.builds(lambda root: _rewrite_zip(program, lambda r: None, root=root), st.sampled_from(["", "..", "a/b"])),
        st.builds(lambda cut: program[:cut], st.integers(0, len(program) - 1)),
        st.builds(
            lambda at, byte: program[:at] + bytes([byte]) + program[at + 1 :],
            st.integers(0, len(program) - 1),
            st.integers(0, 255),
        ),
    )


# ---- headers of .st files: metadata and configs resealed, so that they reach the parsers ----

CONFIG_FIELDS = (
    "latent",
    "depth",
    "heads",
    "dim_head",
    "ff_mult",
    "input_shape",
    "fft_axes",
    "dropout",
    "task",
    "encoder",
    "modality",
    "input_dtype",
    "text",
)
HUGE = st.sampled_from([0, -1, 10**6, 10**7, 2**31, 10**18, 1.5, "64", None, [], {}, [10**6, 10**6], [64, 64, 64]])


def config_edits() -> st.SearchStrategy[tuple[str, object]]:
    """(field, value) edits of a block config: huge sizes, wrong types, nonsense."""
    return st.tuples(
        st.sampled_from(CONFIG_FIELDS),
        st.one_of(HUGE, st.text(max_size=8), st.dictionaries(st.text(max_size=4), HUGE, max_size=3)),
    )


def header_with(data: bytes, change: Callable[[dict], None]) -> bytes:
    """An artifact's bytes with its safetensors header JSON changed (tensor data kept)."""
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    change(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + body


def resealed(source: Path, target: Path, change: Callable[[dict], object]) -> Path:
    """A copy of an artifact with its config changed and its checksum recomputed, as a hostile writer would."""
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(source)
    config = json.loads(metadata[KEY_CONFIG])
    change(config)
    metadata[KEY_CONFIG] = json.dumps(config)
    metadata[KEY_CHECKSUM] = seal(metadata, tensors_digest(tensors))
    save_file(tensors, target, metadata=metadata)
    return target


def hostile_cases(examples: int) -> settings:
    """Hypothesis settings of a hostile family: `examples` generated cases, the same ones every run, no deadline
    (each case carries its own), function-scoped fixtures allowed."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
