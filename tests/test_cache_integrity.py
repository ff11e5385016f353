"""Cache entries are verified on read and the cache stays within its disk budget: an entry whose bytes or names do
not match its digest (a flipped byte, two names swapped, an entry moved to another encoder's folder, an earlier
format) is recomputed with one warning per run and the predictions are a clean run's; an entry over the per-entry
cap is never written; a stream over `LEGOKIT_CACHE_MAX` evicts the least recently used shards, only legokit's own."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file
from torch import nn

import legokit
from legokit.artifacts.format import read_layout
from legokit.cache import TokenCache
from legokit.cache import store as store_module
from legokit.cache.disk import DEFAULT_DISK, MAX_ENTRY_BYTES, disk_budget
from legokit.cache.store import Entry
from legokit.errors import ConfigError
from legokit.predict import predict_folder
from legokit.wrap import wrap_module

from .conftest import cli_here
from .hostile import header_with, hostile_cases, run_case

KEY, OTHER = "ab" * 32, "cd" * 32
WIDTH = 4
SAMPLES = 10


class Warned:
    """The warnings of the legokit logger while in use (not its info lines)."""

    def __enter__(self) -> list[str]:
        from legokit.progress import log

        self.seen: list[str] = []
        self.handler = logging.Handler(logging.WARNING)
        self.handler.emit = lambda record: self.seen.append(record.getMessage())
        log.addHandler(self.handler)
        return self.seen

    def __exit__(self, *exc) -> None:
        from legokit.progress import log

        log.removeHandler(self.handler)


def _sample(i: int) -> str:
    return f"{i:032x}"


def _entry(value: float, tokens: int = 2) -> Entry:
    return Entry(torch.full((tokens, WIDTH), float(value)), torch.ones(tokens, dtype=torch.bool))


def _store(root: Path, key: str = KEY, memory: int = 1 << 30, disk: int | None = None):
    return TokenCache(root, memory=memory, disk=disk).of(key, WIDTH, {"modality": "notes", "encoder": "test"})


def _fill(root: Path, samples=range(3), key: str = KEY, disk: int | None = None) -> Path:
    """One shard of these samples (sample i: tokens all i); returns the encoder's folder."""
    store = _store(root, key, disk=disk)
    for i in samples:
        store.put(_sample(i), _entry(i))
    store.close()
    return root / "encoder-tokens" / key


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _disk_bytes(root: Path) -> int:
    """Bytes of the regular files in this user's encoder folders that no one else can write (what the budget counts)."""
    total = 0
    for folder in (root / "encoder-tokens").iterdir():
        if folder.is_symlink() or not folder.is_dir() or folder.stat().st_mode & 0o022:
            continue
        total += sum(os.lstat(p).st_size for p in folder.iterdir() if stat.S_ISREG(os.lstat(p).st_mode))
    return total


def _edit_header(path: Path, change) -> None:
    path.write_bytes(header_with(path.read_bytes(), change))


def _swap(header: dict, a: str, b: str) -> None:
    for part in ("tokens", "mask", "digest"):
        header[f"{a}.{part}"], header[f"{b}.{part}"] = header[f"{b}.{part}"], header[f"{a}.{part}"]


# ---- a wrapped sequence encoder, its data, and a clean cache ------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A wrapped (pretrained, cacheable) sequence encoder's block file, a data folder of 10 samples, a clean cache
    of two shards (a run on the first 5 samples, then one on all 10), and the predictions of the clean run."""
    root = tmp_path_factory.mktemp("integrity")
    torch.manual_seed(0)
    block = wrap_module(
        nn.Sequential(nn.Linear(4, 16), nn.Tanh()), "visits", "binary", (None, 4), latent=(4, 8), depth=1, device="cpu"
    )
    path = legokit.save_block(block, root / "visits.st")
    generator = torch.Generator().manual_seed(1)
    full, half = root / "data", root / "half"
    for folder in (full, half):
        (folder / "visits").mkdir(parents=True)
    for i in range(SAMPLES):
        x = {"x": torch.randn(3 + i % 5, 4, generator=generator)}
        for folder in (full, half) if i < SAMPLES // 2 else (full,):
            save_file(x, folder / "visits" / f"s{i}.safetensors")
    model = legokit.load(path)
    uncached = predict_folder(model, full, device="cpu", cache=None).columns["prob"]
    clean = root / "clean"
    predict_folder(model, half, device="cpu", cache=TokenCache(clean))  # one shard of 5 samples
    want = predict_folder(model, full, device="cpu", cache=TokenCache(clean)).columns["prob"]  # and one of 5 more
    return {
        "root": root,
        "model": model,
        "path": path,
        "data": full,
        "clean": clean,
        "want": want,
        "uncached": uncached,
    }


def _cache_copy(world, name: str = "case") -> tuple[Path, list[Path]]:
    """A fresh copy of the clean cache, and its shards (the 5 first samples' first)."""
    target = world["root"] / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(world["clean"], target)
    (folder,) = (target / "encoder-tokens").iterdir()
    return target, _shards(folder)


def _clean(world):
    """The clean run's predictions, to the rounding of the encoder's kernels: a recomputed entry runs in a batch of
    another shape than it first did, which moves the last bits of its tokens (as between any two clean runs)."""
    return pytest.approx(world["want"], abs=1e-6, rel=0)


def _predicted(world, cache_root: Path) -> list[float]:
    return predict_folder(world["model"], world["data"], device="cpu", cache=TokenCache(cache_root)).columns["prob"]


def test_the_clean_cache_reads_back_its_predictions_from_two_shards(world):
    assert [len(_shards(f)) for f in (world["clean"] / "encoder-tokens").iterdir()] == [2]
    with Warned() as seen:
        assert _predicted(world, world["clean"]) == world["want"]
    assert seen == []
    assert world["want"] == pytest.approx(world["uncached"], abs=1e-6)  # the encoder run once, in other batches


def _flip_every_entry(shard: Path) -> int:
    """Flip one byte inside every entry's token data; returns how many entries."""
    data = bytearray(shard.read_bytes())
    entries = [v for k, v in read_layout(shard).items() if k.endswith(".tokens")]
    for stored in entries:
        data[(stored.start + stored.end) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    return len(entries)


def test_a_flipped_byte_in_a_shards_token_data_is_recomputed_with_one_warning(world):
    root, shards = _cache_copy(world)
    assert sum(_flip_every_entry(shard) for shard in shards) == SAMPLES
    with Warned() as seen:
        assert _predicted(world, root) == _clean(world)
    assert len(seen) == 1 and "does not match its digest" in seen[0] and "\n" not in seen[0]
    with Warned() as seen:  # the recomputed entries were written again: the next run reads them, silently
        assert _predicted(world, root) == _clean(world)
    assert seen == []


def _rows(path: Path) -> list[tuple[str, float]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "id,prob"
    return [(line.split(",")[0], float(line.split(",")[1])) for line in lines[1:]]


def test_predict_on_a_tampered_cache_exits_0_with_one_warning_and_the_clean_predictions(world, monkeypatch, tmp_path):
    root, shards = _cache_copy(world)
    monkeypatch.setenv("LEGOKIT_CACHE", str(root))
    clean = cli_here("predict", str(world["path"]), str(world["data"]), "-o", str(tmp_path / "clean.csv"), "-q")
    for shard in shards:
        _flip_every_entry(shard)
    run = cli_here("predict", str(world["path"]), str(world["data"]), "-o", str(tmp_path / "tampered.csv"), "-q")
    assert (clean.returncode, run.returncode) == (0, 0)
    tampered, clean_rows = (_rows(tmp_path / name) for name in ("tampered.csv", "clean.csv"))
    assert [i for i, _ in tampered] == [i for i, _ in clean_rows] and len(tampered) == SAMPLES
    assert [p for _, p in tampered] == pytest.approx([p for _, p in clean_rows], abs=1e-6, rel=0)
    warned = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(warned) == 1 and "does not match its digest" in warned[0], run.stderr


def test_two_entries_names_swapped_are_recomputed_with_one_warning(world):
    root, shards = _cache_copy(world)
    names = sorted(k[:-7] for k in read_layout(shards[0]) if k.endswith(".tokens"))
    _edit_header(shards[0], lambda header: _swap(header, names[0], names[1]))
    with Warned() as seen:
        assert _predicted(world, root) == _clean(world)
    assert len(seen) == 1 and "does not match its digest" in seen[0]


def test_entries_swapped_between_two_shards_are_recomputed_with_one_warning(world):
    root, shards = _cache_copy(world)
    first, second = (sorted(k[:-7] for k in read_layout(s) if k.endswith(".tokens"))[0] for s in shards)

    def rename(old: str, new: str):
        def change(header: dict) -> None:
            for part in ("tokens", "mask", "digest"):
                header[f"{new}.{part}"] = header.pop(f"{old}.{part}")

        return change

    _edit_header(shards[0], rename(first, second))
    _edit_header(shards[1], rename(second, first))
    with Warned() as seen:
        assert _predicted(world, root) == _clean(world)
    assert len(seen) == 1 and "does not match its digest" in seen[0]


def test_an_entry_moved_to_another_encoders_folder_is_not_used(tmp_path):
    (shard,) = _shards(_fill(tmp_path))
    other = _fill(tmp_path, [7], key=OTHER)
    moved = other / "moved.safetensors"
    moved.write_bytes(shard.read_bytes())
    _edit_header(moved, lambda header: header["__metadata__"].__setitem__("encoder", OTHER))
    with Warned() as seen:
        store = _store(tmp_path, OTHER)
        assert store.get(_sample(0)) is None and store.get(_sample(1)) is None  # a shard's header edited to fit
        assert torch.equal(store.get(_sample(7)).tokens, _entry(7).tokens)  # its own entry still read
    assert len(seen) == 1 and "does not match its digest" in seen[0]


def test_an_entry_read_whole_is_the_entry_written(tmp_path):
    folder = _fill(tmp_path, range(5))
    store = _store(tmp_path, memory=0)
    with Warned() as seen:
        assert all(torch.equal(store.get(_sample(i)).tokens, _entry(i).tokens) for i in range(5))
    assert seen == [] and len(_shards(folder)) == 1


def test_an_old_format_shard_without_digests_is_recomputed_with_one_warning(tmp_path):
    folder = _fill(tmp_path, [5])
    old = {f"{_sample(i)}.tokens": _entry(i).tokens for i in range(3)}
    old.update({f"{_sample(i)}.mask": _entry(i).mask for i in range(3)})
    (folder / "00000000-000000-1-00000000.safetensors").write_bytes(
        safetensors_bytes(old, metadata={"format": "legokit-encoder-tokens", "encoder": KEY})
    )
    with Warned() as seen:
        store = _store(tmp_path)
        assert [store.get(_sample(i)) for i in range(3)] == [None, None, None]  # not read: recomputed
        assert torch.equal(store.get(_sample(5)).tokens, _entry(5).tokens)
        for i in range(3):
            store.put(_sample(i), _entry(i))
        store.close()
    assert len(seen) == 1 and "no digest" in seen[0] and "earlier format" in seen[0]
    again = _store(tmp_path)
    assert all(torch.equal(again.get(_sample(i)).tokens, _entry(i).tokens) for i in range(3))


# ---- the per-entry cap and the disk budget ------------------------------------------------------------------------


def test_an_entry_over_the_per_entry_cap_is_not_written(tmp_path):
    rows = MAX_ENTRY_BYTES // (64 * 4)  # a broadcast (262144, 64) float32 view: 64 MiB of data and its mask
    flood = Entry(torch.zeros(1, 64).expand(rows, 64), torch.ones(rows, dtype=torch.bool))
    store = TokenCache(tmp_path).of(KEY, 64, {})
    with Warned() as seen:
        for i in range(24):
            store.put(_sample(i), flood)
        store.put(_sample(99), Entry(torch.ones(2, 64), torch.ones(2, dtype=torch.bool)))
        store.close()
        assert store.get(_sample(0)) is flood  # kept for this run, in memory
    assert len(seen) == 1 and "per entry" in seen[0]
    assert _disk_bytes(tmp_path) < 1 << 16  # only the small entry's shard and the encoder's description
    fresh = TokenCache(tmp_path).of(KEY, 64, {})
    assert fresh.get(_sample(0)) is None and fresh.get(_sample(99)) is not None


def test_the_per_entry_cap_is_also_a_sixteenth_of_the_disk_budget(tmp_path):
    store = _store(tmp_path, disk=16 * 1000)
    with Warned() as seen:
        store.put(_sample(0), _entry(0, tokens=62))  # 62 x 4 x 4 + 62 = 1054 bytes: over 1000
        store.put(_sample(1), _entry(1, tokens=60))  # 1020: over too
        store.put(_sample(2), _entry(2, tokens=50))  # 850: written
        store.close()
    assert len(seen) == 1
    fresh = _store(tmp_path)
    assert [fresh.get(_sample(i)) is not None for i in range(3)] == [False, False, True]


def test_a_stream_over_the_disk_budget_keeps_the_cache_within_it_and_the_latest_entries(tmp_path, monkeypatch):
    budget = 20_000
    monkeypatch.setenv("LEGOKIT_CACHE_MAX", str(budget))
    written, peaks = store_module.write_atomic, []

    def measured(path, data, inputs=()):
        written(path, data, inputs)
        peaks.append(_disk_bytes(tmp_path))

    monkeypatch.setattr(store_module, "write_atomic", measured)
    store = TokenCache(tmp_path, memory=0).of(KEY, WIDTH, {})
    with Warned() as seen:
        for i in range(300):
            store.put(_sample(i), _entry(i))
        store.close()
    assert seen == [] and len(peaks) > 10 and max(peaks) <= budget
    fresh = _store(tmp_path)
    found = [fresh.get(_sample(i)) is not None for i in range(300)]
    assert found[-20:] == [True] * 20 and not any(found[:100])  # the latest kept, the oldest evicted
    kept = [i for i in range(300) if found[i]]
    assert kept == list(range(kept[0], 300))  # whole shards evicted in the order they were written


def test_a_shard_read_in_a_run_outlives_older_unread_ones(tmp_path):
    folder = _fill(tmp_path, [0])
    (first,) = _shards(folder)
    _fill(tmp_path, [1])
    (second,) = set(_shards(folder)) - {first}
    os.utime(first, ns=(10**9, 10**9))
    os.utime(second, ns=(2 * 10**9, 2 * 10**9))  # the second more recently used than the first
    store = _store(tmp_path)
    assert store.get(_sample(0)) is not None  # read now: the first becomes the most recently used
    store.close()
    size = _disk_bytes(tmp_path)
    room = _store(tmp_path, disk=size + 10)  # room for one more shard of one entry once one is evicted
    room.put(_sample(2), _entry(2))
    room.close()
    assert first.exists() and not second.exists()
    assert _disk_bytes(tmp_path) <= size + 10 and len(_shards(folder)) == 2


def test_eviction_deletes_only_legokits_shards_in_this_users_folders_following_no_link(tmp_path):
    root = tmp_path / "c"
    folder = _fill(root, range(3))
    base = folder.parent
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "20200101-000000-1-00000000.safetensors").write_bytes(b"keep me")
    (victim / "precious").write_bytes(b"keep me")
    (folder / "20200101-000000-1-11111111.safetensors").symlink_to(victim / "precious")  # a link named as a shard
    (folder / "notes.txt").write_bytes(b"x" * 100)  # a file legokit did not write: counted, never deleted
    (base / OTHER).symlink_to(victim)  # a key folder that is a link elsewhere
    shared = base / ("ef" * 32)
    shared.mkdir()
    (shared / "20200101-000000-1-22222222.safetensors").write_bytes(b"keep me")
    shared.chmod(0o777)  # writable by others: not legokit's to read, count or clean
    with Warned() as seen:
        store = _store(root, disk=1000)
        for i in range(10, 40):
            store.put(_sample(i), _entry(i))
        store.close()
    assert sorted(p.name for p in victim.iterdir()) == ["20200101-000000-1-00000000.safetensors", "precious"]
    assert (victim / "precious").read_bytes() == b"keep me"
    assert (folder / "20200101-000000-1-11111111.safetensors").is_symlink() and (folder / "notes.txt").exists()
    assert (shared / "20200101-000000-1-22222222.safetensors").exists() and (base / OTHER).is_symlink()
    assert _disk_bytes(root) <= 1000  # the foreign file counted, the other users' folder not
    assert all(len(line.splitlines()) == 1 for line in seen)


def test_a_cache_full_of_files_legokit_does_not_delete_is_not_written_past_its_budget(tmp_path):
    folder = _fill(tmp_path, [0])
    (folder / "junk.bin").write_bytes(b"x" * 5000)
    with Warned() as seen:
        store = _store(tmp_path, disk=5000)
        for i in range(1, 20):
            store.put(_sample(i), _entry(i))
        store.close()
        assert all(store.get(_sample(i)) is not None for i in range(1, 20))  # kept for this run
    assert len(seen) == 1 and "no room in the encoder cache" in seen[0] and "LEGOKIT_CACHE_MAX" in seen[0]
    assert (folder / "junk.bin").exists() and len(_shards(folder)) == 1  # nothing written, nothing deleted for it
    assert _store(tmp_path).get(_sample(0)) is not None


@pytest.mark.parametrize("text, value", [("", DEFAULT_DISK), ("512", 512), ("1e10", 10**10), (" 2e9 ", 2 * 10**9)])
def test_the_disk_budget_is_a_number_of_bytes(text, value):
    assert disk_budget({"LEGOKIT_CACHE_MAX": text}) == value


@pytest.mark.parametrize("text", ["10G", "0", "-1", "nan", "inf", "1e400", "x" * 40, "0.5"])
def test_a_bad_disk_budget_is_a_one_line_error(text, monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="LEGOKIT_CACHE_MAX must be a positive number of bytes") as raised:
        disk_budget({"LEGOKIT_CACHE_MAX": text})
    assert "\n" not in str(raised.value)
    monkeypatch.setenv("LEGOKIT_CACHE_MAX", text)
    assert TokenCache(None).root is None  # --no-cache reads no disk budget
    with pytest.raises(ConfigError):
        TokenCache(tmp_path)


def test_predict_with_a_bad_disk_budget_is_one_line_and_exit_1(world, monkeypatch, tmp_path):
    monkeypatch.setenv("LEGOKIT_CACHE_MAX", "10G")
    run = cli_here("predict", str(world["path"]), str(world["data"]), "-o", str(tmp_path / "p.csv"))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if "LEGOKIT_CACHE_MAX" in line] == [run.stderr.strip()]


# ---- generated hostile cases: corruptions of a shard, each given to predict ----------------------------------------

CASES = hostile_cases(80)


def _header_edit(kind: str, at: int, value: int):
    """A change of a shard's header that keeps it valid JSON: a tensor's dtype, shape or place, a name, the
    metadata."""

    def change(header: dict) -> None:
        names = sorted(k for k in header if k != "__metadata__")
        name = names[at % len(names)]
        other = names[(at + 1 + value % (len(names) - 1)) % len(names)]  # another one
        entry = header[name]
        if kind == "dtype":
            entry["dtype"] = ["F16", "U8", "I64", "BOOL", "F32", "F64"][value % 6]
        elif kind == "shape":
            entry["shape"] = [value % 7] + entry["shape"][1:] if entry["shape"] else [value % 7]
        elif kind == "offsets":
            entry["data_offsets"] = header[other]["data_offsets"]
        elif kind == "shift":
            start, end = entry["data_offsets"]
            step = value % 9 - 4
            entry["data_offsets"] = [max(0, start + step), max(0, end + step)]
        elif kind == "rename":
            header[f"{other.split('.')[0]}.{name.split('.')[1]}"] = header.pop(name)
        elif kind == "swap":
            header[name], header[other] = header[other], header[name]
        elif kind == "metadata":
            key = ["format", "encoder", "digest", "extra"][value % 4]
            header["__metadata__"][key] = ["", "sha256-0", "legokit-encoder-tokens", OTHER][at % 4]
        else:
            header.pop(name)

    return change


HEADER_EDITS = ["dtype", "shape", "offsets", "shift", "rename", "swap", "metadata", "drop"]
KINDS = ["flip", "flip-data", "truncate", "swap-names", *HEADER_EDITS]
CORRUPTIONS = st.tuples(st.sampled_from(KINDS), st.integers(0, 1 << 16), st.integers(1, 255))


def _corrupt(shard: Path, kind: str, at: int, value: int) -> None:
    data = bytearray(shard.read_bytes())
    data_start = 8 + struct.unpack("<Q", data[:8])[0]
    if kind == "flip":
        data[at % len(data)] ^= value
    elif kind == "flip-data":
        data[data_start + at % (len(data) - data_start)] ^= value
    elif kind == "truncate":
        del data[at % len(data) :]
    elif kind == "swap-names":
        names = sorted({k.split(".")[0] for k in read_layout(shard)})
        a, b = names[at % len(names)], names[(at + 1 + value % (len(names) - 1)) % len(names)]
        shard.write_bytes(header_with(bytes(data), lambda header: _swap(header, a, b)))
        return
    else:
        shard.write_bytes(header_with(bytes(data), _header_edit(kind, at, value)))
        return
    shard.write_bytes(bytes(data))


@CASES
@given(corruption=CORRUPTIONS, which=st.integers(0, 1))
def test_a_corrupted_shard_gives_the_clean_predictions(world, corruption, which):
    root, shards = _cache_copy(world)
    _corrupt(shards[which], *corruption)
    got: dict[str, list[float]] = {}
    with Warned() as seen:
        outcome = run_case(
            "cache-integrity",
            lambda: got.setdefault("prob", _predicted(world, root)),
            [world["data"], world["path"]],
            world["root"] / "ran-code",
        )
    assert outcome.traceback is None, outcome.traceback
    assert not outcome.modified and not outcome.ran_code
    assert outcome.seconds < 5
    assert got["prob"] == _clean(world)
    assert len(seen) <= 1 and all("\n" not in line for line in seen), seen
