"""Encoders defined by Hugging Face transformers, rebuilt from a local model folder: config.json and safetensors
weights, plus tokenizer.json for text.

Nothing is built from a size that was not checked against the files first: config.json's sizes are capped, every
file the folder names (the shards of model.safetensors.index.json included) must be a plain file inside the folder,
and the model is built on the meta device (no memory) and compared with the weight files' safetensors headers
before transformers builds it for real, so that what gets built is bounded by what the files hold.

transformers is an optional extra (`pip install 'legokit[hf]'`), never a runtime dependency: it is needed to wrap
such an encoder, not to load the block it becomes.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from legokit.artifacts.allowlist import load_json
from legokit.artifacts.format import read_header
from legokit.encoders.cost import check_cost
from legokit.errors import ArtifactError, ConfigError, EncoderError, brief
from legokit.io.inputs import open_input, read_input
from legokit.text.spec import MAX_TOKENIZER_BYTES, TextEncoder, TextSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from transformers.core_model_loading import WeightRenaming

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_INDEX_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a safetensors header (names, shapes, offsets): ~100 bytes a tensor
MAX_SHARDS = 4096
MAX_TENSORS = 200_000
MAX_WEIGHT_BYTES = 16 * 1024**3  # stored tensors, all shards together
MAX_PARAMETERS = 4 * 10**9  # what the config builds
MAX_UNSTORED_BYTES = 256 << 20  # buffers the model makes itself (GPT-Neo: a max_positions^2 mask per layer)

# caps on config.json's sizes (at any depth: text_config, vision_config), checked before transformers sees them
WIDTH, FEED_FORWARD, COUNT = 16384, 65536, 256
POSITIONS = 8194  # 8192 tokens, plus the two a RoBERTa-style position table keeps before them
SIZE_CAPS: Mapping[str, int] = {
    **dict.fromkeys(("hidden_size", "d_model", "n_embd", "embed_dim", "dim", "projection_dim", "d_kv"), WIDTH),
    **dict.fromkeys(
        (
            "intermediate_size",
            "ffn_dim",
            "d_ff",
            "n_inner",
            "hidden_dim",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
            "moe_intermediate_size",
        ),
        FEED_FORWARD,
    ),
    **dict.fromkeys(
        (
            "num_attention_heads",
            "n_head",
            "n_heads",
            "num_heads",
            "num_key_value_heads",
            "encoder_attention_heads",
            "decoder_attention_heads",
        ),
        COUNT,
    ),
    **dict.fromkeys(("max_position_embeddings", "n_positions"), POSITIONS),
    "vocab_size": 2**20,
    "type_vocab_size": 2**16,
    "num_labels": 2**16,
    "image_size": 1024,
    "num_channels": 16,
}
# keys that count modules (layers, experts, blocks, groups): their values, and lists of them, stay small
COUNT_KEY = re.compile(r"layers|depths?$|experts|blocks|groups|stages")
MAX_ANY_INT = 2**24  # any other integer in config.json


@dataclass(frozen=True)
class FolderEncoder:
    """A module rebuilt from a Hugging Face model folder, with what wrapping it needs to know."""

    module: nn.Module
    input_shape: tuple[int | None, ...]
    input_dtype: str
    text: TextSpec | None
    description: str


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def folder_file(folder: Path, name: Any, what: str) -> Path:
    """A file the folder names: a plain file name (no separator, not `..`), a regular file, and no link leading out
    of the folder (except, in a Hugging Face cache snapshot, into its `blobs`); anything else is refused unread."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise EncoderError(f"{folder}: {what} {str(name)[:80]!r} is not a plain file name inside the folder")
    path = folder / name
    if not path.is_file():
        raise EncoderError(f"{folder}: {what} {name[:80]!r} is not a regular file in the folder")
    if path.is_symlink() and not _link_allowed(folder, path.resolve()):
        raise EncoderError(f"{folder}: {what} {name[:80]!r} is a link to a file outside the folder")
    return path


def _link_allowed(folder: Path, target: Path) -> bool:
    """Whether a link's target stays in the folder, or is a blob of the Hugging Face cache whose snapshot it is."""
    home = folder.resolve()
    blobs = home.parent.parent / "blobs"
    return target.is_relative_to(home) or (home.parent.name == "snapshots" and target.parent == blobs)


def _json_file(folder: Path, name: str, what: str, limit: int) -> Any:
    """A JSON file of the folder, read only if it is a plain file there and within `limit` bytes."""
    path = folder_file(folder, name, what)
    return load_json(read_input(path, EncoderError, limit), f"{folder}/{name}")


def _numbers(data: Any, key: str = "") -> Iterator[tuple[str, list[int | float]]]:
    """(key, values) of every number or list of numbers in config.json, at any depth."""
    if isinstance(data, dict):
        for inner, value in data.items():
            yield from _numbers(value, str(inner))
    elif isinstance(data, list) and data and all(_is_number(v) for v in data):
        yield key, data
    elif isinstance(data, list):
        for value in data:
            yield from _numbers(value, key)
    elif _is_number(data):
        yield key, [data]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))  # booleans too: a size that is true or false is refused


def _cap_for(key: str) -> int | None:
    """The cap on a key's values: a size's, a count's, or MAX_ANY_INT; None where floats are meant too."""
    if key in SIZE_CAPS:
        return SIZE_CAPS[key]
    return COUNT if COUNT_KEY.search(key) else None


def check_config_sizes(folder: Path, data: Mapping[str, Any]) -> None:
    """Every size, count (layers, experts: a list of them is summed, as Swin's depths) and other integer in
    config.json within its cap, and an image model's patch grid within the position cap: checked before
    transformers builds anything from them."""
    for key, values in _numbers(data):
        cap = _cap_for(key)
        if cap is not None and not all(type(v) is int for v in values):
            raise EncoderError(f"{folder}/{CONFIG}: {key[:60]} must be an integer, got {str(values[0])[:20]}")
        whole = [abs(v) for v in values if type(v) is int]
        figure = sum(whole) if COUNT_KEY.search(key) and key not in SIZE_CAPS else max(whole, default=0)
        if figure > (cap or MAX_ANY_INT):
            raise EncoderError(
                f"{folder}/{CONFIG}: {key[:60]} is {figure:,}; legokit caps it at {cap or MAX_ANY_INT:,}"
            )
    image, patch = data.get("image_size"), data.get("patch_size")
    if (
        isinstance(image, int)
        and isinstance(patch, int)
        and not isinstance(patch, bool)
        and (patch < 1 or (image // patch) ** 2 > POSITIONS)
    ):
        raise EncoderError(
            f"{folder}/{CONFIG}: image_size {image} in patches of {patch} makes over {POSITIONS:,} "
            "tokens; legokit caps it there"
        )


def _config(folder: Path) -> dict:
    data = _json_file(folder, CONFIG, "config", MAX_CONFIG_BYTES)
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise EncoderError(f"{folder}/{CONFIG}: no model_type; not a Hugging Face model config")
    if data.get("auto_map"):
        raise EncoderError(f"{folder}: the model needs custom code from its folder (auto_map); legokit runs none")
    check_config_sizes(folder, data)
    return data


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files transformers reads: model.safetensors, else the shards model.safetensors.index.json
    names (each a plain file name inside the folder, checked before transformers reads the index)."""
    if os.path.lexists(folder / WEIGHTS):
        return [folder_file(folder, WEIGHTS, "weights file")]
    if not os.path.lexists(folder / INDEX):
        pickled = [p.name for p in folder.glob("*.bin")]
        found = f" (only {', '.join(pickled[:3])}, a pickle format legokit does not read)" if pickled else ""
        raise EncoderError(f"{folder}: no safetensors weights{found}; save the model with save_pretrained()")
    index = _json_file(folder, INDEX, "index", MAX_INDEX_BYTES)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or len(weight_map) > MAX_TENSORS:
        raise EncoderError(f"{folder}/{INDEX}: no weight_map of 1 to {MAX_TENSORS:,} tensors")
    if not all(isinstance(name, str) for name in weight_map.values()):
        raise EncoderError(f"{folder}/{INDEX}: a shard name that is not a string")
    shards = set(weight_map.values())
    if len(shards) > MAX_SHARDS:
        raise EncoderError(f"{folder}/{INDEX}: {len(shards):,} shards; legokit reads up to {MAX_SHARDS:,}")
    return [folder_file(folder, name, "shard") for name in sorted(shards)]


def _header_length(path: Path) -> int:
    """The length of a safetensors file's JSON header, from its first 8 bytes."""
    with open_input(path, EncoderError) as handle:
        head = handle.read(8)
    if len(head) < 8:
        raise EncoderError(f"{path}: not a safetensors file (only {len(head)} bytes)")
    return struct.unpack("<Q", head)[0]


def stored_shapes(folder: Path, files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Every stored tensor's shape, read from the safetensors headers alone (capped in size, offsets inside the
    file), with the bytes they hold capped in all."""
    shapes: dict[str, tuple[int, ...]] = {}
    held = 0
    for path in files:
        if _header_length(path) > MAX_HEADER_BYTES:
            raise EncoderError(f"{path}: a safetensors header over {MAX_HEADER_BYTES:,} bytes")
        try:
            layout = read_header(path).layout
        except ArtifactError as exc:
            raise EncoderError(str(exc)) from exc
        for name, stored in layout.items():
            if name in shapes:
                raise EncoderError(f"{folder}: tensor {name[:80]!r} is stored twice")
            shapes[name] = stored.shape
            held += stored.end - stored.start
        if len(shapes) > MAX_TENSORS or held > MAX_WEIGHT_BYTES:
            raise EncoderError(
                f"{folder}: weights of {len(shapes):,} tensors, {held:,} bytes; legokit caps them at "
                f"{MAX_TENSORS:,} tensors, {MAX_WEIGHT_BYTES:,} bytes"
            )
    return shapes


def _renamer(model: nn.Module, expected: Mapping[str, Any]) -> Callable[[str], tuple[str, bool]]:
    """How transformers renames a checkpoint's keys to the model's (its base-model prefix, legacy and per-model
    renamings): key -> (name, whether a converter merges or splits it, so that its shape is another's)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key

        transforms = get_model_conversion_mapping(cast("PreTrainedModel", model))  # built by `_meta_model`
        renamings = cast("list[WeightRenaming]", [t for t in transforms if not isinstance(t, WeightConverter)])
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
    except Exception:  # noqa: BLE001 - an older transformers: its base-model prefix only

        def plain(key: str) -> tuple[str, bool]:
            stripped = key[len(prefix) + 1 :] if prefix and key.startswith(prefix + ".") else key
            return stripped, False

        return plain

    def renamed(key: str) -> tuple[str, bool]:
        try:
            name, converter = rename_source_key(key, renamings, converters, prefix or None, dict(expected))
        except Exception:  # noqa: BLE001 - a renaming that fails on a hostile key leaves the key as it is
            return key, False
        return name, converter is not None

    return renamed


def _optional(model: nn.Module) -> Callable[[str], bool]:
    """Tensors a checkpoint may leave out: the pooler (legokit never reads it), tied weights, and the keys the model
    says to ignore when missing."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    patterns = [p for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or []) if isinstance(p, str)]
    return lambda name: name.startswith("pooler.") or name in tied or any(re.search(p, name) for p in patterns)


def check_weights_fit(folder: Path, model: nn.Module, stored: Mapping[str, tuple[int, ...]]) -> None:
    """The meta-device model's tensors must be the stored ones: a tensor stored under the model's name has its shape,
    and every tensor the model needs is stored (a pooler or tied weight may be left out, no larger than what the files
    hold); so what transformers then builds is bounded by what the files hold."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    total = sum(math.prod(shape) for shape in expected.values())
    if total > MAX_PARAMETERS:
        raise EncoderError(
            f"{folder}/{CONFIG}: the model has {total:,} parameters; legokit caps it at {MAX_PARAMETERS:,}"
        )
    # buffers a model makes for itself (causal masks, position tables) are in no file: their size has its own cap
    unstored = sum(b.numel() * b.element_size() for name, b in model.named_buffers() if name not in expected)
    if unstored > MAX_UNSTORED_BYTES:
        raise EncoderError(
            f"{folder}/{CONFIG}: the model builds {unstored:,} bytes of buffers that no file holds (cap "
            f"{MAX_UNSTORED_BYTES:,}); lower max_position_embeddings or the layer count"
        )
    rename, found, converted = _renamer(model, expected), set(), 0
    for key, shape in stored.items():
        name, merged = rename(key)
        if merged:
            converted += math.prod(shape)
        elif name in expected:
            if expected[name] != tuple(shape):
                raise EncoderError(
                    f"{folder}: tensor {key[:80]!r} has shape {tuple(shape)}; {CONFIG} makes it {expected[name]}"
                )
            found.add(name)
    optional = _optional(model)
    missing = [name for name in expected if name not in found]
    needed = sum(math.prod(expected[n]) for n in missing if not optional(n))
    fresh = sum(math.prod(expected[n]) for n in missing if optional(n))
    held = sum(math.prod(expected[n]) for n in found) + converted
    if needed > converted or fresh > held:
        first = next((n for n in missing if not optional(n)), missing[0] if missing else "")
        raise EncoderError(
            f"{folder}: the weights do not fit the model in {CONFIG}: {len(missing)} tensor(s) missing "
            f"({first[:80]}, ...), {needed + fresh:,} parameters the weights do not hold; legokit "
            "would wrap random weights, and builds nothing the files do not hold"
        )


def _meta_model(transformers: Any, folder: Path, data: Mapping[str, Any]) -> tuple[Any, nn.Module]:
    """The checked config as transformers reads it, and the model built from it on the meta device (no memory)."""
    if data["model_type"] not in transformers.CONFIG_MAPPING:
        raise EncoderError(f"{folder}/{CONFIG}: model_type {data['model_type'][:40]!r} is not one transformers knows")
    try:
        config = transformers.CONFIG_MAPPING[data["model_type"]].from_dict(dict(data))
        with torch.device("meta"):
            model = transformers.AutoModel.from_config(config, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a config it cannot read
        raise EncoderError(f"{folder}/{CONFIG}: transformers cannot build this model ({brief(exc, 200)})") from exc
    return config, model


def _tokenizer(folder: Path) -> str:
    """The folder's tokenizer.json, checked (`tokenizer_check`) before the model is built, so that a hostile one is
    refused at wrap time, not at the first prediction."""
    if not os.path.lexists(folder / "tokenizer.json"):
        raise EncoderError(
            f"{folder}: a text model needs its tokenizer.json beside config.json "
            "(save the tokenizer with save_pretrained())"
        )
    path = folder_file(folder, "tokenizer.json", "tokenizer")
    try:
        text = read_input(path, EncoderError, MAX_TOKENIZER_BYTES).decode("utf-8")
        TextEncoder(TextSpec(text))
    except UnicodeDecodeError as exc:
        raise EncoderError(f"{path}: not UTF-8 text") from exc
    except ConfigError as exc:
        raise EncoderError(f"{path}: {exc}") from exc
    return text


class _TextProbe(nn.Module):
    """A text model called as (token ids, attention mask), the way the cost check calls modules."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return self.module(ids, attention_mask=attention_mask)


def _longest_input(module: nn.Module, data: dict, folder: Path) -> int:
    """The most tokens the model runs on: its position table, less the offset that RoBERTa-style models add
    (positions start after the padding index), found by running it at each candidate length."""
    table, pad = data.get("max_position_embeddings") or 512, data.get("pad_token_id")
    candidates = [table] + ([table - pad - 1] if isinstance(pad, int) and not isinstance(pad, bool) else [])
    probe = _TextProbe(module)
    for length in candidates:
        if length < 1:
            continue
        ids = torch.ones(1, length, dtype=torch.int64)
        check_cost(probe, (ids, ids), f"{folder}: the model at {length} tokens")  # before it runs for real
        try:
            with torch.no_grad():
                probe(ids, ids)
            return length
        except Exception:  # noqa: BLE001 - a model fails with many types past its position table
            continue
    raise EncoderError(
        f"{folder}: the model runs at none of {', '.join(map(str, candidates))} tokens; "
        "check max_position_embeddings in config.json"
    )


def _pixels(folder: Path, data: Mapping[str, Any]) -> tuple[int, int, int]:
    """An image model's input shape (channels, height, width) from config.json (sizes already capped)."""
    size, channels = data.get("image_size", 224), data.get("num_channels", 3)
    sides = [size, size] if isinstance(size, int) else size
    values = [channels, *sides] if isinstance(sides, list) else []
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise EncoderError(
            f"{folder}/{CONFIG}: image_size and num_channels must be positive integers (image_size "
            "one side or [height, width])"
        )
    return values[0], values[1], values[2]


def _build(transformers: Any, folder: Path, config: Any) -> nn.Module:
    """The model with its weights, built by transformers from the checked config; missing or misshapen weights are
    refused (a fresh pooler is allowed: legokit never reads it)."""
    try:
        module, info = transformers.AutoModel.from_pretrained(
            str(folder),
            config=config,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
            output_loading_info=True,
        )
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a folder it cannot read
        raise EncoderError(f"{folder}: transformers cannot build the model ({brief(exc, 200)})") from exc
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    mismatched = [str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", ())]
    if missing or mismatched:
        names = ", ".join((missing + mismatched)[:3])
        raise EncoderError(
            f"{folder}: the weights do not fit the model in config.json: {len(missing)} tensor(s) "
            f"missing, {len(mismatched)} of another shape ({names}, ...); legokit would wrap random weights"
        )
    return module.eval()


def load_hf_folder(folder: Path) -> FolderEncoder:
    """The base model of a local Hugging Face folder, weights from safetensors only (a pickled pytorch_model.bin is
    refused), no remote code; token-id input with the folder's tokenizer.json, or pixel input of the config's size.
    The config's sizes are checked against the weight files' headers before transformers builds anything."""
    try:
        import transformers
    except ImportError as exc:
        raise EncoderError(
            f"{folder}: wrapping a Hugging Face model folder needs transformers: pip install 'legokit[hf]'"
        ) from exc
    data = _config(folder)
    stored = stored_shapes(folder, weight_files(folder))
    config, meta = _meta_model(transformers, folder, data)
    check_weights_fit(folder, meta, stored)
    tokenizer = _tokenizer(folder) if getattr(meta, "main_input_name", "input_ids") == "input_ids" else None
    module = _build(transformers, folder, config)
    main_input = getattr(module, "main_input_name", "input_ids")
    name = f"{type(module).__name__} ({data['model_type']})"
    if main_input == "input_ids" and tokenizer is not None:
        text = TextSpec(tokenizer, max_tokens=_longest_input(module, data, folder))
        return FolderEncoder(module, (None,), "int64", text, f"{name}, text through its tokenizer.json")
    if main_input == "pixel_values":
        shape = _pixels(folder, data)
        return FolderEncoder(module, shape, "float32", None, f"{name}, images {'x'.join(map(str, shape))}")
    raise EncoderError(
        f"{folder}: a {name} takes {main_input}; legokit wraps text (input_ids) and image (pixel_values) models"
    )
