"""Outputs are checked before the work, and the demo never writes through a link nor into a folder it did not make:
an output under /proc, under a file, at a link or inside a dataset folder is refused in one line before anything
is computed; a demo folder whose marker was copied, or that holds a link below it, is refused before anything is
written; a recipe value of the wrong type is one line naming its key."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

import legokit
import legokit.cli.commands
import legokit.demo
from legokit.cache import cache_root
from legokit.demo import MARKER, REGISTRY, claim_folder, run_demo
from legokit.errors import ConfigError, LegoError, WriteError
from legokit.io.atomic import write_atomic
from legokit.io.outputs import check_output, refuse_links_on_the_way
from legokit.predict import predict_folder
from legokit.recipe import Recipe
from legokit.wrap import wrap_builtin

from .conftest import cli_here

SMALL = dict(latent=(4, 8), dim_head=8, device="cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small binary block and a dataset folder of 40 samples."""
    root = tmp_path_factory.mktemp("outputs")
    torch.manual_seed(0)
    block = wrap_builtin("snn", None, "tab", "binary", {"in_features": 3, "hidden": 8}, **SMALL)
    data = root / "data"
    data.mkdir()
    ids = [f"s{i}" for i in range(40)]
    (data / "labels.csv").write_text("id,label\n" + "".join(f"{s},{k % 2}\n" for k, s in enumerate(ids)))
    (data / "tab.csv").write_text("id,x,y,z\n" + "".join(f"{s},{k},{k % 3},1\n" for k, s in enumerate(ids)))
    (root / "file").write_text("a file")
    return {"root": root, "data": data, "model": legokit.save_block(block, root / "tab.st")}


def _one_line(done: subprocess.CompletedProcess, what: str) -> str:
    assert done.returncode == 1, f"{what}: exit {done.returncode}: {done.stderr}"
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, f"{what}: {done.stderr!r}"
    return done.stderr


@pytest.fixture
def spied(monkeypatch):
    """predict's work replaced by a spy that records the call and takes 3 s: a refusal after the work is slow."""
    calls: list[str] = []

    def slow(*args, **kwargs):
        calls.append("predict_folder")
        time.sleep(3)
        raise AssertionError("the prediction ran")

    def load(*args, **kwargs):
        calls.append("load")
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(legokit.cli.commands, "predict_folder", slow)
    monkeypatch.setattr(legokit.cli.commands, "load", load)
    return calls


@pytest.mark.parametrize(
    "target, message",
    [
        ("/proc/legokit-predictions.csv", "under /proc, a system folder"),
        ("/sys/legokit-predictions.csv", "under /sys, a system folder"),
        ("/dev/shm/legokit-predictions.csv", "under /dev, a system folder"),
        ("{root}/file/child.csv", "is a file, not a folder"),
        ("{root}/file/deeper/child.csv", "is a file, not a folder"),
        ("{root}/missing/child.csv", "does not exist"),
        ("{data}/extra.csv", "a folder this command reads"),
        ("{data}/x/extra.csv", "a folder this command reads"),
        ("{data}/labels.csv", "refusing to overwrite an input file"),
        ("{root}/tab.st", "refusing to overwrite an input file"),
        ("{root}/link.csv", "is a symbolic link"),
        ("{root}/dangling.csv", "is a symbolic link"),
    ],
)
def test_predict_refuses_a_bad_output_before_any_prediction(world, spied, target, message):
    root = world["root"]
    for name, points in (("link.csv", root / "file"), ("dangling.csv", root / "nowhere")):
        if not os.path.lexists(root / name):
            (root / name).symlink_to(points)
    target = target.format(root=root, data=world["data"])
    started = time.perf_counter()
    done = cli_here("predict", str(world["model"]), str(world["data"]), "-o", target)
    seconds = time.perf_counter() - started
    assert message in _one_line(done, target)
    assert seconds < 2 and spied == [], (seconds, spied)
    assert sorted(p.name for p in world["data"].iterdir()) == ["labels.csv", "tab.csv"]
    assert (root / "file").read_text() == "a file"


def test_a_good_output_next_to_the_inputs_still_works(world, tmp_path):
    """-o beside the model (an .st next to input .st files) and a CSV in a plain folder are fine."""
    model = Path(shutil.copy(world["model"], tmp_path / "tab.st"))
    assert cli_here("predict", str(model), str(world["data"]), "-o", str(tmp_path / "p.csv")).returncode == 0
    assert (tmp_path / "p.csv").read_text().startswith("id,")
    torch.manual_seed(1)
    other = wrap_builtin("snn", None, "lab", "binary", {"in_features": 3, "hidden": 8}, **SMALL)
    second = legokit.save_block(other, tmp_path / "lab.st")
    merged = tmp_path / "merged.st"
    done = cli_here("merge", str(model), str(second), "-o", str(merged))
    assert done.returncode == 0 and merged.is_file(), done.stderr


def test_a_csv_beside_another_dataset_folders_labels_is_refused(world, tmp_path):
    """Not this command's folder, but a dataset folder all the same: NAME.csv there is read as a modality."""
    other = tmp_path / "study"
    (other / "seq").mkdir(parents=True)
    (other / "labels.csv").write_text("id,label\n")
    for target, message in ((other / "pred.csv", "read as data"), (other / "seq" / "s9.safetensors", "")):
        done = cli_here("inspect", str(world["model"]), "--json", str(target))
        assert message in _one_line(done, str(target)) and "dataset folder" in done.stderr
        assert not target.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_a_folder_that_cannot_be_written_is_refused_first(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(WriteError, match="permission denied"):
        check_output(locked / "x.csv", [])


def test_the_library_writers_refuse_a_new_file_inside_an_input_folder(world):
    predictions = predict_folder(legokit.load(world["model"]), world["data"], device="cpu")
    with pytest.raises(WriteError, match="a folder this command reads"):
        predictions.write(world["data"] / "extra.csv", inputs=[world["data"]])
    assert not (world["data"] / "extra.csv").exists()


# ---- the demo: a folder it made, checked before anything is written ----


def _study(root: Path) -> dict[Path, bytes]:
    """A user's dataset folder, and its files' bytes."""
    files = {
        root / "labels.csv": b"id,time,event\n1,2,1\n",
        root / "labs.csv": b"id,a\n1,2\n",
        root / "splits.csv": b"id,split\n1,train\n",
        root / "visits" / "1.safetensors": b"not really",
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


def _untouched(study: Path, files: dict[Path, bytes]) -> None:
    assert sorted(p for p in study.rglob("*") if p.is_file()) == sorted(files)
    assert all(path.read_bytes() == content for path, content in files.items())


@pytest.mark.parametrize("link", ["data", "data/visits", "data/labels.csv", "data/visits/1.safetensors", "seed-0"])
def test_the_demo_refuses_a_link_below_its_folder_and_leaves_the_target_untouched(tmp_path, link):
    study = tmp_path / "study"
    files = _study(study)
    out = tmp_path / "demo"
    claim_folder(out)  # a genuine demo folder
    where = out / link
    where.parent.mkdir(parents=True, exist_ok=True)
    where.symlink_to(study / Path(link).relative_to("data") if link.startswith("data/") else study)
    with pytest.raises(WriteError, match="symbolic link"):
        run_demo(out, seeds=1, progress=False)
    done = cli_here("demo", "-o", str(out), "--seeds", "1")
    assert "symbolic link" in _one_line(done, link)
    _untouched(study, files)


def test_a_copied_demo_folder_or_marker_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "demo"
    claim_folder(out)
    (out / "results.json").write_text("{}")
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(out), str(copy)], check=True)  # everything, marker included: a new inode
    with pytest.raises(ConfigError, match="made for another folder"):
        claim_folder(copy)
    study = tmp_path / "study"
    files = _study(study)
    shutil.copy(out / MARKER, study / MARKER)
    files[study / MARKER] = (out / MARKER).read_bytes()
    message = _one_line(cli_here("demo", "-o", str(study), "--seeds", "1"), "copied marker")
    assert "made for another folder" in message
    _untouched(study, files)


def test_a_forged_marker_for_the_right_folder_is_refused_without_the_users_record(tmp_path):
    """The marker names this folder's device and inode, but its token is in no record of this user's."""
    study = tmp_path / "study"
    files = _study(study)
    info = os.stat(study)
    forged = {"made_by": "legokit demo", "dev": info.st_dev, "ino": info.st_ino, "token": "0" * 32}
    (study / MARKER).write_text(json.dumps(forged))
    files[study / MARKER] = (study / MARKER).read_bytes()
    with pytest.raises(ConfigError, match="not in this user's record"):
        claim_folder(study)
    for marker in ("made by legokit demo: it may replace its own files here\n", "[]", '{"token": "../x"}'):
        (study / MARKER).write_text(marker)
        files[study / MARKER] = marker.encode()
        with pytest.raises(ConfigError, match="reuses only a folder it made"):
            claim_folder(study)
    _untouched(study, files)


def test_a_marker_that_is_a_link_is_refused(tmp_path):
    out = tmp_path / "demo"
    claim_folder(out)
    other = tmp_path / "other"
    other.mkdir()
    (other / MARKER).symlink_to(out / MARKER)
    with pytest.raises(ConfigError, match="not a regular file"):
        claim_folder(other)


def test_a_demo_folder_is_reused_only_while_the_users_record_keeps_its_token(tmp_path):
    out = tmp_path / "demo"
    claim_folder(out)
    token = json.loads((out / MARKER).read_text())["token"]
    claim_folder(out)  # its own folder, again
    kept = cache_root() / REGISTRY / token
    kept.unlink()
    with pytest.raises(ConfigError, match="not in this user's record"):
        claim_folder(out)


@pytest.mark.parametrize("record", ["a link", "writable by others", "a file"])
def test_a_record_folder_that_cannot_be_trusted_is_refused_before_anything_is_made(tmp_path, monkeypatch, record):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LEGOKIT_CACHE", str(cache))
    cache.mkdir()
    if record == "a link":
        (tmp_path / "elsewhere").mkdir()
        (cache / REGISTRY).symlink_to(tmp_path / "elsewhere")
    elif record == "a file":
        (cache / REGISTRY).write_text("")
    else:
        (cache / REGISTRY).mkdir()
        (cache / REGISTRY).chmod(0o777)
    with pytest.raises(ConfigError, match=str(cache / REGISTRY)):
        claim_folder(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def _quick_seed(folder, seed, out, labs_spec, visits_spec, result, step):
    """run_seed without the training: the four artifacts, written where the demo writes them."""
    step("quick")
    seed_dir = legokit.demo._safe(out, out / f"seed-{seed}")
    seed_dir.mkdir(exist_ok=True)
    for name in ("labs", "visits", "merged", "fused"):
        write_atomic(legokit.demo._safe(out, seed_dir / f"{name}.st"), f"{name} {seed}".encode())


def test_a_genuine_demo_runs_again_in_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(legokit.demo, "run_seed", _quick_seed)
    out = tmp_path / "demo"
    for _ in range(2):
        run_demo(out, seeds=2, progress=False)
        assert (out / "labs.st").read_bytes() == b"labs 0" and (out / "seed-1" / "fused.st").read_bytes() == b"fused 1"
        assert (out / "data" / "labels.csv").is_file() and (out / "data" / "splits.csv").is_file()
        assert json.loads((out / "results.json").read_text())["seeds"] == [0, 1]
    (out / "seed-1").rename(tmp_path / "elsewhere")
    (out / "seed-1").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(WriteError, match="symbolic link"):
        run_demo(out, seeds=2, progress=False)
    assert (tmp_path / "elsewhere" / "fused.st").read_bytes() == b"fused 1"


def test_a_link_made_during_the_run_is_refused_just_before_the_write(tmp_path):
    out = tmp_path / "demo"
    claim_folder(out)
    (tmp_path / "elsewhere").mkdir()
    (out / "seed-0").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(WriteError, match="symbolic link"):
        refuse_links_on_the_way(out, out / "seed-0" / "labs.st")
    refuse_links_on_the_way(out, out / "seed-1" / "labs.st")  # not made yet: fine


def test_the_demo_refuses_a_folder_under_a_system_folder():
    with pytest.raises(LegoError, match="system folder"):
        claim_folder("/proc/legokit-demo")
    assert not os.path.exists("/proc/legokit-demo")


def test_demo_json_inside_the_demo_folder_is_refused(tmp_path):
    out = tmp_path / "demo"
    claim_folder(out)
    done = cli_here("demo", "-o", str(out), "--json", str(out / "data" / "r.json"), "--seeds", "1")
    assert "fills" in _one_line(done, "demo --json") or "does not exist" in done.stderr
    done = cli_here("demo", "-o", str(out), "--json", str(out / "r.json"), "--seeds", "1")
    assert "fills" in _one_line(done, "demo --json")


# ---- recipes: a value of the wrong type is one line naming its key ----


@pytest.mark.parametrize(
    "operation, key",
    [
        ("{kind: [stack]}", "operation.kind"),
        ("{kind: {stack: 1}}", "operation.kind"),
        ("{kind: 3}", "operation.kind"),
        ("{kind: merge, phase: [paper]}", "operation.phase"),
        ("{kind: merge, phase: {a: 1}}", "operation.phase"),
        ("{kind: merge, weights: [1, 2]}", "operation.weights"),
        ("{kind: merge, weights: {tab: [1]}}", "operation.weights.tab"),
        ("{kind: stack, freeze_encoders: [true]}", "operation.freeze_encoders"),
        ("{kind: stack, encoders: [auto]}", "encoders"),
        ("{kind: stack, device: [cpu]}", "device"),
        ("{kind: stack, time_unit: [days]}", "operation.time_unit"),
    ],
)
@pytest.mark.parametrize("dry", [True, False])
def test_a_recipe_value_of_the_wrong_type_is_one_line_naming_the_key(world, tmp_path, operation, key, dry):
    shutil.copy(world["model"], tmp_path / "tab.st")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"blocks: {{tab: {{artifact: tab.st}}}}\noperation: {operation}\ndata: {world['data']}\noutput: o.st\n"
    )
    done = cli_here("run", str(recipe), *(["--dry-run"] if dry else []))
    assert key in _one_line(done, operation)
    assert not (tmp_path / "o.st").exists()


@pytest.mark.parametrize(
    "line, key",
    [
        ("name: [a]", "name"),
        ("description: {a: 1}", "description"),
        ("output: [o.st]", "output"),
        ("data: 5", "data"),
        ("blocks: {1: {artifact: tab.st}}", "blocks.1"),
        ("blocks: {tab: {artifact: [tab.st]}}", "blocks.tab.artifact"),
        ("blocks: {tab: [tab.st]}", "blocks.tab"),
        ("blocks: [tab.st]", "blocks"),
        ("operation: [merge]", "operation"),
    ],
)
def test_a_recipe_top_level_value_of_the_wrong_type_is_one_line_naming_the_key(world, tmp_path, line, key):
    shutil.copy(world["model"], tmp_path / "tab.st")
    recipe = {"blocks": "{tab: {artifact: tab.st}}", "operation": "{kind: merge}", "output": "o.st"}
    name, value = line.split(": ", 1)
    recipe[name] = value
    path = tmp_path / "r.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in recipe.items()))
    for dry in ([], ["--dry-run"]):
        assert f"{key}:" in _one_line(cli_here("run", str(path), *dry), line)


def test_recipe_run_checks_its_output_before_the_work(world, tmp_path):
    shutil.copy(world["model"], tmp_path / "tab.st")
    path = tmp_path / "r.yaml"
    path.write_text(
        f"blocks: {{tab: {{artifact: tab.st}}}}\noperation: {{kind: stack}}\ndata: {world['data']}\n"
        f"output: {world['data']}/fused.st\n"
    )
    recipe = Recipe.from_yaml(path)
    with pytest.raises(WriteError, match="a folder this command reads"):
        recipe.run(progress=False)
    with pytest.raises(WriteError, match="system folder"):
        recipe.run(progress=False, output="/proc/x.st")
