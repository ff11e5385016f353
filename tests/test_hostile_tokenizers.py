"""Hostile tokenizers (issue 20, class 4), generated with hypothesis (200+ cases): a text block's tokenizer.json with
regexes that backtrack or panic in every place a pattern goes, unknown component types and fields, wrong types,
missing unknown and special tokens, deep and long Sequences, broken charsmaps, padding, size and growth bombs. Each
is refused with a one-line error or reads text within the time bound, through TextEncoder and through a saved
block whose stored tokenizer was replaced. Real tokenizers, built here with the tokenizers library, pass and give
the library's own ids; control tests show what the refused patterns do to the raw library."""

from __future__ import annotations

import base64
import copy
import json
import random
import struct
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import legokit
from legokit.artifacts.format import write_artifact
from legokit.artifacts.kinds.block import block_tensors
from legokit.artifacts.registry import BLOCK
from legokit.data.folder import MAX_TEXT_CHARS, DatasetFolder
from legokit.errors import ConfigError
from legokit.predict import predict_folder
from legokit.text.spec import TextEncoder, TextSpec
from legokit.text.tokenizer_check import KNOWN_PATTERNS, MAX_GROWTH, checked_tokenizer
from legokit.wrap import wrap_module

from .hostile import run_case

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import (  # noqa: E402 - only once the library is known to be there
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

CASES = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
GPT2 = next(p for p, (name, _) in KNOWN_PATTERNS.items() if name == "GPT-2")
LLAMA3 = next(p for p, (name, _) in KNOWN_PATTERNS.items() if name.startswith("Llama 3"))
SEQUENCE_OF = {
    "normalizer": "normalizers",
    "pre_tokenizer": "pretokenizers",
    "decoder": "decoders",
    "post_processor": "processors",
}
# what each text case reads: a backtracking bait, a long run of spaces, plain words, non-ASCII, a long WordPiece bait
TEXTS = ["a" * 40 + "!", " " * 600 + "x", "aaaa b ab [CLS]", "ﷺ ㍿ 中文 naïve café", ("a" * 99 + "b ") * 2000]
WORDS = ["the", "quick", "brown", "fox", "naïve", "café", "中文", "데이터", "don't", "12345", "3.14", "e-mail", "HTTP"]
CORPUS = [" ".join(random.Random(i).choice(WORDS) for _ in range(30)) for i in range(200)]


def charsmap(mapping: dict[str, str]) -> str:
    """A sentencepiece charsmap (base64) that maps single ASCII characters to replacements: a darts trie whose
    root's children sit at 256 + c, each a leaf whose value unit (at 512 + c) points into NUL-separated text."""
    units = [0] * 1024
    units[0] = 256 << 10
    blob = b""
    for key, out in mapping.items():
        c = ord(key)
        units[256 + c] = (768 << 10) | (1 << 8) | c
        units[512 + c] = (1 << 31) | len(blob)
        blob += out.encode() + b"\0"
    trie = struct.pack(f"<{len(units)}I", *units)
    return base64.b64encode(struct.pack("<I", len(trie)) + trie + blob).decode()


CHARSMAP = charsmap({"\t": " ", "`": "'", "~": "-", "|": "||"})


def _trained(model, trainer, **parts) -> Tokenizer:
    tokenizer = Tokenizer(model)
    for name, part in parts.items():
        setattr(tokenizer, name, part)
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def _template(tokenizer: Tokenizer, single: str, *names: str) -> None:
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(name, tokenizer.token_to_id(name)) for name in names]
    )


def bert_like() -> Tokenizer:
    """BERT/MiniLM: BertNormalizer, BertPreTokenizer, WordPiece, [CLS] $A [SEP], WordPiece decoder."""
    tokenizer = _trained(
        models.WordPiece(unk_token="[UNK]"),
        trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]),
        normalizer=normalizers.BertNormalizer(lowercase=True),
        pre_tokenizer=pre_tokenizers.BertPreTokenizer(),
        decoder=decoders.WordPiece(),
    )
    _template(tokenizer, "[CLS] $A [SEP]", "[CLS]", "[SEP]")
    return tokenizer


def byte_level(pattern: str | None = None, roberta: bool = False, normalizer=None) -> Tokenizer:
    """GPT-2 (ByteLevel), RoBERTa (its processor), or Llama 3/Qwen2/... (a known Split regex, then ByteLevel)."""
    pre = (
        pre_tokenizers.ByteLevel(add_prefix_space=False)
        if pattern is None
        else pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), "isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    )
    tokenizer = _trained(
        models.BPE(),
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<s>", "</s>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
        pre_tokenizer=pre,
        decoder=decoders.ByteLevel(),
        **({"normalizer": normalizer} if normalizer else {}),
    )
    if roberta:
        tokenizer.post_processor = processors.RobertaProcessing(
            ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>"))
        )
    elif pattern is not None:
        _template(tokenizer, "<s> $A", "<s>")
    return tokenizer


def llama2_like() -> Tokenizer:
    """Llama 2: Prepend + Replace normalizers, BPE with byte fallback, a decoder Sequence."""
    tokenizer = _trained(
        models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True),
        trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"]),
        normalizer=normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]),
        decoder=decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        ),
    )
    _template(tokenizer, "<s> $A", "<s>")
    return tokenizer


def t5_like(precompiled: bool = True) -> Tokenizer:
    """T5/XLM-R: a sentencepiece charsmap and T5's " {2,}" Replace, Metaspace, Unigram, $A </s>."""
    steps = ([normalizers.Precompiled(base64.b64decode(CHARSMAP))] if precompiled else []) + [
        normalizers.Replace(Regex(" {2,}"), " ")
    ]
    tokenizer = _trained(
        models.Unigram(),
        trainers.UnigramTrainer(vocab_size=200, unk_token="<unk>", special_tokens=["<pad>", "</s>", "<unk>"]),
        normalizer=normalizers.Sequence(steps),
        pre_tokenizer=pre_tokenizers.Metaspace(),
        decoder=decoders.Metaspace(),
    )
    _template(tokenizer, "$A </s>", "</s>")
    return tokenizer


def word_level() -> Tokenizer:
    """A word-level tokenizer through every other allowed component: NFKC, Lowercase, StripAccents, Strip,
    WhitespaceSplit, Punctuation, Digits, UnicodeScripts, BertProcessing."""
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.StripAccents(), normalizers.Strip()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.UnicodeScripts(),
        ]
    )
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", 2), ("[CLS]", 1))
    return tokenizer


@pytest.fixture(scope="module")
def real() -> dict[str, str]:
    """tokenizer.json texts of real tokenizers' shapes, trained here on a small corpus."""
    built = {
        "bert": bert_like(),
        "gpt2": byte_level(),
        "roberta": byte_level(roberta=True),
        "llama2": llama2_like(),
        "t5": t5_like(),
        "xlm-r": t5_like(precompiled=False),
        "word-level": word_level(),
    }
    for pattern, (name, _) in KNOWN_PATTERNS.items():
        if name not in ("T5 / XLM-R spaces",) and name not in built:
            built[name] = byte_level(pattern, normalizer=normalizers.NFC() if name == "Qwen2" else None)
    return {name: tokenizer.to_str() for name, tokenizer in built.items()}


class Embedder(nn.Module):
    """Token ids -> embeddings for a text block (ids of the tokenizers above stay below 512)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(512, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids) * attention_mask.unsqueeze(-1)


@pytest.fixture(scope="module")
def world(tmp_path_factory, real):
    """A text block (BERT-like tokenizer) saved once, a data folder of notes (one long), and a marker path."""
    root = tmp_path_factory.mktemp("hostile_tokenizers")
    torch.manual_seed(0)
    block = wrap_module(
        Embedder(), "notes", "binary", (None,), text=TextSpec(real["bert"], 32), latent=(4, 8), dim_head=8, device="cpu"
    )
    data = root / "data"
    (data / "notes").mkdir(parents=True)
    (data / "labels.csv").write_text(
        "id,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(len(TEXTS))), encoding="utf-8"
    )
    for index, text in enumerate(TEXTS):
        (data / "notes" / f"s{index}.txt").write_text(text, encoding="utf-8")
    return {
        "root": root,
        "block": block,
        "data": data,
        "marker": root / "ran-code",
        "path": legokit.save_block(block, root / "notes.st"),
    }


def _read(document: str) -> None:
    """What predict does with a text block's tokenizer: build it, then encode a batch of texts."""
    TextEncoder(TextSpec(document, 64)).encode(TEXTS)


def _answer(document: str, world) -> str | None:
    """The case through TextEncoder: the refusal's message, or None when it read the texts; no traceback, fast."""
    refusal = []

    def action() -> None:
        try:
            _read(document)
        except ConfigError as exc:
            refusal.append(str(exc))
            raise

    outcome = run_case("tokenizer", action, [], world["marker"])
    assert outcome.traceback is None, outcome.traceback
    assert outcome.seconds < 5, f"{outcome.seconds:.1f} s"
    return refusal[0] if refusal else None


def _doc(tokenizer_json: str) -> dict:
    return json.loads(tokenizer_json)


def _place(document: dict, section: str, member: dict, depth: int) -> dict:
    """`member` put into `section`, inside `depth` Sequences (beside what the section held)."""
    out = copy.deepcopy(document)
    for _ in range(depth):
        member = {"type": "Sequence", SEQUENCE_OF[section]: [m for m in (out.get(section), member) if m]}
    out[section] = member
    return out


# ---- regexes: every place a pattern goes, any depth; nothing but the known patterns and plain strings ----

EVIL_REGEXES = [
    "(a+)+$",
    "(a|aa)+b",
    "a*a*[^a]",
    r"\s*\s*\s*\S",
    "(.*a){12}",
    "((",
    r"(?<=a+)b",
    r"\p{Bogus}",
    "a{99999}{99999}",
    "",
    "x" * 5000,
    GPT2 + "|x",
    GPT2 + " ",
    GPT2.upper(),
    LLAMA3[:-1],
]
BAD_PATTERNS = st.one_of(
    st.sampled_from(EVIL_REGEXES).map(lambda r: {"Regex": r}),
    st.sampled_from(
        [
            {"String": ""},
            {"String": "x" * 65},
            {"Regex": 5},
            {"Regex": ["a"]},
            {"String": "a", "Regex": "a"},
            {},
            "a",
            None,
            {"Regexp": "a"},
            {"String": None},
        ]
    ),
)


def _with_pattern(document: dict, section: str, pattern, depth: int) -> dict:
    member = (
        {"type": "Split", "pattern": pattern, "behavior": "Isolated", "invert": False}
        if section == "pre_tokenizer"
        else {"type": "Replace", "pattern": pattern, "content": " "}
    )
    return _place(document, section, member, depth)


@CASES
@given(
    base=st.sampled_from(["bert", "gpt2", "t5", "Llama 3 / cl100k"]),
    section=st.sampled_from(["pre_tokenizer", "normalizer", "decoder"]),
    pattern=BAD_PATTERNS,
    depth=st.integers(0, 3),
)
def test_a_regex_that_is_not_a_known_pattern_is_refused_wherever_it_goes(world, real, base, section, pattern, depth):
    document = _with_pattern(_doc(real[base]), section, pattern, depth)
    refusal = _answer(json.dumps(document), world)
    assert refusal is not None and section in refusal, refusal


@settings(CASES, max_examples=20)
@given(
    base=st.sampled_from(["bert", "t5"]),
    section=st.sampled_from(["pre_tokenizer", "normalizer", "decoder"]),
    known=st.sampled_from(sorted(KNOWN_PATTERNS)),
    depth=st.integers(0, 2),
)
def test_known_patterns_and_plain_strings_pass_in_every_place(world, real, base, section, known, depth):
    for pattern in ({"Regex": known}, {"String": "xyz"}):
        assert _answer(json.dumps(_with_pattern(_doc(real[base]), section, pattern, depth)), world) is None


# ---- components: unknown types, unknown fields, wrong types ----

JUNK = st.sampled_from(
    [None, -1, 10**12, 1.5, "x", "", "a" * 10_000, [], {}, True, [1, 2], {"type": "Sequence"}, [None] * 50]
)
FOREIGN_TYPES = st.sampled_from(
    [
        "Evil",
        "FixedLength",
        "sequence",
        "",
        5,
        None,
        "Precompiled",
        "Split",
        "TemplateProcessing",
        "WordPiece",
        "Custom",
        ["Split"],
    ]
)
DEFAULTS = {
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "Whitespace"},
    "post_processor": {"type": "ByteLevel"},
    "decoder": {"type": "Fuse"},
}


@CASES
@given(
    base=st.sampled_from(["bert", "gpt2", "t5", "llama2", "word-level"]),
    section=st.sampled_from(["normalizer", "pre_tokenizer", "post_processor", "decoder", "model"]),
    how=st.sampled_from(["type", "field", "extra"]),
    kind=FOREIGN_TYPES,
    junk=JUNK,
    pick=st.integers(0, 20),
)
def test_unknown_types_fields_and_wrong_values_are_one_line_errors(world, real, base, section, how, kind, junk, pick):
    document = _doc(real[base])
    member = document.get(section) or copy.deepcopy(DEFAULTS[section])
    original = member.get("type")
    if how == "type":
        member["type"] = kind
    elif how == "extra":
        member["evil"] = junk
    else:
        fields = sorted(k for k in member if k != "type") or ["evil"]
        member[fields[pick % len(fields)]] = junk
    document[section] = member
    refusal = _answer(json.dumps(document), world)
    if how == "extra" or how == "type" and kind != original:
        assert refusal is not None


# ---- the model, the post-processor, nesting, sizes and the top level ----


def _model_edits(document: dict, which: int) -> dict:
    """One (field, value) edit of the model: unknown tokens gone or out of range, costs over their caps, ids and
    tokens out of range, a BPE prefix or merge the library aborts or panics on, an unknown type."""
    model = document["model"]
    pieces = model["type"] == "Unigram"
    vocab = model["vocab"]
    kept = vocab if pieces else {t: i for t, i in vocab.items() if t != model.get("unk_token", next(iter(vocab)))}
    edits = [
        ("vocab", kept),
        ("unk_id" if pieces else "unk_token", -1 if pieces else "<nope>"),
        ("unk_id", len(vocab) + 3),
        ("max_input_chars_per_word", 10**9),
        ("dropout", 0.5),
        ("vocab", [["a", float("inf")]] if pieces else {"a": -1}),
        ("vocab", [["a" * 65, -1.0]] if pieces else {"a" * 5000: 0}),
        ("vocab", [["", -1.0]] if pieces else {"": 0, "[UNK]": 1}),
        ("vocab", [["a", "x"]] if pieces else {"a": 2**40}),
        ("vocab", None),
        ("merges", [[1, 2], "abc", ["a"]]),
        ("continuing_subword_prefix", "A"),  # the library aborted the process on it (BPE)
        ("continuing_subword_prefix", "é"),
        ("merges", model.get("merges", []) + [["<s>", "é"]]),  # a merge into no token: the library panicked
        ("type", "Evil"),
    ]
    field, value = edits[which % len(edits)]
    model[field] = value
    return document


def _processor_edits(document: dict, which: int) -> dict:
    special = {"id": "[CLS]", "type_id": 0}
    edits = [
        {"type": "BertProcessing", "sep": ["[NOPE]", 1], "cls": ["[CLS]", 2]},
        {"type": "BertProcessing", "sep": ["[SEP]", 9999], "cls": ["[CLS]", 2]},
        {"type": "RobertaProcessing", "sep": ["</s>"], "cls": ["<s>", 0]},
        {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[X]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {},
        },
        {"type": "TemplateProcessing", "single": [{"SpecialToken": special}], "special_tokens": {}},
        {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}] * 2, "special_tokens": {}},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": special}] * 1000, "special_tokens": {}},
        {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 10**9}}], "special_tokens": {}},
        {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": special}, {"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [1, 2], "tokens": ["[CLS]"]}},
        },
        {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": special}, {"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [9999], "tokens": ["[CLS]"]}},
        },
        {
            "type": "Sequence",
            "processors": [{"type": "TemplateProcessing", "single": [{"SpecialToken": special}], "special_tokens": {}}],
        },
    ]
    document["post_processor"] = edits[which % len(edits)]
    return document


def _nested(section: str, levels: int) -> dict:
    member = copy.deepcopy(DEFAULTS[section])
    for _ in range(levels):
        member = {"type": "Sequence", SEQUENCE_OF[section]: [member]}
    return member


def _structure_edits(document: dict, which: int, size: int) -> dict | str:
    sections = ["normalizer", "pre_tokenizer", "post_processor", "decoder"]
    edits = [
        lambda: document.__setitem__(sections[size % 4], _nested(sections[size % 4], [4, 10, 60, 300][size % 4])),
        lambda: document.__setitem__(
            sections[size % 4],
            {
                "type": "Sequence",
                SEQUENCE_OF[sections[size % 4]]: [DEFAULTS[sections[size % 4]]] * [17, 100, 5000][size % 3],
            },
        ),
        lambda: document.__setitem__(
            "padding",
            {
                "strategy": {"Fixed": 10**12},
                "direction": "Right",
                "pad_to_multiple_of": None,
                "pad_id": 0,
                "pad_type_id": 0,
                "pad_token": "[PAD]",
            },
        ),
        lambda: document.__setitem__(
            "truncation", {"direction": "Right", "max_length": 4, "stride": 10**12, "strategy": "LongestFirst"}
        ),
        lambda: document.__setitem__("added_tokens", [{"id": 5, "content": "", "special": True}]),
        lambda: document.__setitem__(
            "added_tokens", [{"id": i, "content": f"{i:04d}" + "x" * 996} for i in range(1001)]
        ),
        lambda: document.__setitem__("added_tokens", [{"id": 1, "content": "x" * 1025}]),
        lambda: document.__setitem__("added_tokens", {"a": 1}),
        lambda: document.__setitem__("evil", 1),
        lambda: document.__setitem__("version", "x" * 100),
        lambda: document.__setitem__("normalizer", {"type": "Sequence", "normalizers": [{"type": "ByteLevel"}] * 11}),
        lambda: document.__setitem__("normalizer", {"type": "Prepend", "prepend": ""}),  # panicked at encode
        lambda: document.__setitem__(
            "normalizer",
            {
                "type": "Sequence",
                "normalizers": [{"type": "Replace", "pattern": {"String": "a"}, "content": "a" * 64}] * 2,
            },
        ),
        lambda: document.__setitem__(
            "normalizer", {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁" * 20}] * 3}
        ),
    ]
    documents = ["[]", "null", "{" * 300, "[" * 10_000 + "]" * 10_000, "{}", '{"model": {}}', '{"model": 1}']
    if which < len(documents):
        return documents[which]
    edits[(which - len(documents)) % len(edits)]()
    return document


@CASES
@given(
    base=st.sampled_from(["bert", "gpt2", "t5", "llama2", "word-level", "Qwen2"]),
    family=st.sampled_from(["model", "processor", "structure"]),
    which=st.integers(0, 40),
    size=st.integers(0, 11),
)
def test_models_processors_nesting_and_sizes_are_refused_or_bounded(world, real, base, family, which, size):
    document = _doc(real[base])
    if family == "model":
        edited = _model_edits(document, which)
    elif family == "processor":
        edited = _processor_edits(document, which)
    else:
        edited = _structure_edits(document, which, size)
    refusal = _answer(edited if isinstance(edited, str) else json.dumps(edited), world)
    assert family != "processor" or refusal is not None


# ---- sentencepiece charsmaps: any byte changed, cut or re-encoded ----


@settings(CASES, max_examples=40)
@given(
    edit=st.sampled_from(["byte", "cut", "size", "base64", "noncanonical", "utf8"]),
    at=st.integers(0, 4200),
    byte=st.integers(0, 255),
)
def test_a_damaged_charsmap_is_refused_or_never_reaches_past_its_trie(world, real, edit, at, byte):
    data = bytearray(base64.b64decode(CHARSMAP))
    if edit == "byte":
        data[at % len(data)] = byte
    elif edit == "cut":
        data = data[: at % len(data)]
    elif edit == "size":
        data[:4] = struct.pack("<I", at * byte)
    elif edit == "utf8":
        data += bytes([0xC3, byte])
    encoded = base64.b64encode(bytes(data)).decode()
    if edit == "base64":
        encoded = encoded[: at % len(encoded)] + "*" + encoded[at % len(encoded) :]
    elif edit == "noncanonical":
        encoded = encoded.rstrip("=")[:-1] + "B=" if encoded.endswith("=") else encoded + "="
    document = _doc(real["t5"])
    document["normalizer"]["normalizers"][0]["precompiled_charsmap"] = encoded
    if _answer(json.dumps(document), world) is None:  # accepted: every byte value, alone and after each other
        every = "".join(map(chr, [*range(1, 0x800), *range(0x800, 0xD800, 0x3F), *range(0xE000, 0x110000, 0xFFF)]))
        TextEncoder(TextSpec(json.dumps(document), 64)).encode([every, "a`~|\t"])


# ---- a saved block whose stored tokenizer was replaced: load, then predict ----

HOSTILE_STORED = st.one_of(
    st.sampled_from(EVIL_REGEXES).map(
        lambda r: ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated"})
    ),
    st.sampled_from(EVIL_REGEXES).map(
        lambda r: ("normalizer", {"type": "Replace", "pattern": {"Regex": r}, "content": ""})
    ),
    st.tuples(st.sampled_from(["normalizer", "pre_tokenizer", "decoder"]), FOREIGN_TYPES.map(lambda t: {"type": t})),
    st.just(("model", {"type": "WordPiece", "vocab": {"a": 0}, "unk_token": "[UNK]"})),
    st.just(("post_processor", {"type": "BertProcessing", "sep": ["[SEP]", 300], "cls": ["[CLS]", 301]})),
    st.just(("pre_tokenizer", _nested("pre_tokenizer", 250))),
    st.just(("padding", {"strategy": {"Fixed": 10**12}})),
)


@settings(CASES, max_examples=30)
@given(change=HOSTILE_STORED, whole=st.sampled_from([None, "", "{}", "[]", "{" * 500, 5]))
def test_a_block_whose_stored_tokenizer_was_replaced_fails_cleanly_at_load_or_predict(world, real, change, whole):
    block = world["block"]
    config = block.config.to_dict()
    document = _doc(real["bert"])
    document[change[0]] = change[1]
    config["text"]["tokenizer"] = json.dumps(document) if whole is None else whole
    path = world["root"] / "replaced.st"
    write_artifact(path, BLOCK, config, block_tensors(block))
    outcome = run_case(
        "tokenizer",
        lambda: predict_folder(legokit.load(path), world["data"], device="cpu"),
        [path, world["data"]],
        world["marker"],
    )
    assert outcome.traceback is None, outcome.traceback
    assert not outcome.modified and outcome.seconds < 5


def test_a_text_block_reads_its_notes_through_the_checked_tokenizer(world):
    predictions = predict_folder(legokit.load(world["path"]), world["data"], device="cpu")
    assert len(predictions.ids) == len(TEXTS)


# ---- real tokenizers pass and give the library's ids; the work per text is bounded ----


def _library_ids(document: str, max_tokens: int, texts: list[str]) -> list[list[int]]:
    """What legokit computed before the check: the library's own encoding, truncated, no padding."""
    tokenizer = Tokenizer.from_str(document)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    return [encoding.ids for encoding in tokenizer.encode_batch(texts)]


def test_real_tokenizers_pass_and_encode_the_same_ids_as_the_library(real):
    rng = random.Random(1)
    texts = (
        CORPUS[:10]
        + [" ", "a", "  many   spaces  ", "ﷺ ㍿ ＡＢＣ 中文", "\t\n x \r\n", "a`~|\tb"]
        + [" ".join(rng.choice(WORDS) for _ in range(n)) for n in (300, 3000)]
    )
    for name, document in real.items():
        for max_tokens in (16, 512):
            ours = TextEncoder(TextSpec(document, max_tokens)).token_ids(texts)
            assert ours == _library_ids(document, max_tokens, texts), name


def test_a_real_tokenizer_json_on_this_machine_passes_and_encodes_the_same(tmp_path):
    """Any tokenizer.json shipped in installed packages (none may be): accepted, same ids."""
    import site

    found = [p for root in site.getsitepackages() for p in Path(root).rglob("tokenizer.json")][:5]
    for path in found:
        document = path.read_text(encoding="utf-8")
        try:
            Tokenizer.from_str(document)
        except Exception:  # noqa: BLE001 - not a Hugging Face tokenizer.json (another library's file)
            continue
        assert TextEncoder(TextSpec(document, 64)).token_ids(CORPUS[:5]) == _library_ids(document, 64, CORPUS[:5])


def test_known_patterns_run_in_linear_time_on_long_adversarial_texts():
    n = 200_000
    texts = [" " * n, "a" * n, " '" * (n // 2), "\u0301" * n, "1" * n, (" " * 999 + "\n") * (n // 1000)]
    for pattern in KNOWN_PATTERNS:
        tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), "isolated")
        started = time.perf_counter()
        tokenizer.encode_batch(texts)
        assert time.perf_counter() - started < 3, KNOWN_PATTERNS[pattern]


def _allowed_worst_cases() -> dict[str, tuple[Tokenizer, str]]:
    """Allowed tokenizers at their most costly, each with the text that costs it most (at the text cap)."""
    wordpiece = Tokenizer(
        models.WordPiece({"[UNK]": 0, "a": 1, "##a": 2}, unk_token="[UNK]", max_input_chars_per_word=100)
    )
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    unigram = Tokenizer(models.Unigram([("<unk>", 0.0)] + [("a" * i, -float(i)) for i in range(1, 65)], unk_id=0))
    bomb = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    bomb.normalizer = normalizers.Replace("a", " " * 64)
    bomb.pre_tokenizer = pre_tokenizers.Whitespace()
    doubling = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    doubling.normalizer = normalizers.Sequence([normalizers.ByteLevel()] * 7)
    doubling.pre_tokenizer = pre_tokenizers.Whitespace()
    cap = MAX_TEXT_CHARS
    return {
        "WordPiece words that end unknown": (wordpiece, ("a" * 99 + "b ") * (cap // 101)),
        "Unigram with 64-character pieces": (unigram, "a" * cap),
        "Replace growing 64 times, then dropped": (bomb, "a" * cap),
        "seven ByteLevel normalizers": (doubling, " " * cap),
    }


def test_the_work_per_text_is_bounded_at_the_text_cap_for_allowed_tokenizers():
    for name, (tokenizer, text) in _allowed_worst_cases().items():
        encoder = TextEncoder(TextSpec(tokenizer.to_str(), 512))
        started = time.perf_counter()
        encoder.encode([text])
        assert time.perf_counter() - started < 5, name


def test_a_long_text_reads_the_same_tokens_as_the_library_when_its_tokens_settle(real):
    text = " ".join(random.Random(2).choice(WORDS) for _ in range(150_000))
    for name in ("bert", "gpt2", "t5"):
        assert TextEncoder(TextSpec(real[name], 512)).token_ids([text]) == _library_ids(real[name], 512, [text]), name


# ---- controls: what the refused inputs do to the raw library ----


def _raw_split(pattern: str) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), "isolated")
    return tokenizer


def test_control_a_refused_pattern_backtracks_for_ever_in_the_raw_library():
    tokenizer = _raw_split("a*a*[^a]")
    timings = []
    for n in (300, 600):
        started = time.perf_counter()
        tokenizer.encode("a" * n)
        timings.append(time.perf_counter() - started)
    assert timings[1] > 3 * timings[0], timings  # cubic: at the 1M-character cap, years
    with pytest.raises(ConfigError, match="pre_tokenizer.*Split.*not one legokit knows"):
        checked_tokenizer(tokenizer.to_str())


def test_control_another_panics_the_raw_library_past_except_exception():
    tokenizer = _raw_split(r"\s*\s*\s*\S")
    with pytest.raises(BaseException) as raised:
        tokenizer.encode(" " * 500)
    assert not isinstance(raised.value, Exception) and type(raised.value).__name__ == "PanicException"
    with pytest.raises(ConfigError, match="pre_tokenizer"):
        checked_tokenizer(tokenizer.to_str())


def test_control_a_missing_unknown_token_raises_at_encode_in_the_raw_library():
    tokenizer = Tokenizer(models.WordLevel({"a": 0}, unk_token="[UNK]"))
    with pytest.raises(Exception, match="Missing \\[UNK\\]"):
        tokenizer.encode("b")
    with pytest.raises(ConfigError, match="unknown token '\\[UNK\\]' is not in its vocabulary"):
        TextEncoder(TextSpec(tokenizer.to_str(), 8))


def test_control_a_broken_charsmap_panics_the_raw_library():
    document = {
        "normalizer": {
            "type": "Precompiled",
            "precompiled_charsmap": base64.b64encode(b"\x08\0\0\0" + b"\xff" * 8 + b"abc").decode(),
        },
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"},
    }
    with pytest.raises(BaseException) as raised:
        Tokenizer.from_str(json.dumps(document)).encode("a")
    assert type(raised.value).__name__ == "PanicException"
    with pytest.raises(ConfigError, match="charsmap"):
        TextEncoder(TextSpec(json.dumps(document), 8))


def test_a_panic_inside_the_library_becomes_a_one_line_error():
    from legokit.text.spec import guarded

    with pytest.raises(ConfigError, match="panicked") as raised:
        guarded("reading", _raw_split(r"\s*\s*\s*\S").encode, " " * 500)
    assert "\n" not in str(raised.value)


def test_a_growth_bound_over_the_cap_is_refused_and_a_dataset_folder_says_so(tmp_path):
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.ByteLevel()] * 11)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"over {MAX_GROWTH:g} times longer"):
        DatasetFolder(tmp_path, {"notes": TextSpec(tokenizer.to_str(), 8)})
