"""Allowlist checks of the archives users hand legokit: torch.export programs (PT2) and torch.save files. They run
on Python's zip reader and `pickletools` alone, before any torch loader sees the bytes:
only the records a format needs pass, every record is stored (never deflated) and capped in size, raw tensor
records must be exactly as long as their shape and dtype say, and pickles may name only allowlisted globals. A thin
program (as a `.st` file stores it) may leave a weight record exactly empty only where a tensor of the same dtype
and shape beside it in the file refills it (`refill_records`, `program_records(beside=...)`).
"""

from __future__ import annotations

import io
import json
import math
import pickletools
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from legokit.artifacts.program_schema import canonical_payload, canonical_program
from legokit.errors import EncoderError, brief
from legokit.io.jsoncap import capped_json
from legokit.torch_internals import (
    CONSTANTS_DIR,
    ELEMENT_BYTES,
    MODELS_DIR,
    PROGRAM_JSON,
    PROGRAM_SMALL,
    RAW_CONSTANT,
    RAW_WEIGHT,
    SAFETENSORS_CODES,
    SAMPLE_INPUTS,
    STATE_DICT_GLOBALS,
    STORAGE_RECORD,
    TORCH_SAVE_PICKLE,
    TORCH_SAVE_SMALL,
    WEIGHTS_DIR,
)

MAX_RECORDS = 20_000
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_SMALL_BYTES = 4096

# pickle opcodes that build plain data, look up allowlisted globals and call them; nothing else passes
SAFE_OPCODES = frozenset(
    {
        "PROTO",
        "FRAME",
        "STOP",
        "MARK",
        "POP",
        "POP_MARK",
        "DUP",
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
        "INT",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG",
        "LONG1",
        "LONG4",
        "FLOAT",
        "BINFLOAT",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "BINBYTES",
        "SHORT_BINBYTES",
        "BINBYTES8",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
        "EMPTY_LIST",
        "APPEND",
        "APPENDS",
        "LIST",
        "EMPTY_TUPLE",
        "TUPLE",
        "TUPLE1",
        "TUPLE2",
        "TUPLE3",
        "EMPTY_DICT",
        "DICT",
        "SETITEM",
        "SETITEMS",
        "EMPTY_SET",
        "ADDITEMS",
        "FROZENSET",
        "GET",
        "BINGET",
        "LONG_BINGET",
        "PUT",
        "BINPUT",
        "LONG_BINPUT",
        "MEMOIZE",
        "BINPERSID",
        "GLOBAL",
        "REDUCE",
        "BUILD",
        "NEWOBJ",
    }
)


# serialized dtype codes (torch_internals.SAFETENSORS_CODES) -> the safetensors dtype names legokit says
DTYPE_NAMES: Mapping[int, str] = {code: name for name, code in SAFETENSORS_CODES.items()}

# what the file holds beside a thin program: each weight's fqn -> (serialized dtype code, shape) of its tensor there
Beside = Mapping[str, tuple[int, tuple[int, ...]]]


@dataclass(frozen=True)
class Records:
    """The records of a checked archive, by name below its root folder. For a thin program (`beside` given to
    `program_records`), `refill` names each empty weight record and the fqn whose tensor beside the program fills it;
    such a record's data is empty here."""

    data: dict[str, bytes]
    refill: dict[str, str] = field(default_factory=dict)


def _zip(data: bytes, what: str, limit: int) -> tuple[zipfile.ZipFile, str]:
    """A zip archive whose entries are stored (never deflated), uniquely named below one root folder, and within
    `limit` bytes in all."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise EncoderError(f"{what}: not a readable zip archive ({exc})") from exc
    if not entries or len(entries) > MAX_RECORDS:
        raise EncoderError(f"{what}: a zip archive of {len(entries)} records")
    names = [e.filename for e in entries]
    if len(set(names)) != len(names):
        raise EncoderError(f"{what}: a record name appears twice in the archive")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n or ".." in n.split("/") or n.startswith("/") for n in names):
        raise EncoderError(f"{what}: records must lie in one root folder (found {', '.join(sorted(roots))[:80]})")
    total = 0
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED:
            raise EncoderError(f"{what}: record {entry.filename} is compressed; legokit reads stored records only")
        total += entry.file_size
        if entry.file_size != entry.compress_size or total > limit:
            raise EncoderError(f"{what}: records larger than the archive itself ({total} bytes)")
    return archive, roots.pop()


def _read(archive: zipfile.ZipFile, name: str, what: str) -> bytes:
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as exc:
        raise EncoderError(f"{what}: record {name} cannot be read ({exc})") from exc


def load_json(data: bytes, what: str) -> Any:
    """JSON with a size and nesting cap; anything else is a one-line EncoderError."""
    if len(data) > MAX_JSON_BYTES:
        raise EncoderError(f"{what}: JSON of {len(data):,} bytes (cap {MAX_JSON_BYTES:,})")
    return capped_json(data, lambda reason: EncoderError(f"{what}: its JSON {reason}"))


def _tensor_extent(meta: Any, what: str) -> int:
    """Bytes of storage a serialized tensor reaches: (offset + sum of (size - 1) x stride + 1) x element size."""
    try:
        sizes = [int(s["as_int"]) for s in meta["sizes"]]
        strides = [int(s["as_int"]) for s in meta.get("strides") or []] or [0] * len(sizes)
        offset = int((meta.get("storage_offset") or {"as_int": 0})["as_int"])
        element = ELEMENT_BYTES[int(meta["dtype"])]
    except (KeyError, TypeError, ValueError) as exc:
        raise EncoderError(f"{what}: a tensor without a plain shape and dtype ({type(exc).__name__})") from exc
    if len(strides) != len(sizes) or any(v < 0 for v in (*sizes, *strides, offset)):
        raise EncoderError(f"{what}: a tensor of negative or inconsistent size, stride or offset")
    if any(size == 0 for size in sizes):
        return 0
    return (offset + sum((size - 1) * stride for size, stride in zip(sizes, strides)) + 1) * element


def whole_tensor(meta: Any, what: str) -> tuple[int, tuple[int, ...]] | None:
    """(dtype code, sizes) of a serialized tensor that is the whole of its record read in order (contiguous strides,
    storage offset 0, not empty), so that the record can be rebuilt from a tensor of that dtype and shape alone; None
    for a view into shared storage (an offset, other strides) or an empty tensor."""
    extent = _tensor_extent(meta, what)  # checks the sizes, strides, offset and dtype first
    sizes = [int(s["as_int"]) for s in meta["sizes"]]
    strides = [int(s["as_int"]) for s in meta.get("strides") or []] or [0] * len(sizes)
    offset = int((meta.get("storage_offset") or {"as_int": 0})["as_int"])
    if offset or not extent:
        return None
    expected = 1
    for size, stride in zip(reversed(sizes), reversed(strides)):
        if size != 1 and stride != expected:
            return None
        expected *= size
    return int(meta["dtype"]), tuple(sizes)


def _dtype_text(code: int) -> str:
    return DTYPE_NAMES.get(code, f"dtype code {code}")


def _refill_source(record: str, users: list[tuple[str, Any]], needed: int, beside: Beside, what: str) -> str:
    """The fqn whose tensor beside a thin program refills its empty weight record: a tensor of the program that is
    the whole record (`whole_tensor`, exactly `needed` bytes), with a tensor of the same dtype and shape beside it.
    Anything else is a one-line EncoderError naming the record; nothing is allocated."""
    wholes = []
    for fqn, meta in users:
        found = whole_tensor(meta, f"{what}: {fqn}")
        if found is not None and math.prod(found[1]) * ELEMENT_BYTES[found[0]] == needed:
            wholes.append((fqn, found))
    if not wholes:
        raise EncoderError(
            f"{what}: record {record} is empty, and none of its tensors covers it whole, so nothing can refill it"
        )
    for fqn, found in wholes:
        if beside.get(fqn) == found:
            return fqn
    for fqn, (code, sizes) in wholes:
        if fqn in beside:
            got_code, got_sizes = beside[fqn]
            raise EncoderError(
                f"{what}: record {record} is empty, and the tensor beside it for {fqn} is "
                f"{_dtype_text(got_code)} {list(got_sizes)[:8]}, not {_dtype_text(code)} {list(sizes)[:8]}"
            )
    raise EncoderError(
        f"{what}: record {record} is empty, and no tensor beside the program refills it (one for {wholes[0][0]})"
    )


def program_records(
    program: bytes,
    strict: bool = True,
    what: str = "the encoder program",
    beside: Beside | None = None,
    in_place: bool = False,
) -> Records:
    """The records of a torch.export archive that pass the allowlist: exactly one model named `model`, its JSON
    records, and raw tensor records listed in its weights/constants configs with the byte size their shape and dtype
    give; no pickled weight or constant, no object constant, no other record. `strict` (an archive legokit wrote)
    also needs the pickled sample inputs to be empty; a user's archive may carry them, since rebuilding drops them.

    `beside` (a thin program stored in a `.st` file) lets a weight record be exactly empty when a tensor of the
    program covers it whole and the file holds a tensor of that fqn with the same dtype and shape (`Records.refill`
    says which); every other record is checked as without it. `in_place`: a user's program that `wrap` re-exports as
    a pure function may write into its own tensors (`program_schema.operator`)."""
    archive, root = _zip(program, what, len(program))
    by_name = {e.filename[len(root) + 1 :]: e for e in archive.infolist()}
    models = [n for n in by_name if n.startswith(MODELS_DIR)]
    if models != [PROGRAM_JSON[0]]:
        raise EncoderError(
            f"{what}: must hold exactly one model, models/model.json (found {', '.join(models)[:80] or 'none'})"
        )
    records: dict[str, bytes] = {}
    for name in PROGRAM_SMALL:
        if name in by_name:
            if by_name[name].file_size > MAX_SMALL_BYTES:
                raise EncoderError(f"{what}: record {name} is {by_name[name].file_size:,} bytes")
            records[name] = _read(archive, by_name[name].filename, what)
    configs = {}
    for name in PROGRAM_JSON:
        if name not in by_name:
            raise EncoderError(f"{what}: record {name} is missing")
        parsed = load_json(_read(archive, by_name[name].filename, what), f"{what}: {name}")
        # torch reads only the JSON re-written from the checked values (program_schema's docstring says why)
        configs[name] = (
            canonical_program(parsed, what, in_place)
            if name == PROGRAM_JSON[0]
            else canonical_payload(parsed, what, name)
        )
        records[name] = json.dumps(configs[name]).encode()
    reach: dict[str, int] = {}
    users: dict[str, list[tuple[str, Any]]] = {}
    for folder, name, kind in (
        (WEIGHTS_DIR, PROGRAM_JSON[1], RAW_WEIGHT),
        (CONSTANTS_DIR, PROGRAM_JSON[2], RAW_CONSTANT),
    ):
        table = configs[name].get("config") if isinstance(configs[name], dict) else None
        if not isinstance(table, dict):
            raise EncoderError(f"{what}: {name} has no config table")
        for fqn, meta in table.items():
            if not isinstance(meta, dict) or meta.get("use_pickle", True):
                raise EncoderError(f"{what}: {fqn} is stored as a pickle; legokit keeps no pickles")
            path = meta.get("path_name")
            # torch's loader picks how to read a record from its name (custom_obj_*, opaque_obj_* are unpickled
            # whatever use_pickle says): only the names of raw tensors pass
            if not isinstance(path, str) or not kind.match(path):
                raise EncoderError(
                    f"{what}: {fqn} is stored as {str(path)[:40]!r}, not as a raw tensor record; "
                    "legokit keeps no objects"
                )
            record = folder + path
            if record not in by_name:
                raise EncoderError(f"{what}: {fqn} names a record that is not in the archive")
            reach[record] = max(reach.get(record, 0), _tensor_extent(meta.get("tensor_meta"), f"{what}: {fqn}"))
            users.setdefault(record, []).append((fqn, meta.get("tensor_meta")))
    # tensors that share a storage (a view of a parameter) share one record, as long as their widest reach
    refill: dict[str, str] = {}
    for record, needed in reach.items():
        if beside is not None and record.startswith(WEIGHTS_DIR) and needed and not by_name[record].file_size:
            refill[record] = _refill_source(record, users[record], needed, beside, what)
            records[record] = b""
            continue
        if by_name[record].file_size != needed:
            raise EncoderError(
                f"{what}: record {record} holds {by_name[record].file_size:,} bytes, its tensors reach {needed:,}"
            )
        records[record] = _read(archive, by_name[record].filename, what)
    if SAMPLE_INPUTS in by_name:
        if strict and by_name[SAMPLE_INPUTS].file_size:
            raise EncoderError(f"{what}: carries pickled sample inputs")
        records[SAMPLE_INPUTS] = b""
    unknown = sorted(set(by_name) - set(records))
    if unknown:
        raise EncoderError(f"{what}: record {unknown[0]} is not part of a torch.export program legokit reads")
    return Records(records, refill)


@dataclass(frozen=True)
class Refill:
    """A thin program's records as stored (not yet checked: the filled archive goes through `program_records`), and
    its empty weight records, each with the fqn whose tensor beside the program fills it."""

    data: dict[str, bytes]
    plan: dict[str, str]


def _known_name(name: str) -> bool:
    folder, _, leaf = name.rpartition("/")
    return (
        name in PROGRAM_SMALL
        or name in PROGRAM_JSON
        or name == SAMPLE_INPUTS
        or (folder + "/" == WEIGHTS_DIR and bool(RAW_WEIGHT.match(leaf)))
        or (folder + "/" == CONSTANTS_DIR and bool(RAW_CONSTANT.match(leaf)))
    )


def refill_records(program: bytes, beside: Beside, what: str = "the encoder program") -> Refill | None:
    """What a thin program needs to be whole again: None when no weight record is empty (a full program, used as
    it is), else its records and which tensor beside it fills each empty weight record (`_refill_source`). Only the
    zip directory and the weights config are read to decide; a record outside the program's allowlisted names is
    refused here, and the filled archive still passes the whole strict allowlist (`program_records`) before torch
    sees it."""
    archive, root = _zip(program, what, len(program))
    by_name = {e.filename[len(root) + 1 :]: e for e in archive.infolist()}
    empty = [n for n, e in by_name.items() if n.startswith(WEIGHTS_DIR) and not e.file_size]
    if not empty:
        return None
    # refused here as `program_records` refuses them: the rewrite below drops the .data/ records (torch's writer
    # adds its own), so none of them may pass here that the allowlist would refuse
    _check_names(by_name, what, _known_name, PROGRAM_SMALL, "a torch.export program")
    if PROGRAM_JSON[1] not in by_name:
        raise EncoderError(f"{what}: record {PROGRAM_JSON[1]} is missing")
    config = canonical_payload(
        load_json(_read(archive, by_name[PROGRAM_JSON[1]].filename, what), f"{what}: {PROGRAM_JSON[1]}"),
        what,
        PROGRAM_JSON[1],
    )
    users: dict[str, list[tuple[str, Any]]] = {}
    for fqn, meta in config["config"].items():
        path = meta.get("path_name")
        if not meta.get("use_pickle", True) and isinstance(path, str) and RAW_WEIGHT.match(path):
            users.setdefault(WEIGHTS_DIR + path, []).append((fqn, meta.get("tensor_meta")))
    plan: dict[str, str] = {}
    for record in empty:
        if record not in users:
            continue  # not a weight of the program: the allowlist refuses it below
        needed = max(_tensor_extent(meta, f"{what}: {fqn}") for fqn, meta in users[record])
        if needed:
            plan[record] = _refill_source(record, users[record], needed, beside, what)
    if not plan:
        return None
    # every record is read (its CRC checked) as the allowlist reads it; the writer replaces the .data/ ones
    data = {name: b"" if name in plan else _read(archive, entry.filename, what) for name, entry in by_name.items()}
    return Refill(data, plan)


def pickle_globals(data: bytes, what: str) -> set[tuple[str, str]]:
    """The globals a pickle names, read with pickletools (nothing is unpickled); an opcode outside SAFE_OPCODES, or a
    global looked up from the stack, is refused."""
    found: set[tuple[str, str]] = set()
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name not in SAFE_OPCODES:
                raise EncoderError(f"{what}: the pickle uses opcode {opcode.name}, which legokit does not allow")
            if opcode.name == "GLOBAL":
                module, _, name = str(argument).partition(" ")
                found.add((module, name))
    except EncoderError:
        raise
    except Exception as exc:  # noqa: BLE001 - pickletools raises ValueError and others on corrupt bytes
        raise EncoderError(f"{what}: a corrupt pickle ({brief(exc, 120)})") from exc
    return found


def check_pickle(data: bytes, allowed: Callable[[tuple[str, str]], bool], what: str) -> None:
    """Refuse a pickle that names any global outside the allowlist, naming the first such global."""
    foreign = sorted(g for g in pickle_globals(data, what) if not allowed(g))
    if foreign:
        module, name = foreign[0]
        raise EncoderError(
            f"{what}: a pickled Python object ({module}.{name}); unpickling runs code named in the file. "
            "Save a state dict, TorchScript or torch.export program instead, or pass --trust-pickle "
            "if you trust it"
        )


def check_torch_save(data: bytes, what: str) -> None:
    """A torch.save zip holding tensors only: data.pkl naming only tensor-rebuilding globals, raw storages, version
    records. (A pickled module names its classes and is refused here, with the way out.)"""
    archive, root = _zip(data, what, len(data))
    by_name = {e.filename[len(root) + 1 :]: e for e in archive.infolist()}
    _check_names(
        by_name,
        what,
        allowed=lambda n: n == TORCH_SAVE_PICKLE or n in TORCH_SAVE_SMALL or bool(STORAGE_RECORD.match(n)),
    )
    if TORCH_SAVE_PICKLE not in by_name:
        raise EncoderError(f"{what}: a zip archive without data.pkl; not a torch.save file")
    check_pickle(_read(archive, by_name[TORCH_SAVE_PICKLE].filename, what), STATE_DICT_GLOBALS.__contains__, what)


def _check_names(
    by_name: Mapping[str, zipfile.ZipInfo],
    what: str,
    allowed: Callable[[str], bool],
    small: tuple[str, ...] = TORCH_SAVE_SMALL,
    format_name: str = "the format",
) -> None:
    """Every record is one the format has, and its small records (versions, byte order) are small."""
    unknown = sorted(n for n in by_name if not allowed(n))
    if unknown:
        raise EncoderError(f"{what}: record {unknown[0]} is not part of {format_name} legokit reads")
    for name in by_name:
        if name in small and by_name[name].file_size > MAX_SMALL_BYTES:
            raise EncoderError(f"{what}: record {name} is {by_name[name].file_size:,} bytes")
