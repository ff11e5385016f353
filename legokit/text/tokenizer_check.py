"""Allowlist check of a tokenizer.json before the `tokenizers` library builds it.

A block's tokenizer comes from whoever made the block, and the library trusts it: a regex from the file runs on the
backtracking Oniguruma engine (hours at the text cap, or a Rust panic), a broken charsmap or template panics, a
missing unknown token raises at encode, and some sizes are allocated as written. So the parsed JSON must match a
closed schema (the component types and fields of the tokenizers legokit supports: BERT/MiniLM, RoBERTa/GPT-2,
Llama, Qwen, DeepSeek, T5, XLM-R...), regexes must be one of a fixed set of well-known patterns (anything else is
a plain `{"String": ...}` pattern), every size and string is bounded, and the tokens the model and the
post-processor emit must exist. The result is what the library is given, re-serialized, so it builds exactly
what was checked.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from legokit.artifacts.allowlist import capped_json
from legokit.errors import ConfigError

MAX_SEQUENCE = 16  # components in one Sequence
MAX_NESTING = 3  # Sequences inside Sequences
MAX_SHORT = 64  # characters of a setting string: prefixes, special tokens, replacements, String patterns
MAX_TOKEN_CHARS = 1024  # characters of a vocabulary token or a merge part
MAX_PIECE_CHARS = 64  # characters of a Unigram piece: its lattice does work per char for every piece length
MAX_ADDED_CHARS = 1_000_000  # characters of all added tokens together (one automaton is built over them)
MAX_TEMPLATE = 16  # pieces of a post-processor template, and ids of one special token
MAX_ID = 1 << 24  # token ids, type ids and lengths in the file stay below this
MAX_WORD_CHARS = 100  # WordPiece's longest word: its greedy search costs the square of it per word
MAX_CHARSMAP_BYTES = 1 << 20  # a sentencepiece charsmap (T5 and XLM-R carry about 240 KB)
MAX_GROWTH = 1024.0  # bound on how many times longer (UTF-8 bytes) normalizing and pre-tokenizing make a text


def _deepseek(newline: str) -> str:
    """DeepSeek V3's word pattern, its newline class spelled as escapes or as the characters themselves."""
    return (
        r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^""" + newline + r"""\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
        r"""| ?[\p{P}\p{S}]+[""" + newline + r"""]*|\s*[""" + newline + r"""]+|\s+(?!\S)|\s+"""
    )


# Regexes of well-known tokenizers, exactly as their tokenizer.json carries them, with the fewest bytes a match
# takes; each runs in linear time on the engine (checked by the tests at the text cap). Nothing else is a regex.
_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
KNOWN_PATTERNS: Mapping[str, tuple[str, int]] = {
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+": ("GPT-2", 1),
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": (
        "Llama 3 / cl100k",
        1,
    ),
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": ("Qwen2", 1),
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
    rf"{_CONTRACTIONS}?|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+": ("o200k / Llama 4", 1),
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*|\p{{N}}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+": ("Mistral Tekken", 1),
    r" ?[^(\s|[.,!?…。，、।۔،])]+": ("BLOOM", 1),
    r"\p{N}{1,3}": ("DeepSeek digits", 1),
    "[一-龥\u3040-ゟ゠-ヿ]+": ("DeepSeek CJK", 1),
    **{_deepseek(newline): ("DeepSeek", 1) for newline in (r"\r\n", "\r\n")},
    " {2,}": ("T5 / XLM-R spaces", 2),
}

Check = Callable[[Any, str, "Walk"], None]


@dataclass
class Walk:
    """What the schema walk gathers: the growth bound so far, how deep Sequences nest, the characters of added
    tokens, and the (token, id, where) triples the post-processor emits."""

    growth: float = 1.0
    nesting: int = 0
    added_chars: int = 0
    specials: list[tuple[str, int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Component:
    """One allowed component type: its fields (name -> check; any may be absent unless required), how many times
    longer in UTF-8 bytes it can make a text (normalizers and pre-tokenizers), and the work it does per character
    relative to a plain model (models: WordPiece's greedy search grows with its longest word, Unigram's lattice with
    its longest piece)."""

    fields: Mapping[str, Check]
    required: frozenset[str] = frozenset()
    growth: Callable[[Mapping[str, Any]], float] = lambda component: 1.0
    cost: Callable[[Mapping[str, Any]], int] = lambda component: 1


@dataclass(frozen=True)
class CheckedTokenizer:
    """A tokenizer.json that passed the allowlist: the JSON object to build (truncation and padding emptied), the
    most times longer normalizing and pre-tokenizing can make a text, and the model's work per character."""

    config: dict[str, Any]
    growth: float
    cost: int


def _refuse(where: str, problem: str) -> ConfigError:
    return ConfigError(f"the block's tokenizer.json, {where or 'top level'}: {problem}")


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---- field checks: each takes (value, where, walk) and raises a ConfigError naming `where` ----


def flag(value: Any, where: str, walk: Walk) -> None:
    """A JSON boolean."""
    if not isinstance(value, bool):
        raise _refuse(where, f"must be true or false, not {_shown(value)}")


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _refuse(where, f"must be an integer from {low} to {high}, not {_shown(value)}")
    return value


def integer(low: int, high: int) -> Check:
    """An integer in [low, high]."""

    def check(value: Any, where: str, walk: Walk) -> None:
        _integer(value, where, low, high)

    return check


def _string(value: Any, where: str, low: int, high: int) -> str:
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise _refuse(where, f"must be a string of {low} to {high} characters, not {_shown(value)}")
    return value


def string(high: int = MAX_SHORT, low: int = 0) -> Check:
    """A string of `low` to `high` characters."""

    def check(value: Any, where: str, walk: Walk) -> None:
        _string(value, where, low, high)

    return check


def choice(*allowed: Any) -> Check:
    """One of a few fixed values."""

    def check(value: Any, where: str, walk: Walk) -> None:
        if isinstance(value, bool) or value not in allowed:
            raise _refuse(where, f"must be one of {', '.join(map(repr, allowed))}, not {_shown(value)}")

    return check


def optional(inner: Check) -> Check:
    """null, or what `inner` accepts."""
    return lambda value, where, walk: None if value is None else inner(value, where, walk)


def listed(inner: Check, most: int) -> Check:
    """A list of at most `most` items, each accepted by `inner`."""

    def check(value: Any, where: str, walk: Walk) -> None:
        if not isinstance(value, list) or len(value) > most:
            raise _refuse(where, f"must be a list of at most {most} items")
        for index, item in enumerate(value):
            inner(item, f"{where}[{index}]", walk)

    return check


def pattern(value: Any, where: str, walk: Walk) -> None:
    """{"String": s}, a plain text, or {"Regex": r} where r is one of KNOWN_PATTERNS: no other regex reaches the
    backtracking engine."""
    if not isinstance(value, dict) or len(value) != 1 or not {"String", "Regex"} & set(value):
        raise _refuse(where, 'a pattern must be {"String": ...} or {"Regex": ...}')
    if "String" in value:
        _string(value["String"], _at(where, "String"), 1, MAX_SHORT)
    elif not isinstance(value["Regex"], str) or value["Regex"] not in KNOWN_PATTERNS:
        raise _refuse(
            where,
            f"the regex {_shown(value['Regex'], 40)} is not one legokit knows (the pre-tokenizer "
            'patterns of GPT-2, Llama 3/4, Qwen2, Tekken, DeepSeek, BLOOM, and T5\'s " {2,}"); write a '
            'plain pattern as {"String": ...}',
        )


def special(value: Any, where: str, walk: Walk) -> None:
    """A [token, id] pair of BertProcessing/RobertaProcessing: the token is checked against the vocabulary later."""
    if not isinstance(value, list) or len(value) != 2:
        raise _refuse(where, "must be a [token, id] pair")
    walk.specials.append((_string(value[0], where, 1, MAX_SHORT), _integer(value[1], where, 0, MAX_ID), where))


def template(value: Any, where: str, walk: Walk) -> None:
    """A template: {"SpecialToken": {"id", "type_id"}} and {"Sequence": {"id": "A"|"B", "type_id"}} pieces."""
    listed(_template_piece, MAX_TEMPLATE)(value, where, walk)


def _template_piece(value: Any, where: str, walk: Walk) -> None:
    kinds = {"SpecialToken": string(MAX_SHORT, 1), "Sequence": choice("A", "B")}
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in kinds:
        raise _refuse(where, 'a template piece must be {"SpecialToken": ...} or {"Sequence": ...}')
    kind = next(iter(value))
    _fields(value[kind], {"id": kinds[kind], "type_id": integer(0, 255)}, frozenset({"id"}), _at(where, kind), walk)


def special_tokens(value: Any, where: str, walk: Walk) -> None:
    """TemplateProcessing's special tokens: name -> {"id": name, "ids": [...], "tokens": [...]}, as many ids as
    tokens, each (token, id) recorded for the vocabulary check."""
    if not isinstance(value, dict) or len(value) > MAX_TEMPLATE * 4:
        raise _refuse(where, f"must be a map of at most {MAX_TEMPLATE * 4} special tokens")
    schema = {
        "id": string(MAX_SHORT, 1),
        "ids": listed(integer(0, MAX_ID), MAX_TEMPLATE),
        "tokens": listed(string(MAX_SHORT, 1), MAX_TEMPLATE),
    }
    for name, entry in value.items():
        place = f"{where}[{name!r}]"
        _fields(entry, schema, frozenset(schema), place, walk)
        if entry["id"] != name or len(entry["ids"]) != len(entry["tokens"]):
            raise _refuse(place, "its id must be its name, with as many ids as tokens")
        walk.specials.extend((token, id_, place) for token, id_ in zip(entry["tokens"], entry["ids"]))


def token_ids(high: int) -> Check:
    """A vocabulary: token (1 to `high` characters) -> id."""

    def check(value: Any, where: str, walk: Walk) -> None:
        if not isinstance(value, dict):
            raise _refuse(where, "must be a map from token to id")
        for token, id_ in value.items():
            if not 0 < len(token) <= high or not isinstance(id_, int) or isinstance(id_, bool) or not 0 <= id_ < MAX_ID:
                raise _refuse(
                    where,
                    f"entry {_shown(token, 30)}: {_shown(id_, 20)} is not a token of 1 to {high} "
                    f"characters with an id below {MAX_ID}",
                )

    return check


def pieces(value: Any, where: str, walk: Walk) -> None:
    """A Unigram vocabulary: [piece, finite log-probability] pairs; a piece's id is its index."""
    if not isinstance(value, list) or len(value) >= MAX_ID:
        raise _refuse(where, "must be a list of [piece, score] pairs")
    for index, item in enumerate(value):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not 0 < len(item[0]) <= MAX_PIECE_CHARS
            or isinstance(item[1], bool)
            or not isinstance(item[1], (int, float))
            or not math.isfinite(item[1])
        ):
            raise _refuse(
                f"{where}[{index}]",
                f"{_shown(item, 40)} is not a [piece of 1 to {MAX_PIECE_CHARS} characters, finite score] pair",
            )


def merges(value: Any, where: str, walk: Walk) -> None:
    """BPE merges: a list, each checked against the vocabulary once it is known (check_merges)."""
    if not isinstance(value, list):
        raise _refuse(where, "must be a list of merges")


def added_token(value: Any, where: str, walk: Walk) -> None:
    """One added token: its content (matched by an automaton over all of them, so their length is capped in all)."""
    _fields(value, ADDED_TOKEN, frozenset({"id", "content"}), where, walk)
    walk.added_chars += len(value["content"])
    if walk.added_chars > MAX_ADDED_CHARS:
        raise _refuse(where, f"added tokens over {MAX_ADDED_CHARS:,} characters in all")


def padding_strategy(value: Any, where: str, walk: Walk) -> None:
    """ "BatchLongest" or {"Fixed": length}."""
    if value != "BatchLongest" and not (isinstance(value, dict) and set(value) == {"Fixed"}):
        raise _refuse(where, 'must be "BatchLongest" or {"Fixed": length}')
    if isinstance(value, dict):
        _integer(value["Fixed"], _at(where, "Fixed"), 0, MAX_ID)


def component(section: str) -> Check:
    """One component of `section`, its type on the allowlist and its fields checked; a Sequence's members too."""

    def check(value: Any, where: str, walk: Walk) -> None:
        kind = value.get("type") if isinstance(value, dict) else None
        allowed = SECTIONS[section]
        if not isinstance(kind, str) or kind not in allowed:
            raise _refuse(
                where, f"{_shown(kind, 30)} is not a {section} type legokit supports ({', '.join(sorted(allowed))})"
            )
        place = f"{where} ({kind})"
        spec = allowed[kind]
        walk.nesting += kind == "Sequence"
        if walk.nesting > MAX_NESTING:
            raise _refuse(place, f"Sequences nest over {MAX_NESTING} levels")
        _fields({k: v for k, v in value.items() if k != "type"}, spec.fields, spec.required, place, walk)
        walk.nesting -= kind == "Sequence"
        if section in GROWING:
            walk.growth *= spec.growth(value)
            if walk.growth > MAX_GROWTH:
                raise _refuse(place, f"normalizing and pre-tokenizing may make a text over {MAX_GROWTH:g} times longer")

    return check


def _fields(value: Any, schema: Mapping[str, Check], required: frozenset[str], where: str, walk: Walk) -> None:
    """A JSON object with only the fields in `schema` (each checked) and all those in `required`."""
    if not isinstance(value, dict):
        raise _refuse(where, f"must be a JSON object, not {_shown(value, 30)}")
    unknown = sorted(set(value) - set(schema))
    missing = sorted(required - set(value))
    if unknown or missing:
        problem = f"unknown field {_shown(unknown[0], 30)}" if unknown else f"missing field {missing[0]!r}"
        raise _refuse(where, problem)
    for name, item in value.items():
        schema[name](item, _at(where, name), walk)


# ---- how much longer a component can make a text, in UTF-8 bytes ----


def _utf8(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def _replace_growth(component_: Mapping[str, Any]) -> float:
    """Replace: the content's bytes over the fewest bytes the pattern matches."""
    found = component_.get("pattern", {})
    shortest = _utf8(found["String"]) if "String" in found else KNOWN_PATTERNS.get(found.get("Regex"), ("", 1))[1]
    return max(1.0, _utf8(component_.get("content", "")) / max(shortest, 1))


def _charsmap_growth(component_: Mapping[str, Any]) -> float:
    return charsmap_growth(component_.get("precompiled_charsmap"), "normalizer (Precompiled)")


def _fixed(factor: float) -> Callable[[Mapping[str, Any]], float]:
    return lambda component_: factor


def charsmap_growth(encoded: Any, where: str) -> float:
    """A sentencepiece charsmap (base64: u32 trie size, darts double-array trie, NUL-separated replacements) whose
    every reachable trie index, leaf value and replacement slice is in range, so that normalizing cannot index out
    of it (the library panics there); returns the most bytes a replacement has per byte it replaces."""
    data = _charsmap_bytes(encoded, where)
    size = int.from_bytes(data[:4], "little")
    if size % 4 or not 4 <= size <= len(data) - 4:
        raise _refuse(where, f"the charsmap's trie size {size} does not fit its {len(data)} bytes")
    units = np.frombuffer(data, dtype="<u4", count=size // 4, offset=4).astype(np.int64)
    replacements = data[4 + size :]
    try:
        replacements.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse(where, "the charsmap's replacements are not UTF-8") from exc
    return _walk_trie(units, replacements, where)


def _charsmap_bytes(encoded: Any, where: str) -> bytes:
    """The decoded charsmap, when `encoded` is canonical base64 (what the library's decoder accepts) within the cap."""
    if not isinstance(encoded, str) or len(encoded) > MAX_CHARSMAP_BYTES * 4 // 3 + 4:
        raise _refuse(where, f"the charsmap must be base64 text of at most {MAX_CHARSMAP_BYTES:,} bytes")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _refuse(where, "the charsmap is not base64") from exc
    if base64.b64encode(data).decode("ascii") != encoded or len(data) < 8:
        raise _refuse(where, "the charsmap is not canonical base64 of a charsmap")
    return data


@dataclass(frozen=True)
class _Trie:
    """A darts double-array trie's units, split into the fields the library reads (sentencepiece's layout)."""

    has_leaf: np.ndarray
    label: np.ndarray
    offset: np.ndarray
    value: np.ndarray

    @classmethod
    def of(cls, units: np.ndarray) -> _Trie:
        return cls(
            (units >> 8) & 1,
            units & ((1 << 31) | 0xFF),
            (units >> 10) << ((units & (1 << 9)) >> 6),
            units & ((1 << 31) - 1),
        )


def _walk_trie(units: np.ndarray, replacements: bytes, where: str) -> float:
    """Every node reachable from the root, level by level (each once, a few thousand at a time): from a node at p
    the library reads unit p ^ c for every byte c, so p | 255 must be in the trie. Returns the most replacement
    bytes per key byte."""
    trie, count = _Trie.of(units), len(units)
    padded = np.frombuffer(replacements + b"\0", dtype=np.uint8)
    seen = np.zeros(count, dtype=bool)
    frontier, depth, growth = np.array([trie.offset[0]], dtype=np.int64), 0, 1.0
    while frontier.size:
        if int((frontier | 0xFF).max()) >= count:
            raise _refuse(where, "the charsmap's trie points outside itself")
        seen[frontier] = True
        depth += 1
        children = []
        for chunk in np.array_split(frontier, -(-frontier.size // 4096)):
            found, ratio = _children(trie, chunk, padded, where)
            children.append(found)
            growth = max(growth, ratio / depth)
        reached = np.unique(np.concatenate(children))
        if reached.size and int((reached | 0xFF).max()) >= count:
            raise _refuse(where, "the charsmap's trie points outside itself")
        frontier = reached[~seen[reached]]
    return growth


def _children(trie: _Trie, nodes: np.ndarray, padded: np.ndarray, where: str) -> tuple[np.ndarray, float]:
    """The children of some trie nodes (the unit at p ^ c whose label is c leads to (p ^ c) ^ its offset), and the
    longest replacement (in bytes) their leaves start, each checked to start inside the replacements at a
    character boundary."""
    labels = np.arange(1, 256, dtype=np.int64)
    at = nodes[:, None] ^ labels[None, :]
    at = at[trie.label[at] == labels[None, :]]
    children = at ^ trie.offset[at]
    leaves = children[trie.has_leaf[at] == 1]
    if not leaves.size:
        return children, 0.0
    if int(leaves.max()) >= len(trie.value):
        raise _refuse(where, "a charsmap leaf points outside the trie")
    starts = trie.value[leaves]
    if int(starts.max()) >= len(padded) or ((padded[starts] & 0xC0) == 0x80).any():
        raise _refuse(where, "a charsmap replacement starts outside its text or inside a character")
    ends = np.flatnonzero(padded == 0)
    return children, float((ends[np.searchsorted(ends, starts)] - starts).max())


# ---- the allowlist ----

SPLIT = choice("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous")
BYTE_LEVEL = {"add_prefix_space": flag, "trim_offsets": flag, "use_regex": flag}
METASPACE = {
    "replacement": string(1, 1),
    "str_rep": string(1, 1),
    "add_prefix_space": flag,
    "prepend_scheme": choice("always", "never", "first"),
    "split": flag,
}
ADDED_TOKEN = {
    "id": integer(0, MAX_ID - 1),
    "content": string(MAX_TOKEN_CHARS, 1),
    "single_word": flag,
    "lstrip": flag,
    "rstrip": flag,
    "normalized": flag,
    "special": flag,
}
GROWING = ("normalizer", "pre_tokenizer")

SECTIONS: dict[str, dict[str, Component]] = {
    "normalizer": {
        "BertNormalizer": Component(
            {"clean_text": flag, "handle_chinese_chars": flag, "strip_accents": optional(flag), "lowercase": flag},
            growth=_fixed(4.0),
        ),
        "Strip": Component({"strip_left": flag, "strip_right": flag}),
        "StripAccents": Component({}),
        "NFC": Component({}, growth=_fixed(3.0)),
        "NFD": Component({}, growth=_fixed(3.0)),
        "NFKC": Component({}, growth=_fixed(11.0)),
        "NFKD": Component({}, growth=_fixed(11.0)),
        "Lowercase": Component({}, growth=_fixed(2.0)),
        "Nmt": Component({}),
        "ByteLevel": Component({}, growth=_fixed(2.0)),
        "Replace": Component(
            {"pattern": pattern, "content": string()}, frozenset({"pattern", "content"}), _replace_growth
        ),
        "Prepend": Component(
            {"prepend": string(MAX_SHORT, 1)}, frozenset({"prepend"}), lambda c: 1.0 + _utf8(c["prepend"])
        ),
        # the charsmap's structure is checked where its growth is measured (one pass over its trie)
        "Precompiled": Component(
            {"precompiled_charsmap": string(MAX_CHARSMAP_BYTES * 4 // 3 + 4, 1)},
            frozenset({"precompiled_charsmap"}),
            _charsmap_growth,
        ),
        "Sequence": Component(
            {"normalizers": listed(component("normalizer"), MAX_SEQUENCE)}, frozenset({"normalizers"})
        ),
    },
    "pre_tokenizer": {
        "BertPreTokenizer": Component({}),
        "ByteLevel": Component(BYTE_LEVEL, growth=_fixed(4.0)),
        "Whitespace": Component({}),
        "WhitespaceSplit": Component({}),
        "Metaspace": Component(METASPACE, growth=_fixed(4.0)),
        "CharDelimiterSplit": Component({"delimiter": string(1, 1)}, frozenset({"delimiter"})),
        "Punctuation": Component({"behavior": SPLIT}),
        "Digits": Component({"individual_digits": flag}),
        "UnicodeScripts": Component({}),
        "Split": Component({"pattern": pattern, "behavior": SPLIT, "invert": flag}, frozenset({"pattern", "behavior"})),
        "Sequence": Component(
            {"pretokenizers": listed(component("pre_tokenizer"), MAX_SEQUENCE)}, frozenset({"pretokenizers"})
        ),
    },
    "post_processor": {
        "BertProcessing": Component({"sep": special, "cls": special}, frozenset({"sep", "cls"})),
        "RobertaProcessing": Component(
            {"sep": special, "cls": special, "trim_offsets": flag, "add_prefix_space": flag}, frozenset({"sep", "cls"})
        ),
        "ByteLevel": Component(BYTE_LEVEL),
        "TemplateProcessing": Component(
            {"single": template, "pair": template, "special_tokens": special_tokens},
            frozenset({"single", "special_tokens"}),
        ),
        "Sequence": Component(
            {"processors": listed(component("post_processor"), MAX_SEQUENCE)}, frozenset({"processors"})
        ),
    },
    "decoder": {
        "ByteLevel": Component(BYTE_LEVEL),
        "WordPiece": Component({"prefix": string(), "cleanup": flag}),
        "Metaspace": Component(METASPACE),
        "BPEDecoder": Component({"suffix": string()}),
        "CTC": Component({"pad_token": string(), "word_delimiter_token": string(), "cleanup": flag}),
        "Replace": Component({"pattern": pattern, "content": string()}, frozenset({"pattern", "content"})),
        "Fuse": Component({}),
        "Strip": Component({"content": string(1, 1), "start": integer(0, MAX_SHORT), "stop": integer(0, MAX_SHORT)}),
        "ByteFallback": Component({}),
        "Sequence": Component({"decoders": listed(component("decoder"), MAX_SEQUENCE)}, frozenset({"decoders"})),
    },
    "model": {
        "WordPiece": Component(
            {
                "vocab": token_ids(MAX_TOKEN_CHARS),
                "unk_token": string(MAX_SHORT, 1),
                "continuing_subword_prefix": string(),
                "max_input_chars_per_word": integer(1, MAX_WORD_CHARS),
            },
            frozenset({"vocab", "unk_token"}),
            cost=lambda c: c.get("max_input_chars_per_word", MAX_WORD_CHARS),
        ),
        "WordLevel": Component(
            {"vocab": token_ids(MAX_TOKEN_CHARS), "unk_token": string(MAX_SHORT, 1)}, frozenset({"vocab", "unk_token"})
        ),
        "BPE": Component(
            {
                "vocab": token_ids(MAX_TOKEN_CHARS),
                "merges": merges,
                "unk_token": optional(string(MAX_SHORT, 1)),
                "dropout": optional(choice(0, 0.0)),
                "continuing_subword_prefix": optional(string()),
                "end_of_word_suffix": optional(string()),
                "fuse_unk": flag,
                "byte_fallback": flag,
                "ignore_merges": flag,
            },
            frozenset({"vocab", "merges"}),
        ),
        "Unigram": Component(
            {"vocab": pieces, "unk_id": integer(0, MAX_ID), "byte_fallback": flag},
            frozenset({"vocab", "unk_id"}),
            cost=lambda c: max((len(piece) for piece, _ in c["vocab"]), default=1),
        ),
    },
}

TRUNCATION = {
    "direction": choice("Left", "Right"),
    "max_length": integer(0, MAX_ID),
    "stride": integer(0, MAX_ID),
    "strategy": choice("LongestFirst", "OnlyFirst", "OnlySecond"),
}
PADDING = {
    "strategy": padding_strategy,
    "direction": choice("Left", "Right"),
    "pad_to_multiple_of": optional(integer(1, MAX_ID)),
    "pad_id": integer(0, MAX_ID),
    "pad_type_id": integer(0, MAX_ID),
    "pad_token": string(),
}
TOP: Mapping[str, Check] = {
    "version": string(16),
    "truncation": optional(lambda v, w, k: _fields(v, TRUNCATION, frozenset(), w, k)),
    "padding": optional(lambda v, w, k: _fields(v, PADDING, frozenset(), w, k)),
    "added_tokens": listed(added_token, MAX_ADDED_CHARS),
    **{
        section: optional(component(section))
        for section in ("normalizer", "pre_tokenizer", "post_processor", "decoder")
    },
    "model": component("model"),
}


# ---- what the model and the post-processor emit must exist ----


def vocabulary(model: Mapping[str, Any], added: list[Mapping[str, Any]]) -> dict[str, int]:
    """Token -> id over the model's vocabulary (a Unigram piece's id is its index) and the added tokens."""
    vocab = model["vocab"]
    tokens = {piece: index for index, (piece, _) in enumerate(vocab)} if isinstance(vocab, list) else dict(vocab)
    tokens.update((token["content"], token["id"]) for token in added)
    return tokens


def check_model(model: Mapping[str, Any]) -> None:
    """The model's unknown token is in its own vocabulary (where it looks it up), so that an unseen word cannot
    fail the encode; a BPE's merges are checked as the library builds them."""
    kind, vocab = model["type"], model["vocab"]
    if kind == "Unigram" and not model["unk_id"] < len(vocab):
        raise _refuse("model (Unigram)", f"unk_id {model['unk_id']} is past its {len(vocab)} pieces")
    unknown = model.get("unk_token") if kind != "Unigram" else None
    if unknown is not None and unknown not in vocab:
        raise _refuse(f"model ({kind})", f"its unknown token {_shown(unknown, 30)} is not in its vocabulary")
    if kind == "BPE":
        check_merges(model["merges"], vocab, model.get("continuing_subword_prefix") or "")


def check_merges(merges_: list, vocab: Mapping[str, int], prefix: str) -> None:
    """Every BPE merge is "left right" or [left, right], both parts and the token they make (the right part's
    continuing-subword prefix cut off) in the vocabulary: the library cuts that prefix by bytes and panics, or
    aborts the process, where it cannot."""
    for index, merge in enumerate(merges_):
        parts = merge.split(" ", 1) if isinstance(merge, str) else merge
        if (
            not isinstance(parts, list)
            or len(parts) != 2
            or not all(isinstance(p, str) for p in parts)
            or parts[0] not in vocab
            or parts[1] not in vocab
            or not parts[1].startswith(prefix)
            or parts[0] + parts[1][len(prefix) :] not in vocab
        ):
            raise _refuse(
                f"model (BPE).merges[{index}]",
                f"{_shown(merge, 40)} does not merge two tokens of the vocabulary into a third",
            )


def check_specials(walk: Walk, tokens: Mapping[str, int]) -> None:
    """Every token the post-processor adds is in the vocabulary with the id it gives."""
    for token, id_, where in walk.specials:
        if tokens.get(token) != id_:
            found = "is not in the vocabulary" if token not in tokens else f"has id {tokens[token]} there"
            raise _refuse(where, f"special token {_shown(token, 30)} (id {id_}) {found}")


def check_templates(processor: Any) -> None:
    """A TemplateProcessing names only special tokens it declares, and its single template holds $A once and no $B
    (otherwise the library panics or drops the text at encode); Sequences are searched."""
    if not isinstance(processor, dict):
        return
    for member in processor.get("processors", ()):
        check_templates(member)
    if processor.get("type") != "TemplateProcessing":
        return
    declared = processor["special_tokens"]
    for name in ("single", "pair"):
        for piece in processor.get(name) or ():
            if "SpecialToken" in piece and piece["SpecialToken"]["id"] not in declared:
                raise _refuse(
                    f"post_processor (TemplateProcessing).{name}",
                    f"special token {_shown(piece['SpecialToken']['id'], 30)} is not declared",
                )
    sequences = [piece["Sequence"]["id"] for piece in processor["single"] if "Sequence" in piece]
    if sequences != ["A"]:
        raise _refuse("post_processor (TemplateProcessing).single", "must hold the text ($A) exactly once")


def checked_tokenizer(document: str) -> CheckedTokenizer:
    """The parsed tokenizer.json when it passes the allowlist, its truncation and padding emptied (legokit sets its
    own), with its growth and cost bounds; otherwise a one-line ConfigError naming the part refused."""
    parsed = capped_json(document, lambda reason: ConfigError(f"the block's tokenizer {reason}"))
    walk = Walk()
    _fields(parsed, TOP, frozenset({"model"}), "", walk)
    model = parsed["model"]
    check_model(model)
    check_templates(parsed.get("post_processor"))
    check_specials(walk, vocabulary(model, parsed.get("added_tokens") or []))
    cost = SECTIONS["model"][model["type"]].cost(model)
    return CheckedTokenizer({**parsed, "truncation": None, "padding": None}, walk.growth, cost)
