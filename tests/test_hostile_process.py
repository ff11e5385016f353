"""Hostile files and process conditions (generated with hypothesis, 250+ cases): outputs and inputs that are pipes,
sockets, devices or directories are refused in one line before anything blocks or is replaced; the demo never
writes into a folder it did not make; thread counts are capped to the usable CPUs; a closed standard output ends
quietly; JSON output is valid JSON (null for an undefined metric); splits.csv names each id once; a model whose
forward fails ends in one line. Each case answers in under 5 s (a case that blocks is stopped and reported)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import legokit
from legokit.cli.commands import _finite
from legokit.data.folder import DataError, modality_shape, read_texts
from legokit.data.training import SplitData
from legokit.demo import MARKER, claim_folder, run_demo
from legokit.io.atomic import refuse_inputs, write_atomic
from legokit.predict import predict_folder
from legokit.tasks import TaskSpec
from legokit.threads import ThreadChoice, apply_threads, usable_cpus
from legokit.training.workflows import evaluate_model
from legokit.wrap import wrap_builtin

from .conftest import cli_here
from .hostile import deadline, hostile_cases, run_case

CASES = hostile_cases(40)
SMALL = dict(latent=(4, 8), dim_head=8, device="cpu")
LIMIT = 5.0  # seconds a case may take; one that blocks (a pipe opened for reading) is stopped here


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two small binary blocks (a table and a bag modality), a dataset folder with every kind of input file."""
    root = tmp_path_factory.mktemp("proc")
    torch.manual_seed(0)
    tab = wrap_builtin("snn", None, "tab", "binary", {"in_features": 3, "hidden": 8}, **SMALL)
    seq = wrap_builtin("mlp", None, "seq", "binary", {"in_features": 4, "hidden": 8}, input_shape=(None, 4), **SMALL)
    data = root / "data"
    _dataset(data, [i % 2 for i in range(12)])
    return {
        "root": root,
        "data": data,
        "marker": root / "ran-code",
        "tab": legokit.save_block(tab, root / "tab.st"),
        "seq": legokit.save_block(seq, root / "seq.st"),
        "blocks": {"tab": tab.eval(), "seq": seq.eval()},
    }


def _dataset(folder: Path, labels: list[int]) -> Path:
    """labels.csv, splits.csv, tab.csv, seq/ID.safetensors and notes/ID.txt for samples s0, s1, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"s{i}" for i in range(len(labels))]
    (folder / "labels.csv").write_text("id,label\n" + "".join(f"{i},{y}\n" for i, y in zip(ids, labels)))
    splits = ["train"] * (len(ids) - 4) + ["val", "val", "test", "test"]
    (folder / "splits.csv").write_text("id,split\n" + "".join(f"{i},{s}\n" for i, s in zip(ids, splits)))
    (folder / "tab.csv").write_text("id,x,y,z\n" + "".join(f"{i},{k},{k % 3},1\n" for k, i in enumerate(ids)))
    (folder / "seq").mkdir(exist_ok=True)
    (folder / "notes").mkdir(exist_ok=True)
    for k, sample in enumerate(ids):
        save_file({"x": torch.full((1 + k % 3, 4), float(k))}, folder / "seq" / f"{sample}.safetensors")
        (folder / "notes" / f"{sample}.txt").write_text(f"note {k}")
    return folder


def _case_dir(world, name: str = "case") -> Path:
    folder = world["root"] / name
    if folder.exists():
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    folder.mkdir()
    return folder


def _clean(outcome, what: str) -> None:
    assert not outcome.ran_code, f"{what}: code from the input ran"
    assert outcome.traceback is None, f"{what}: {outcome.traceback}"
    assert not outcome.modified, f"{what}: modified {outcome.modified}"
    assert outcome.seconds < LIMIT, f"{what}: took {outcome.seconds:.1f} s"


def _one_line(done: subprocess.CompletedProcess, what: str) -> str:
    assert done.returncode == 1, f"{what}: exit {done.returncode}: {done.stderr}"
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, f"{what}: {done.stderr!r}"
    return done.stderr


# ---- special files: what they are, made in a case folder ----

SPECIAL = ("fifo", "socket", "directory", "link to a fifo", "link to /dev/null", "link to a directory")


def make_special(path: Path, kind: str) -> None:
    """A pipe, a socket, a directory, or a symbolic link to one (or to the system's /dev/null, never opened)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
    elif kind == "directory":
        path.mkdir()
    elif kind == "link to /dev/null":
        path.symlink_to("/dev/null")
    else:
        real = path.with_name(path.name + ".real")
        os.mkfifo(real) if kind == "link to a fifo" else real.mkdir()
        path.symlink_to(real)


def file_type(path: Path) -> int:
    return stat.S_IFMT(os.lstat(path).st_mode)


def _devnull_intact() -> None:
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode), "/dev/null is no longer a character device"


# ---- 5. special files as outputs: refused before any work, never replaced ----


def _output_commands(world, case: Path, target: str) -> dict[str, list[str]]:
    tab, seq, data = str(world["tab"]), str(world["seq"]), str(world["data"])
    other = str(case / "other.out")
    return {
        "predict -o": ["predict", tab, data, "-o", target],
        "predict --json": ["predict", tab, data, "-o", other, "--json", target],
        "eval --json": ["eval", tab, data, "--json", target],
        "eval --plot": ["eval", tab, data, "--plot", target],
        "train -o": ["train", data, "--modality", "tab", "--task", "binary", "--latent", "4x8", "-o", target],
        "train --plot": [
            "train",
            data,
            "--modality",
            "tab",
            "--task",
            "binary",
            "--latent",
            "4x8",
            "-o",
            other,
            "--plot",
            target,
        ],
        "inspect --json": ["inspect", tab, "--json", target],
        "merge -o": ["merge", tab, seq, "-o", target],
        "merge --json": ["merge", tab, seq, "-o", other, "--json", target],
        "fuse -o": ["fuse", tab, seq, "--data", data, "-o", target],
        "adapt -o": ["adapt", tab, "--method", "ssf", "--data", data, "-o", target],
        "demo --json": ["demo", "-o", str(case / "demo"), "--json", target],
        "pull -o": ["pull", "org/name", "-o", target],
    }


OUTPUT_COMMANDS = (
    "predict -o",
    "predict --json",
    "eval --json",
    "eval --plot",
    "train -o",
    "train --plot",
    "inspect --json",
    "merge -o",
    "merge --json",
    "fuse -o",
    "adapt -o",
    "demo --json",
    "pull -o",
)


@settings(CASES, max_examples=70)
@given(kind=st.sampled_from(SPECIAL), command=st.sampled_from(OUTPUT_COMMANDS))
def test_an_output_that_is_a_pipe_a_socket_a_device_or_a_folder_is_refused_before_the_work(world, kind, command):
    case = _case_dir(world)
    target = case / "out"
    make_special(target, kind)
    before = file_type(target)
    args = _output_commands(world, case, str(target))[command]
    started = time.perf_counter()
    with deadline():
        done = cli_here(*args)
    message = _one_line(done, f"{command} {kind}")
    assert "not a regular file" in message or "is a directory" in message, message
    assert time.perf_counter() - started < LIMIT and file_type(target) == before
    assert sorted(p.name for p in case.iterdir()) == sorted(p.name for p in case.iterdir() if p.name.startswith("out"))
    _devnull_intact()


@settings(CASES, max_examples=12)
@given(kind=st.sampled_from(SPECIAL))
def test_the_library_writers_refuse_special_files_too(world, kind):
    case = _case_dir(world)
    target = case / "out"
    make_special(target, kind)
    before = file_type(target)
    block = legokit.load(world["tab"])
    for write in (
        lambda: write_atomic(target, b"x"),
        lambda: legokit.save_block(block, target),
        lambda: predict_folder(block, world["data"], device="cpu").write(target),
    ):
        with deadline(), pytest.raises(legokit.WriteError, match="not a regular file|is a directory"):
            write()
    assert file_type(target) == before
    _devnull_intact()


def test_dev_null_itself_is_refused_as_an_output_and_stays_a_device():
    """Checked without writing: the check every writer runs first (as root, a write would replace the node)."""
    for path in ("/dev/null", "/dev/zero"):
        with pytest.raises(legokit.WriteError, match="character device, not a regular file"):
            refuse_inputs(path, [])
    _devnull_intact()
    if os.geteuid() != 0:  # the whole command, only where a bug could not replace the system's node
        done = cli_here("inspect", "/dev/null", "--json", "/dev/null")
        assert done.returncode == 1 and "Traceback" not in done.stderr
        _devnull_intact()


def test_json_to_standard_output_is_still_standard_output(world):
    done = cli_here("inspect", str(world["tab"]), "--json", "-")
    assert done.returncode == 0 and json.loads(done.stdout)["kind"] == "block"


# ---- 5. special files as inputs: every file legokit reads from a folder ----

INPUT_FILES = ("labels.csv", "splits.csv", "tab.csv", "seq/s3.safetensors", "seq/s0.safetensors", "notes/s2.txt")
INPUT_KINDS = (*SPECIAL, "dangling link")


def _entry_points(world, folder: Path) -> dict[str, tuple[Callable[[], object], set[str]]]:
    """Each way legokit reads a dataset folder, and the files it reads."""
    tab, seq = world["blocks"]["tab"], world["blocks"]["seq"]
    binary = TaskSpec.parse("binary")
    every = {"labels.csv", "splits.csv"}
    return {
        "predict tab": (lambda: predict_folder(tab, folder, device="cpu"), {"tab.csv"}),
        "predict seq": (
            lambda: predict_folder(seq, folder, device="cpu"),
            {"seq/s3.safetensors", "seq/s0.safetensors"},
        ),
        "eval tab": (lambda: evaluate_model(tab, folder, split="all"), {*every, "tab.csv"}),
        "load seq": (
            lambda: SplitData.load(folder, {"seq": (None, 4)}, binary).batch([f"s{i}" for i in range(12)]),
            {*every, "seq/s3.safetensors", "seq/s0.safetensors"},
        ),
        "shape seq": (lambda: modality_shape(folder, "seq"), {"seq/s0.safetensors"}),
        "texts": (lambda: read_texts("notes", folder), {"notes/s2.txt"}),
    }


@settings(CASES, max_examples=70)
@given(
    kind=st.sampled_from(INPUT_KINDS),
    name=st.sampled_from(INPUT_FILES),
    entry=st.sampled_from(["predict tab", "predict seq", "eval tab", "load seq", "shape seq", "texts"]),
)
def test_a_pipe_or_device_named_like_a_dataset_file_is_refused_without_blocking(world, kind, name, entry):
    folder = _dataset(_case_dir(world), [i % 2 for i in range(12)])
    target = folder / name
    target.unlink()
    if kind == "dangling link":
        target.symlink_to(folder / "nowhere")
    else:
        make_special(target, kind)
    action, reads = _entry_points(world, folder)[entry]
    raised: list[str] = []

    def attempt() -> None:
        try:
            action()
        except legokit.LegoError as exc:
            raised.append(str(exc))
            raise

    with deadline():
        outcome = run_case("special input", attempt, [world["tab"], world["seq"]], world["marker"])
    _clean(outcome, f"{entry}: {name} as {kind}")
    if name in reads:
        assert raised and str(target) in raised[0], f"{entry}: {name} as {kind} was read: {raised}"
        assert "regular file" in raised[0] or "no such file" in raised[0], raised[0]
    _devnull_intact()


NAMED_INPUTS = ("predict MODEL", "merge MODEL", "inspect MODEL", "train --spec", "run RECIPE", "train --block")


@settings(CASES, max_examples=30)
@given(kind=st.sampled_from(SPECIAL), command=st.sampled_from(NAMED_INPUTS))
def test_an_artifact_spec_or_recipe_that_is_a_special_file_is_one_line(world, kind, command):
    case = _case_dir(world)
    target = case / "input"
    make_special(target, kind)
    data, out = str(world["data"]), str(case / "o.st")
    args = {
        "predict MODEL": ["predict", str(target), data, "-o", str(case / "p.csv")],
        "merge MODEL": ["merge", str(target), str(world["tab"]), "-o", out],
        "inspect MODEL": ["inspect", str(target)],
        "train --spec": ["train", data, "--spec", str(target), "--modality", "tab", "-o", out],
        "run RECIPE": ["run", str(target)],
        "train --block": ["train", data, "--block", str(target), "-o", out],
    }[command]
    with deadline():
        _one_line(cli_here(*args), f"{command} as {kind}")
    assert not (case / "o.st").exists()
    _devnull_intact()


# ---- 6. the demo never writes into a folder it did not make ----

USER_FILES = (
    "data/labels.csv",
    "data/labs.csv",
    "data/splits.csv",
    "data/visits/1.safetensors",
    "labs.st",
    "results.json",
    "seed-0/labs.st",
    "notes.txt",
    ".hidden",
    "data/README.txt",
)


@settings(CASES, max_examples=30)
@given(
    files=st.dictionaries(st.sampled_from(USER_FILES), st.binary(max_size=32), min_size=1, max_size=4),
    via=st.sampled_from(["folder", "link to the folder", "cli"]),
)
def test_the_demo_refuses_a_folder_of_the_users_and_leaves_it_untouched(world, files, via):
    case = _case_dir(world)
    mine = case / "mine"
    for name, content in files.items():
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_bytes(content)
    out = mine
    if via == "link to the folder":
        out = case / "link"
        out.symlink_to(mine)
    listing = sorted(str(p.relative_to(mine)) for p in mine.rglob("*"))
    if via == "cli":
        with deadline():
            message = _one_line(cli_here("demo", "-o", str(out), "--seeds", "1", "--device", "cpu"), "demo")
        assert str(out) in message
    else:
        with deadline():
            outcome = run_case("demo", lambda: run_demo(out, seeds=1, progress=False), [mine], world["marker"])
        _clean(outcome, f"demo into {sorted(files)}")
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == listing
    assert all((mine / name).read_bytes() == content for name, content in files.items())


@pytest.mark.parametrize("kind", ["file", "fifo", "link to /dev/null"])
def test_the_demo_refuses_an_out_that_is_not_a_folder(world, kind):
    case = _case_dir(world)
    out = case / "out"
    if kind == "file":
        out.write_bytes(b"mine")
    else:
        make_special(out, "fifo" if kind == "fifo" else "link to /dev/null")
    with deadline():
        message = _one_line(cli_here("demo", "-o", str(out), "--seeds", "1"), kind)
    assert "is not a folder" in message
    assert kind != "file" or out.read_bytes() == b"mine"
    _devnull_intact()


def test_the_demo_takes_new_and_empty_folders_and_its_own_again(world):
    case = _case_dir(world)
    claim_folder(case / "new" / "deeper")
    (case / "empty").mkdir()
    claim_folder(case / "empty")
    for folder in (case / "new" / "deeper", case / "empty"):
        assert (folder / MARKER).is_file()
        (folder / "results.json").write_text("{}")  # an earlier run's output
        claim_folder(folder)  # its own folder: reused


# ---- 7. threads: capped to the usable CPUs, bad values one line ----

THREAD_FLAGS = st.one_of(
    st.integers(-3, 4).map(str),
    st.integers(5, 10**30).map(str),
    st.sampled_from(["100000", "1e5", "abc", "", "0x10", "３", "2.5", "-0", "9" * 400]),
)


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    previous = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None) if previous is None else os.environ.__setitem__(name, previous)
        torch.set_num_threads(1)


def _predict_with_threads(world, extra: list[str]) -> subprocess.CompletedProcess:
    out = world["root"] / "threads.csv"
    try:
        return cli_here("predict", str(world["tab"]), str(world["data"]), "-o", str(out), *extra)
    except SystemExit as exc:  # argparse refuses a value that is no integer: its usage line, exit 2
        return subprocess.CompletedProcess(extra, exc.code, "", "")


def _integer(text: str) -> int | None:
    """What argparse's int() makes of a flag's text (None: it refuses it)."""
    try:
        return int(text)
    except ValueError:
        return None


@settings(CASES, max_examples=30)
@given(value=THREAD_FLAGS)
def test_any_threads_flag_is_capped_or_refused_in_one_line(world, value):
    with _environment("OMP_NUM_THREADS", None), deadline():
        done = _predict_with_threads(world, ["--threads", value])
        assert torch.get_num_threads() <= usable_cpus()
    assert "Traceback" not in done.stderr
    number = _integer(value)
    if number is None:
        assert done.returncode in (1, 2), done.stderr
    elif number < 1:
        assert "must be a positive integer" in _one_line(done, value)
    else:
        assert done.returncode == 0, done.stderr
        assert (number > usable_cpus()) == ("CPU threads" in done.stderr), done.stderr


OMP_VALUES = st.one_of(
    st.integers(1, 10**12).map(str),
    st.sampled_from(
        ["100000", "0", "-3", "abc", "4,2", " 8 ", "100000,2", "9" * 5000, "²", "２", "1", "", "0,4", "1e5", "00012"]
    ),
)


@settings(CASES, max_examples=30)
@given(value=OMP_VALUES)
def test_any_omp_num_threads_is_capped_or_refused_in_one_line(world, value):
    with _environment("OMP_NUM_THREADS", value), deadline():
        done = _predict_with_threads(world, [])
        assert torch.get_num_threads() <= usable_cpus()
    assert "Traceback" not in done.stderr
    outer = value.split(",")[0].strip()
    if outer and not (outer.isascii() and outer.isdigit() and outer.strip("0")):
        assert "OMP_NUM_THREADS must be a positive integer" in _one_line(done, value)
    else:
        assert done.returncode == 0, done.stderr


@settings(CASES, max_examples=30)
@given(threads=st.integers(1, 10**40), cpus=st.integers(1, 512))
def test_applied_threads_never_exceed_the_cpus(threads, cpus):
    try:
        applied = apply_threads(ThreadChoice(threads, "--threads"), cpus=min(cpus, usable_cpus()))
        assert applied.threads == min(threads, cpus, usable_cpus()) == torch.get_num_threads()
    finally:
        torch.set_num_threads(1)


# ---- 7. standard output closed by its reader; a huge thread count in a fresh process ----


def _piped(command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`legokit COMMAND | head -c 0`: the reader is gone before legokit writes (what `| head -c 10` is once it has
    its ten bytes, made certain rather than a race), with pipefail so that legokit's status is the pipeline's."""
    line = f"set -o pipefail; {sys.executable} -m legokit.cli {command} | head -c 0"
    return subprocess.run(
        ["bash", "-c", line], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_rich_output_to_a_closed_pipe_ends_quietly(world):
    """No traceback, no 'Exception ignored': exit 1, as rich itself exits when the pipe closes under its output."""
    done = _piped(f"inspect {world['tab']}")
    assert done.returncode == 1 and done.stderr == "", done.stderr


def test_json_to_a_closed_pipe_with_a_huge_thread_count_ends_quietly(world):
    """`--json - | head`, with --threads and OMP_NUM_THREADS far above the CPUs: no segfault, no traceback, exit 1."""
    done = _piped(
        f"predict {world['tab']} {world['data']} -o {world['root'] / 'h.csv'} --threads 100000 --json -",
        {"OMP_NUM_THREADS": "100000"},
    )
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert "asks for 100000 CPU threads" in done.stderr and "Segmentation" not in done.stderr


# ---- 7. JSON output is valid JSON; a one-class split says its metric is undefined ----


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON output")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "task, labels",
    [("binary", [0] * 12), ("binary", [1] * 12), ("multiclass:3", [2] * 12), ("binary", [0, 1] * 4 + [1, 1, 0, 1])],
)
def test_a_one_class_split_gives_valid_json_with_null_and_a_warning(world, task, labels):
    folder = _dataset(_case_dir(world), labels)
    report, block = folder.parent / "train.json", folder.parent / "b.st"
    with deadline(30):
        done = cli_here(
            "train",
            str(folder),
            "--modality",
            "tab",
            "--task",
            task,
            "--latent",
            "4x8",
            "--epochs",
            "2",
            "--device",
            "cpu",
            "-o",
            str(block),
            "--json",
            str(report),
        )
    assert done.returncode == 0, done.stderr
    result = _strict(report.read_text())
    assert result["val"]["auc"] is None and "undefined" in done.stderr
    assert all(row["auc"] is None for row in result["history"])
    one_class_test = len(set(labels[-2:])) == 1
    assert (result["test"]["auc"] is None) == one_class_test
    scored = cli_here("eval", str(block), str(folder), "--split", "val", "--json", "-")
    assert scored.returncode == 0 and _strict(scored.stdout)["auc"] is None
    assert "class" in scored.stderr and "undefined" in scored.stderr


FLOATS = st.floats(allow_nan=True, allow_infinity=True)
NESTED = st.recursive(
    st.one_of(FLOATS, st.integers(), st.text(max_size=4), st.none(), st.booleans()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner), st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(CASES, max_examples=30)
@given(value=NESTED)
def test_json_output_of_any_result_is_strict_json(value):
    text = json.dumps(_finite({"result": value}), allow_nan=False)
    assert "NaN" not in text and "Infinity" not in text
    _strict(text)


# ---- 7. splits.csv (and every id-keyed CSV) names each id once ----


@settings(CASES, max_examples=40)
@given(
    rows=st.lists(st.tuples(st.integers(0, 11), st.sampled_from(["train", "val", "test"])), min_size=12, max_size=16),
    which=st.sampled_from(["splits.csv", "labels.csv", "tab.csv"]),
)
def test_an_id_listed_twice_is_an_error_naming_the_id_and_its_rows(world, rows, which):
    folder = _dataset(_case_dir(world), [i % 2 for i in range(12)])
    ids = [f"s{i}" for i, _ in rows]
    if which == "splits.csv":
        body = "id,split\n" + "".join(f"s{i},{split}\n" for i, split in rows)
    elif which == "labels.csv":
        body = "id,label\n" + "".join(f"s{i},{i % 2}\n" for i, _ in rows)
    else:
        body = "id,x,y,z\n" + "".join(f"s{i},1,2,3\n" for i, _ in rows)
    (folder / which).write_text(body)
    first_twice = next((i for n, i in enumerate(ids) if i in ids[:n]), None)
    raised: list[str] = []

    def load() -> None:
        try:
            SplitData.load(folder, {"tab": (3,)}, TaskSpec.parse("binary"))
        except DataError as exc:
            raised.append(str(exc))
            raise

    _clean(run_case("ids", load, [folder], world["marker"]), which)
    if first_twice is not None:
        rows_of = [n + 2 for n, i in enumerate(ids) if i == first_twice][:2]
        assert raised and f"id {first_twice!r} appears twice, on rows {rows_of[0]} and {rows_of[1]}" in raised[0], (
            raised
        )


# ---- 7. a model whose forward fails: one line, exit 1; -v shows the traceback ----

FAILURES = st.sampled_from([RuntimeError, MemoryError, IndexError, torch.OutOfMemoryError])


@settings(CASES, max_examples=16)
@given(
    failure=FAILURES, message=st.text(max_size=40), command=st.sampled_from(["predict", "eval"]), verbose=st.booleans()
)
def test_a_forward_that_raises_ends_in_one_line(world, failure, message, command, verbose):
    import legokit.cli.commands

    real_load = legokit.cli.commands.load

    def load_failing(*args, **kwargs):
        model = real_load(*args, **kwargs)

        def forward(*_args, **_kwargs):
            raise failure(message)

        model.forward = forward
        return model

    out = world["root"] / "failing.csv"
    args = (
        ["predict", str(world["tab"]), str(world["data"]), "-o", str(out)]
        if command == "predict"
        else ["eval", str(world["tab"]), str(world["data"]), "--split", "all"]
    )
    legokit.cli.commands.load = load_failing
    try:
        with deadline():
            done = cli_here(*args, *(["-v"] if verbose else []))
    finally:
        legokit.cli.commands.load = real_load
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and ("out of memory" in last or failure.__name__ in last), done.stderr
    assert ("Traceback" in done.stderr) == verbose
    if not verbose:  # the error in one line (a warning may come before it: this block records no feature names)
        assert len([line for line in done.stderr.splitlines() if not line.startswith("warning: ")]) == 1, done.stderr
