"""Hostile output paths and recipe values (generated with hypothesis, 120 cases): every command's output flags aimed
at /proc, /dev/null, a file's child, a link, an input, a dataset folder or an input's folder are refused in one line
before any work ("outputs"); a recipe key given a value of the wrong type is one line naming the key, in `run` and
`run --dry-run` ("recipes-types"). Each case: no traceback, no input modified, under 5 s."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import legokit
from legokit.wrap import wrap_builtin

from .conftest import cli_here
from .hostile import hostile_cases, run_case

CASES = hostile_cases(60)
SMALL = dict(latent=(4, 8), dim_head=8, device="cpu")
LIMIT = 5.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two small blocks, an encoder state dict and a merge recipe in `models/` (which also holds a labels.csv: a
    dataset folder), and a dataset folder `data/` with a table and a bag modality."""
    root = tmp_path_factory.mktemp("hostile-outputs")
    models, data = root / "models", root / "data"
    for folder in (data / "seq", data / "notes", models / "seq"):  # targets below them are read as data
        folder.mkdir(parents=True)
    torch.manual_seed(0)
    tab = wrap_builtin("snn", None, "tab", "binary", {"in_features": 3, "hidden": 8}, **SMALL)
    seq = wrap_builtin("mlp", None, "seq", "binary", {"in_features": 4, "hidden": 8}, input_shape=(None, 4), **SMALL)
    ids = [f"s{i}" for i in range(12)]
    (data / "labels.csv").write_text("id,label\n" + "".join(f"{s},{k % 2}\n" for k, s in enumerate(ids)))
    (data / "tab.csv").write_text("id,x,y,z\n" + "".join(f"{s},{k},{k % 3},1\n" for k, s in enumerate(ids)))
    for k, sample in enumerate(ids):
        save_file({"x": torch.full((1 + k % 3, 4), float(k))}, data / "seq" / f"{sample}.safetensors")
    (models / "labels.csv").write_text("id,label\ns0,1\n")
    torch.save({"net.0.weight": torch.zeros(16, 10), "net.0.bias": torch.zeros(16)}, models / "snn.pt")
    recipe = models / "merge.yaml"
    recipe.write_text(
        "blocks: {tab: {artifact: tab.st}, seq: {artifact: seq.st}}\noperation: {kind: merge}\noutput: merged.st\n"
    )
    (root / "file").write_text("a file")
    (root / "real.txt").write_text("a link's target")
    return {
        "root": root,
        "data": data,
        "models": models,
        "tab": legokit.save_block(tab, models / "tab.st"),
        "seq": legokit.save_block(seq, models / "seq.st"),
        "pt": models / "snn.pt",
        "recipe": recipe,
        "marker": root / "ran-code",
    }


def _case(world) -> Path:
    case = world["root"] / "case"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir()
    return case


# ---- outputs ----

# (command, output flag); "output:" is a recipe's own output key
OUTPUTS = (
    ("predict", "-o"),
    ("predict", "--json"),
    ("eval", "--json"),
    ("eval", "--plot"),
    ("train", "-o"),
    ("train", "--plot"),
    ("train", "--json"),
    ("fuse", "-o"),
    ("fuse", "--plot"),
    ("adapt", "-o"),
    ("merge", "-o"),
    ("merge", "--json"),
    ("inspect", "--json"),
    ("wrap", "-o"),
    ("run", "-o"),
    ("run", "output:"),
    ("run", "--json"),
    ("demo", "--json"),
    ("pull", "-o"),
)
TARGETS = (
    "/proc",
    "/dev/null",
    "a file's child",
    "a link",
    "a dangling link",
    "an input",
    "a dataset folder",
    "an input's folder",
)


def _commands(world, case: Path) -> dict[str, list[str]]:
    tab, seq, data, other = str(world["tab"]), str(world["seq"]), str(world["data"]), str(case / "other.out")
    train = ["train", data, "--modality", "tab", "--task", "binary", "--latent", "4x8", "-o", other]
    return {
        "predict": ["predict", tab, data, "-o", other],
        "eval": ["eval", tab, data],
        "train": train,
        "fuse": ["fuse", tab, seq, "--data", data, "-o", other],
        "adapt": ["adapt", tab, "--method", "ssf", "--data", data, "-o", other],
        "merge": ["merge", tab, seq, "-o", other],
        "inspect": ["inspect", tab],
        "wrap": ["wrap", str(world["pt"]), "--encoder", "snn", "--modality", "tab", "-o", other],
        "run": ["run", str(world["recipe"])],
        "demo": ["demo", "-o", str(case / "demo"), "--seeds", "1"],
        "pull": ["pull", "org/name", "-o", other],
    }


# an input of each command, and whether it reads a dataset folder
INPUTS = {
    "predict": "tab",
    "eval": "tab",
    "train": "data/tab.csv",
    "fuse": "seq",
    "adapt": "tab",
    "merge": "seq",
    "inspect": "tab",
    "wrap": "pt",
    "run": "tab",  # a block both recipes read
}


def _target(world, case: Path, command: str, kind: str, pick: int) -> str | None:
    """A hostile output path of this kind for this command (None: the command has no such thing)."""
    if kind == "/proc":
        return ["/proc/legokit-out.csv", "/proc/self/legokit.json", "/sys/legokit.png", "/dev/shm/legokit.st"][pick]
    if kind == "/dev/null":
        return "/dev/null"
    if kind == "a file's child":
        return str(world["root"] / "file" / ["child.csv", "deeper/child.json", "c.st", "c.png"][pick])
    if kind in ("a link", "a dangling link"):
        link = case / f"link-{pick}.out"
        link.symlink_to(world["root"] / ("real.txt" if kind == "a link" else "nowhere"))
        return str(link)
    if command not in INPUTS:
        return None  # demo and pull read no file of the user's
    if kind == "an input":
        name = INPUTS[command]
        return str(world["data"] / "tab.csv") if name == "data/tab.csv" else str(world[name])
    names = ["extra.csv", "seq/s99.safetensors", "notes/s0.txt", "labels.csv"]
    if kind == "a dataset folder":
        return str(world["data"] / names[pick])
    # an input's folder that is read as data: the models folder holds labels.csv beside the inputs
    folder = world["data"] if command == "train" else world["models"]
    return str(folder / names[pick % 2])


def _args(world, case: Path, command: str, flag: str, target: str) -> list[str]:
    args = _commands(world, case)[command]
    if flag == "output:":
        recipe = world["models"] / "hostile.yaml"
        text = world["recipe"].read_text().replace("output: merged.st", f"output: {yaml.safe_dump(target).split()[0]}")
        recipe.write_text(text)
        return ["run", str(recipe)]
    if flag == "-o" and "-o" in args:
        args[args.index("-o") + 1] = target
        return args
    return [*args, flag, target]


def _inputs(world) -> list[Path]:
    return [world["data"], world["models"], world["root"] / "file", world["root"] / "real.txt"]


def _refused_in_one_line(args: list[str]) -> None:
    """Run the CLI in this process; anything but exit 1 with one line on standard error raises."""
    done = cli_here(*args)
    if done.returncode != 1 or "Traceback" in done.stderr or done.stderr.count("\n") != 1:
        raise AssertionError(f"exit {done.returncode}: {done.stderr[-600:]!r}")


def _clean(outcome, what: str) -> None:
    assert not outcome.ran_code, f"{what}: code from the input ran"
    assert outcome.traceback is None, f"{what}: {outcome.traceback}"
    assert not outcome.modified, f"{what}: modified {outcome.modified}"
    assert outcome.seconds < LIMIT, f"{what}: took {outcome.seconds:.1f} s"


@settings(CASES, max_examples=70)
@given(output=st.sampled_from(OUTPUTS), kind=st.sampled_from(TARGETS), pick=st.integers(0, 3))
def test_every_output_flag_aimed_at_a_hostile_path_is_refused_before_the_work(world, output, kind, pick):
    command, flag = output
    case = _case(world)
    target = _target(world, case, command, kind, pick)
    assume(target is not None)
    args = _args(world, case, command, flag, target)
    outcome = run_case("outputs", lambda: _refused_in_one_line(args), _inputs(world), world["marker"])
    _clean(outcome, f"{command} {flag} {target}")
    assert sorted(p.name for p in case.iterdir()) == sorted(p.name for p in case.iterdir() if p.is_symlink())
    assert not (world["models"] / "merged.st").exists()
    assert (world["root"] / "real.txt").read_text() == "a link's target"


# ---- recipes-types ----

STRING_KEYS = (
    "name",
    "description",
    "output",
    "data",
    "operation.kind",
    "operation.phase",
    "operation.time_unit",
    "operation.device",
    "operation.encoders",
    "blocks.tab.artifact",
)
INT_KEYS = ("operation.epochs", "operation.batch_size", "operation.patience", "operation.seed")
FLOAT_KEYS = (
    "operation.lr",
    "operation.weight_decay",
    "operation.encoder_lr",
    "operation.modality_dropout",
    "operation.weights.tab",
)
BOOL_KEYS = ("operation.compile", "operation.freeze_encoders")
MAPPING_KEYS = ("blocks", "blocks.tab", "operation", "operation.weights")

SCALARS = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False), st.booleans())
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=6)
CONTAINERS = st.one_of(
    st.lists(st.one_of(SCALARS, TEXT), max_size=3), st.dictionaries(TEXT, SCALARS, min_size=1, max_size=2)
)
WRONG = {
    "string": st.one_of(SCALARS, CONTAINERS),
    "int": st.one_of(TEXT, CONTAINERS, st.booleans(), st.floats(allow_nan=False).filter(lambda v: not v.is_integer())),
    "float": st.one_of(TEXT, CONTAINERS, st.booleans()),
    "bool": st.one_of(TEXT, CONTAINERS, st.integers(2, 10), st.floats(allow_nan=False)),
    "mapping": st.one_of(TEXT, st.lists(SCALARS, max_size=3), SCALARS),
}
KEYS = (
    [(k, "string") for k in STRING_KEYS]
    + [(k, "int") for k in INT_KEYS]
    + [(k, "float") for k in FLOAT_KEYS]
    + [(k, "bool") for k in BOOL_KEYS]
    + [(k, "mapping") for k in MAPPING_KEYS]
)
MERGE_ONLY = ("operation.phase", "operation.weights", "operation.weights.tab")


def _recipe(world, key: str, value: object) -> dict:
    """A valid recipe (merge for merge keys, else stack on the data folder) with `key` set to `value`."""
    merge = key in MERGE_ONLY
    recipe: dict = {
        "name": "r",
        "blocks": {"tab": {"artifact": "tab.st"}, "seq": {"artifact": "seq.st"}},
        "operation": {"kind": "merge", "weights": {"tab": 1, "seq": 1}} if merge else {"kind": "stack"},
        "data": str(world["data"]),
        "output": "wrong-types.st",
    }
    parts = key.split(".")
    holder = recipe
    for part in parts[:-1]:
        holder = holder[part]
    holder[parts[-1]] = value
    return recipe


@settings(CASES, max_examples=60)
@given(key=st.sampled_from(KEYS), data=st.data())
def test_a_recipe_value_of_the_wrong_type_is_one_line_naming_its_key(world, key, data):
    name, kind = key
    value = data.draw(WRONG[kind], label="value")
    if name == "operation.freeze_encoders":
        value = data.draw(st.one_of(TEXT, CONTAINERS, st.integers(0, 10)), label="value")
    assume(not (name == "operation.weights" and value == "auto"))
    path = world["models"] / "wrong-types.yaml"
    path.write_text(yaml.safe_dump(_recipe(world, name, value)))
    for dry in (["--dry-run"], []):
        said: list[str] = []

        def attempt(dry: list[str] = dry, said: list[str] = said) -> None:
            done = cli_here("run", str(path), *dry)
            said.append(done.stderr)
            if done.returncode != 1 or "Traceback" in done.stderr or done.stderr.count("\n") != 1:
                raise AssertionError(f"exit {done.returncode}: {done.stderr[-600:]!r}")

        outcome = run_case("recipes-types", attempt, [world["data"], world["tab"], world["seq"]], world["marker"])
        _clean(outcome, f"{name}: {value!r}")
        message = said[0].split(str(path), 1)[-1]  # what follows the recipe's path
        assert re.search(rf"\b{name.split('.')[-1]}\b", message), (name, said[0])
    assert not (world["models"] / "wrong-types.st").exists()
