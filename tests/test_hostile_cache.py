"""A cache folder as a hostile user, or a co-tenant of a shared cache folder, leaves it: whatever lies there, a run
recomputes what it cannot trust with at most a one-line warning (no crash, no hang, no wrong tensor, no unbounded
memory); `legokit cache clear` deletes only this user's own hash-named folders, `legokit cache list` never blocks;
concurrent writers and readers see whole shards; the memory budget holds."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from legokit.cache import TokenCache, clear_cache, list_cache
from legokit.cache import listing as listing_module
from legokit.cache import store as store_module
from legokit.cache.store import MAX_HANDLES, MAX_SHARD_HEADER, Entry
from legokit.cli.commands import main
from legokit.errors import ConfigError
from tests.test_encoder_cache import SAMPLES, Logged, _train, wrapped  # noqa: F401 - `wrapped` is a fixture

KEY = "ab" * 32
WIDTH = 4
TAG = {"format": "legokit-encoder-tokens", "encoder": KEY}


def _sample(i: int) -> str:
    return f"{i:032x}"


def _entry(value: float, tokens: int = 2) -> Entry:
    return Entry(torch.full((tokens, WIDTH), float(value)), torch.ones(tokens, dtype=torch.bool))


def _store(root: Path, memory: int = 1 << 30):
    return TokenCache(root, memory=memory).of(KEY, WIDTH, {"modality": "notes", "encoder": "test"})


def _fill(root: Path, samples=range(3)) -> Path:
    """A cache with one shard of these samples (sample i: tokens all i); returns the encoder's folder."""
    store = _store(root)
    for i in samples:
        store.put(_sample(i), _entry(i))
    store.close()
    return root / "encoder-tokens" / KEY


def _shard(folder: Path, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] = TAG) -> Path:
    (folder / name).write_bytes(safetensors_bytes(tensors, metadata=metadata))
    return folder / name


def _all_read(store, samples=range(3)) -> bool:
    """Every sample found, with its own values."""
    return all(torch.equal(store.get(_sample(i)).tokens, _entry(i).tokens) for i in samples)


@contextmanager
def _no_hang(seconds: int = 20):
    def stop(*_):
        raise TimeoutError("hung")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class _Os:
    """The os module as the cache store sees it, with some functions replaced."""

    def __init__(self, **replaced):
        self.replaced = replaced

    def __getattr__(self, name):
        return self.replaced[name] if name in self.replaced else getattr(os, name)


def _one_line(seen: list[str]) -> None:
    assert len(seen) == 1 and "\n" not in seen[0], seen


# ---- shards that legokit did not write ------------------------------------------------------------------------------


def test_a_shard_with_a_huge_header_is_skipped_before_its_header_is_read(tmp_path):
    folder = _fill(tmp_path)
    for name, length in (("a.safetensors", 1 << 60), ("b.safetensors", MAX_SHARD_HEADER + 1)):
        (folder / name).write_bytes(struct.pack("<Q", length) + b"{" + b" " * 64)
    with Logged() as seen:
        store = _store(tmp_path)
        assert _all_read(store) and store.get(_sample(9)) is None
    _one_line(seen)
    assert "skipping a cache shard" in seen[0] and "1 more" in seen[0]


@pytest.mark.parametrize(
    "tokens, mask",
    [
        (torch.zeros(2, WIDTH, dtype=torch.float16), torch.ones(2, dtype=torch.bool)),  # another dtype
        (torch.zeros(2, WIDTH + 1), torch.ones(2, dtype=torch.bool)),  # another width
        (torch.zeros(3, WIDTH), torch.ones(2, dtype=torch.bool)),  # tokens and mask disagree
        (torch.zeros(2, WIDTH), torch.ones(2, dtype=torch.int64)),  # a mask that is not bool
        (torch.zeros(1, 2, WIDTH), torch.ones(1, 2, dtype=torch.bool)),  # another rank
    ],
)
def test_entries_of_the_wrong_dtype_or_shape_are_never_trusted(tmp_path, tokens, mask):
    folder = _fill(tmp_path)
    _shard(folder, "z.safetensors", {f"{_sample(0)}.tokens": tokens, f"{_sample(0)}.mask": mask})
    with Logged() as seen:
        store = _store(tmp_path)
        assert _all_read(store)  # the good shard's entry of sample 0, not the bad one
    _one_line(seen)


@pytest.mark.parametrize(
    "names",
    [
        ("../../etc.tokens", "../../etc.mask"),  # not hex
        (f"{_sample(0xABC).upper()}.tokens", f"{_sample(0xABC).upper()}.mask"),  # not lower-case hex
        (f"{_sample(5)}.tokens\n", f"{_sample(5)}.mask\n"),  # a newline after the name: not a name legokit writes
        (f"{_sample(5)}.tokens",),  # tokens without their mask
        (f"{_sample(5)}.mask",),
        (f"{_sample(5)}.tokens", f"{_sample(5)}.mask", "extra"),
    ],
)
def test_a_shard_with_foreign_tensor_names_or_an_incomplete_entry_is_skipped(tmp_path, names):
    folder = _fill(tmp_path)
    tensors = {n: torch.ones(2, WIDTH) if not n.endswith(".mask") else torch.ones(2, dtype=torch.bool) for n in names}
    _shard(folder, "z.safetensors", tensors)
    with Logged() as seen:
        store = _store(tmp_path)
        assert _all_read(store) and store.get(_sample(5)) is None
    _one_line(seen)


def test_a_shard_of_another_encoder_or_format_is_skipped(tmp_path):
    folder = _fill(tmp_path)
    entry = {f"{_sample(0)}.tokens": torch.full((2, WIDTH), 7.0), f"{_sample(0)}.mask": torch.ones(2, dtype=torch.bool)}
    _shard(folder, "y.safetensors", entry, {**TAG, "encoder": "cd" * 32})
    _shard(folder, "z.safetensors", entry, {})
    with Logged() as seen:
        assert _all_read(_store(tmp_path))
    _one_line(seen)


def test_a_shard_that_is_a_link_a_fifo_a_device_or_a_folder_is_skipped_without_blocking(tmp_path):
    folder = _fill(tmp_path)
    (folder / "zero.safetensors").symlink_to("/dev/zero")
    (folder / "loop.safetensors").symlink_to(folder / "loop.safetensors")
    good = next(folder.glob("*.safetensors"))
    (folder / "link.safetensors").symlink_to(good)  # even a link to a good shard: not a regular file here
    os.mkfifo(folder / "pipe.safetensors")
    (folder / "dir.safetensors").mkdir()
    with _no_hang(), Logged() as seen:
        store = _store(tmp_path)
        assert _all_read(store)
        assert [c.samples for c in list_cache(tmp_path)] == [3]
    _one_line(seen)


def test_a_key_folder_that_is_a_link_elsewhere_is_neither_read_nor_written(tmp_path):
    elsewhere = _fill(tmp_path / "elsewhere")
    root = tmp_path / "c"
    (root / "encoder-tokens").mkdir(parents=True)
    (root / "encoder-tokens" / KEY).symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.iterdir())
    with Logged() as seen:
        store = _store(root)
        assert store.get(_sample(0)) is None  # the entries there are not used
        store.put(_sample(7), _entry(7))
        store.close()
    _one_line(seen)
    assert "symbolic link" in seen[0]
    assert sorted(p.name for p in elsewhere.iterdir()) == before  # nothing written there


def test_an_encoder_tokens_folder_that_is_a_link_is_not_followed(tmp_path):
    elsewhere = _fill(tmp_path / "elsewhere").parent
    root = tmp_path / "c"
    root.mkdir()
    (root / "encoder-tokens").symlink_to(elsewhere)
    with Logged() as seen:
        store = _store(root)
        assert store.get(_sample(0)) is None
        store.close()
    _one_line(seen)
    with pytest.raises(ConfigError, match="symbolic link"):
        clear_cache(root)
    with pytest.raises(ConfigError, match="symbolic link"):
        list_cache(root)
    assert (elsewhere / KEY).is_dir()


def test_an_encoder_json_that_is_huge_deeply_nested_not_json_or_a_fifo_lists_as_unknown(tmp_path):
    folder = _fill(tmp_path)
    info = folder / "encoder.json"
    for content in (
        b"{" * 100_000,
        b"[" * 5000 + b"]" * 5000,
        b"\xff\xfe not json",
        b" " * (2 << 20),
        b'{"modality": "\\u001b[31mred\\nline", "encoder": "' + b"x" * 5000 + b'"}',
    ):
        info.unlink()
        info.write_bytes(content)
        with _no_hang():
            (listed,) = list_cache(tmp_path)
        assert listed.samples == 3 and listed.modality.isprintable() and len(listed.encoder) <= 200
    info.unlink()
    secret = folder.parent.parent / "elsewhere.json"
    secret.write_text('{"modality": "not for the listing"}')
    info.symlink_to(secret)
    (listed,) = list_cache(tmp_path)
    assert listed.modality == "?"
    info.unlink()
    os.mkfifo(info)
    with _no_hang():
        (listed,) = list_cache(tmp_path)
    assert (listed.modality, listed.samples) == ("?", 3)


def test_a_shard_truncated_after_indexing_is_recomputed_with_one_warning(tmp_path):
    folder = _fill(tmp_path)
    store = _store(tmp_path)
    assert _sample(0) in store  # indexed
    (shard,) = folder.glob("*.safetensors")
    os.truncate(shard, shard.stat().st_size - 8)
    with Logged() as seen:
        assert [store.get(_sample(i)) for i in range(3)] == [None, None, None]
    _one_line(seen)


def test_a_shard_truncated_while_open_is_recomputed_with_one_warning(tmp_path):
    folder = _fill(tmp_path)
    store = _store(tmp_path, memory=0)  # nothing kept in memory: every read goes to the file
    assert _all_read(store)
    (shard,) = folder.glob("*.safetensors")
    os.truncate(shard, 100)
    with Logged() as seen:
        assert [store.get(_sample(i)) for i in range(3)] == [None, None, None]
    _one_line(seen)


def test_a_shard_replaced_after_indexing_is_not_read_as_the_old_one(tmp_path):
    folder = _fill(tmp_path)
    store = _store(tmp_path)
    assert _sample(0) in store
    (shard,) = folder.glob("*.safetensors")
    other = tmp_path / "other"
    store_other = _store(other)
    for i in range(3):
        store_other.put(_sample(i), _entry(99))  # a valid shard of the same layout: every entry's digest matches
    store_other.close()
    (replacement,) = (other / "encoder-tokens" / KEY).glob("*.safetensors")
    data = replacement.read_bytes()
    assert len(data) == shard.stat().st_size
    (folder / "new").write_bytes(data)
    os.replace(folder / "new", shard)
    with Logged() as seen:
        assert [store.get(_sample(i)) for i in range(3)] == [None, None, None]
    _one_line(seen)


def test_a_cache_that_cannot_be_written_warns_once_and_the_run_goes_on(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with Logged() as seen:
        store = _store(tmp_path / "file" / "cache")
        for i in range(3):
            store.put(_sample(i), _entry(i))
        store.flush()
        store.put(_sample(4), _entry(4))
        store.close()
        assert _all_read(store)  # still in memory for this run
    _one_line(seen)
    assert "cannot be written" in seen[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_is_read_and_warns_once(tmp_path):
    folder = _fill(tmp_path)
    folder.chmod(0o500)
    try:
        with Logged() as seen:
            store = _store(tmp_path)
            assert _all_read(store)
            store.put(_sample(5), _entry(5))
            store.close()
        _one_line(seen)
    finally:
        folder.chmod(0o700)


def test_a_flush_survives_a_concurrent_clear_of_its_folder(tmp_path, monkeypatch):
    store = _store(tmp_path)
    store.put(_sample(0), _entry(0))
    written = store_module.write_atomic

    def then_cleared(path, data, inputs=()):
        written(path, data, inputs)
        if str(path).endswith(".safetensors"):
            os.unlink(path)

    monkeypatch.setattr(store_module, "write_atomic", then_cleared)
    with Logged() as seen:
        store.close()
    _one_line(seen)
    assert torch.equal(store.get(_sample(0)).tokens, _entry(0).tokens)


# ---- another user's files -------------------------------------------------------------------------------------------


def test_another_users_cache_folder_is_not_trusted_listed_or_cleared(tmp_path, monkeypatch):
    folder = _fill(tmp_path)
    monkeypatch.setattr(store_module, "_uid", lambda: os.getuid() + 4242)  # the folder now is someone else's
    with Logged() as seen:
        store = _store(tmp_path)
        assert store.get(_sample(0)) is None
        store.put(_sample(1), _entry(1))
        store.close()
    _one_line(seen)
    assert "belongs to another user" in seen[0]
    assert list_cache(tmp_path) == [] and clear_cache(tmp_path) == []
    assert len(list(folder.glob("*.safetensors"))) == 1  # neither written to nor deleted


def test_a_cache_folder_writable_by_others_is_not_trusted(tmp_path):
    folder = _fill(tmp_path)
    folder.chmod(0o777)
    with Logged() as seen:
        assert _store(tmp_path).get(_sample(0)) is None
    _one_line(seen)
    assert "writable by other users" in seen[0]


def test_a_shard_of_another_user_is_skipped(tmp_path, monkeypatch):
    folder = _fill(tmp_path)
    (shard,) = folder.glob("*.safetensors")
    real = os.fstat

    def owned_by_someone_else(fd):
        found = real(fd)
        if os.path.realpath(f"/proc/self/fd/{fd}") != str(shard.resolve()):
            return found
        fields = list(found)
        fields[stat_uid] = found.st_uid + 4242
        return os.stat_result(fields)

    stat_uid = 4  # st_uid's place in a stat_result
    monkeypatch.setattr(store_module, "os", _Os(fstat=owned_by_someone_else))
    with Logged() as seen:
        assert _store(tmp_path).get(_sample(0)) is None
    _one_line(seen)
    assert "another user" in seen[0]


# ---- legokit cache clear / list -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "../..", "..", "/", "zz", "a" * 65, "ab cd", "ab\n"])
def test_clear_refuses_a_key_that_is_not_hex_and_deletes_nothing(tmp_path, monkeypatch, capsys, key):
    folder = _fill(tmp_path)
    with pytest.raises(ConfigError, match="hex digits"):
        clear_cache(tmp_path, (key,))
    monkeypatch.setenv("LEGOKIT_CACHE", str(tmp_path))
    assert main(["cache", "clear", key]) == 1
    err = capsys.readouterr().err
    assert "hex digits" in err and "Traceback" not in err
    assert folder.is_dir()


def test_clear_deletes_only_this_users_hash_named_folders(tmp_path):
    folder = _fill(tmp_path)
    base = folder.parent
    victim = tmp_path / "victim"
    (victim / "inner").mkdir(parents=True)
    (victim / "inner" / "precious").write_text("keep me")
    (base / ("cd" * 32)).symlink_to(victim)  # a link named like a key, pointing outside
    (base / ("ef" * 32)).write_text("a file named like a key")
    (base / "not-a-key").mkdir()
    (base / "not-a-key" / "x.safetensors").write_text("keep")
    os.mkfifo(base / ("01" * 32))
    (base / (KEY + "\n")).mkdir()  # a newline after a key: not a name legokit makes
    with _no_hang():
        assert [c.key for c in list_cache(tmp_path)] == [KEY]
        assert [c.key for c in clear_cache(tmp_path)] == [KEY]
    assert not folder.exists()
    assert (victim / "inner" / "precious").read_text() == "keep me"
    assert sorted(p.name for p in base.iterdir()) == sorted(["cd" * 32, "ef" * 32, "not-a-key", "01" * 32, KEY + "\n"])


def test_clear_warns_and_goes_on_when_a_folder_cannot_be_deleted(tmp_path, monkeypatch):
    _fill(tmp_path)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(listing_module.shutil, "rmtree", refuse)
    with Logged() as seen:
        assert clear_cache(tmp_path) == []
    _one_line(seen)


def test_list_goes_on_when_files_vanish_while_it_lists(tmp_path, monkeypatch):
    folder = _fill(tmp_path)
    temp = folder / ".x.safetensors.123.abcdefgh.tmp"  # a writer's temporary file, renamed as list reads
    temp.write_bytes(b"partial")
    scandir = os.scandir

    class Vanishing:
        def __init__(self, path):
            self.entries = list(scandir(path))
            if temp.exists():
                temp.unlink()

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(listing_module, "os", _Os(scandir=Vanishing))
    (listed,) = list_cache(tmp_path)
    assert listed.samples == 3


# ---- many shards, budgets -------------------------------------------------------------------------------------------


def test_reading_from_many_shards_keeps_few_files_open(tmp_path):
    for i in range(MAX_HANDLES + 20):  # one run per sample: a shard each
        _fill(tmp_path, [i])
    store = _store(tmp_path, memory=0)
    assert _all_read(store, range(MAX_HANDLES + 20))
    assert len(store.handles) <= MAX_HANDLES
    store.close()


def test_a_shard_holds_a_bounded_number_of_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "SHARD_ENTRIES", 10)
    folder = _fill(tmp_path, range(35))
    assert len(list(folder.glob("*.safetensors"))) == 4
    assert _all_read(_store(tmp_path), range(35))


def test_the_memory_budget_counts_what_an_entry_really_takes(tmp_path, monkeypatch):
    small = _entry(0, tokens=1)
    assert small.nbytes >= 1000  # a one-token entry's objects outweigh its 17 bytes of data
    monkeypatch.setenv("LEGOKIT_CACHE_MEMORY", "12345")
    assert TokenCache(tmp_path).budget.limit == 12345


def test_entries_over_the_memory_budget_are_read_back_from_disk(tmp_path):
    size = _entry(0).nbytes
    store = _store(tmp_path, memory=3 * size)
    for i in range(10):
        store.put(_sample(i), _entry(i))
    store.flush()
    assert len(store.memory) == 3 and store.budget.used <= 3 * size
    assert _all_read(store, range(10))  # the other seven from the shard
    assert len(store.memory) == 3 and store.budget.used <= 3 * size


def test_without_the_disk_cache_entries_over_the_budget_are_recomputed(tmp_path):
    store = TokenCache(None, memory=3 * _entry(0).nbytes).of(KEY, WIDTH, {})
    for i in range(10):
        store.put(_sample(i), _entry(i))
    assert sum(store.get(_sample(i)) is not None for i in range(10)) == 3
    assert not (tmp_path / "encoder-tokens").exists()


def test_a_training_run_within_a_zero_budget_reads_its_entries_back_from_disk(wrapped, tmp_path, monkeypatch):  # noqa: F811
    paths, data = wrapped
    monkeypatch.setattr(store_module, "OVER_BUDGET", 1)  # every entry written at once, then read back
    _, with_disk, counter = _train(paths["notes"], data, TokenCache(tmp_path / "c", memory=0), epochs=2)
    assert counter.samples == SAMPLES  # encoded once, then read from the shards in every epoch
    _, in_memory, _ = _train(paths["notes"], data, TokenCache(None), epochs=2)
    _, recomputed, counter = _train(paths["notes"], data, TokenCache(None, memory=0), epochs=2)
    assert counter.samples > 2 * SAMPLES  # nothing kept: the encoder ran in every pass
    losses = [[round(r["train_loss"], 5) for r in result.history] for result in (with_disk, in_memory, recomputed)]
    assert losses[0] == losses[1] == losses[2]


def test_a_hostile_folder_beside_good_shards_costs_a_training_run_nothing(wrapped, tmp_path):  # noqa: F811
    paths, data = wrapped
    root = tmp_path / "c"
    _train(paths["notes"], data, TokenCache(root), epochs=1)
    (folder,) = (root / "encoder-tokens").iterdir()
    key = folder.name
    (folder / "huge.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    (folder / "zero.safetensors").symlink_to("/dev/zero")
    os.mkfifo(folder / "pipe.safetensors")
    bad = {
        f"{'0' * 32}.tokens": torch.zeros(1, 3, dtype=torch.float16),
        f"{'0' * 32}.mask": torch.ones(1, dtype=torch.bool),
    }
    _shard(folder, "bad.safetensors", bad, {"format": "legokit-encoder-tokens", "encoder": key})
    (folder / "encoder.json").write_bytes(b"[" * 100_000)
    with _no_hang(120), Logged() as seen:
        _, _, counter = _train(paths["notes"], data, TokenCache(root), epochs=1)
    assert counter.samples == 0
    assert [line for line in seen if "cache" in line and "shard" in line][0].count("\n") == 0
    assert len([line for line in seen if "skipping" in line]) == 1


# ---- concurrency ----------------------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, torch
    from legokit.cache import store
    store.SHARD_ENTRIES = 20
    cache = store.TokenCache(sys.argv[1], memory=0)
    part = cache.of(sys.argv[2], 4, {})
    first = int(sys.argv[3])
    for i in range(first, first + 200):
        rows = i % 5 + 1
        part.put(f"{i:032x}", store.Entry(torch.full((rows, 4), float(i)), torch.ones(rows, dtype=torch.bool)))
    cache.close()
""")


def test_two_writers_and_a_reader_of_one_encoder_folder(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), KEY, str(first)], env=env) for first in (0, 100)
    ]  # samples 100-199 written by both
    seen, rounds = set(), 0
    while any(w.poll() is None for w in writers) or rounds < 2:
        rounds += 1
        store = _store(tmp_path, memory=0)
        with Logged() as warned:
            for sample in list(store._index()):
                entry = store.get(sample)
                i = int(sample, 16)
                assert entry is not None and torch.equal(entry.tokens, torch.full((i % 5 + 1, WIDTH), float(i)))
                seen.add(sample)
        store.close()
        assert warned == []
    assert [w.wait() for w in writers] == [0, 0]
    assert seen == {_sample(i) for i in range(300)}
    shards = list((tmp_path / "encoder-tokens" / KEY).glob("*.safetensors"))
    assert len(shards) == 20 and len({s.name for s in shards}) == 20
