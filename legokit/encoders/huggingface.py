"""Encoders defined by Hugging Face transformers, rebuilt from a local model folder: config.json and safetensors
weights, plus tokenizer.json for text.

transformers is an optional extra (`pip install 'legokit[hf]'`), never a runtime dependency: it is needed to wrap
such an encoder, not to load the block it becomes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from torch import nn

from ..errors import EncoderError
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
        raise EncoderError(f"{folder}/config.json: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise EncoderError(f"{folder}/config.json: no model_type; not a Hugging Face model config")
    if data.get("auto_map"):
        raise EncoderError(f"{folder}: the model needs custom code from its folder (auto_map); legokit runs none")
    return data


def load_hf_folder(folder: Path) -> FolderEncoder:
    """The base model of a local Hugging Face folder, weights from safetensors only (a pickled pytorch_model.bin is
    refused), no remote code; token-id input with the folder's tokenizer.json, or pixel input of the config's size."""
    try:
        import transformers
    except ImportError:
        raise EncoderError(f"{folder}: wrapping a Hugging Face model folder needs transformers: "
                           "pip install 'legokit[hf]'") from None
    data = _config(folder)
    if not any(folder.glob("*.safetensors")):
        pickled = [p.name for p in folder.glob("*.bin")]
        found = f" (only {', '.join(pickled)}, a pickle format legokit does not read)" if pickled else ""
        raise EncoderError(f"{folder}: no safetensors weights{found}; save the model with save_pretrained()")
    try:
        module = transformers.AutoModel.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False
        )
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a folder it cannot read
        raise EncoderError(f"{folder}: transformers cannot build the model ({' '.join(str(exc).split())[:200]})") from None
    module.eval()
    main_input = getattr(module, "main_input_name", "input_ids")
    name = f"{type(module).__name__} ({data['model_type']})"
    if main_input == "input_ids":
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise EncoderError(f"{folder}: a text model needs its tokenizer.json beside config.json "
                               "(save the tokenizer with save_pretrained())")
        limit = int(data.get("max_position_embeddings") or 512)
        text = TextSpec(tokenizer_file.read_text(encoding="utf-8"), max_tokens=limit)
        return FolderEncoder(module, (None,), "int64", text, f"{name}, text through its tokenizer.json")
    if main_input == "pixel_values":
        size = data.get("image_size", 224)
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        shape = (int(data.get("num_channels", 3)), int(height), int(width))
        return FolderEncoder(module, shape, "float32", None, f"{name}, images {'x'.join(map(str, shape))}")
    raise EncoderError(f"{folder}: a {name} takes {main_input}; legokit wraps text (input_ids) and image "
                       "(pixel_values) models")
