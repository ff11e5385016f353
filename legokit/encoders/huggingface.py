"""Encoders defined by Hugging Face transformers, rebuilt from a local model folder: config.json and safetensors
weights, plus tokenizer.json for text.

transformers is an optional extra (`pip install 'legokit[hf]'`), never a runtime dependency: it is needed to wrap
such an encoder, not to load the block it becomes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
import torch
from torch import nn

from ..errors import EncoderError, brief
from ..text import TextSpec


@dataclass(frozen=True)
class FolderEncoder:
    """A module rebuilt from a Hugging Face model folder, with what wrapping it needs to know."""

    module: nn.Module
    input_shape: tuple[int | None, ...]
    input_dtype: str
    text: TextSpec | None
    description: str


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _config(folder: Path) -> dict:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EncoderError(f"{folder}/config.json: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "model_type" not in data:
        raise EncoderError(f"{folder}/config.json: no model_type; not a Hugging Face model config")
    if data.get("auto_map"):
        raise EncoderError(f"{folder}: the model needs custom code from its folder (auto_map); legokit runs none")
    return data


def _longest_input(module: nn.Module, data: dict, folder: Path) -> int:
    """The most tokens the model runs on: its position table, less the offset that RoBERTa-style models add
    (positions start after the padding index), found by running it at each candidate length."""
    table = int(data.get("max_position_embeddings") or 512)
    candidates = [table] + ([table - int(data["pad_token_id"]) - 1] if data.get("pad_token_id") is not None else [])
    for length in candidates:
        if length < 1:
            continue
        try:
            with torch.no_grad():
                module(torch.ones(1, length, dtype=torch.int64), attention_mask=torch.ones(1, length, dtype=torch.int64))
            return length
        except Exception:  # noqa: BLE001 - a model fails with many types past its position table
            continue
    raise EncoderError(f"{folder}: the model runs at none of {', '.join(map(str, candidates))} tokens; "
                       "check max_position_embeddings in config.json")


def load_hf_folder(folder: Path) -> FolderEncoder:
    """The base model of a local Hugging Face folder, weights from safetensors only (a pickled pytorch_model.bin is
    refused), no remote code; token-id input with the folder's tokenizer.json, or pixel input of the config's size."""
    try:
        import transformers
    except ImportError as exc:
        raise EncoderError(f"{folder}: wrapping a Hugging Face model folder needs transformers: "
                           "pip install 'legokit[hf]'") from exc
    data = _config(folder)
    if not any(folder.glob("*.safetensors")):
        pickled = [p.name for p in folder.glob("*.bin")]
        found = f" (only {', '.join(pickled)}, a pickle format legokit does not read)" if pickled else ""
        raise EncoderError(f"{folder}: no safetensors weights{found}; save the model with save_pretrained()")
    try:
        module, info = transformers.AutoModel.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False, output_loading_info=True
        )
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a folder it cannot read
        raise EncoderError(f"{folder}: transformers cannot build the model ({brief(exc, 200)})") from exc
    # a base model built from a checkpoint saved without its pooler gets a fresh pooler, which legokit never reads
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    mismatched = [str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", ())]
    if missing or mismatched:
        names = ", ".join((missing + mismatched)[:3])
        raise EncoderError(f"{folder}: the weights do not fit the model in config.json: {len(missing)} tensor(s) "
                           f"missing, {len(mismatched)} of another shape ({names}, ...); legokit would wrap random weights")
    module.eval()
    main_input = getattr(module, "main_input_name", "input_ids")
    name = f"{type(module).__name__} ({data['model_type']})"
    if main_input == "input_ids":
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise EncoderError(f"{folder}: a text model needs its tokenizer.json beside config.json "
                               "(save the tokenizer with save_pretrained())")
        text = TextSpec(tokenizer_file.read_text(encoding="utf-8"), max_tokens=_longest_input(module, data, folder))
        return FolderEncoder(module, (None,), "int64", text, f"{name}, text through its tokenizer.json")
    if main_input == "pixel_values":
        size = data.get("image_size", 224)
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        shape = (int(data.get("num_channels", 3)), int(height), int(width))
        return FolderEncoder(module, shape, "float32", None, f"{name}, images {'x'.join(map(str, shape))}")
    raise EncoderError(f"{folder}: a {name} takes {main_input}; legokit wraps text (input_ids) and image "
                       "(pixel_values) models")
