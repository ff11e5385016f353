"""What a cached encoder output is keyed by: the encoder's whole content and each sample's content. A changed
sample or a changed encoder has another key, so an entry can never be stale; nothing is keyed by path or time."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from legokit.artifacts.format import tensor_bytes
from legokit.version import __version__

TAG = b"legokit-encoder-tokens-1"  # changes when what an entry holds changes
ENTRY_TAG = b"legokit-cache-entry-1"  # what an entry's digest covers, in this order
DIGEST_BYTES = 32  # sha256


def _add(digest: Any, label: str, data: bytes | bytearray) -> None:
    """A length-prefixed part, so that no two different sequences of parts hash alike (the data is not copied)."""
    for part in (label.encode(), data):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)


def entry_digest(encoder: str, sample: str, tokens: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """sha256 of an entry's stored bytes and of its names (the encoder's and the sample's keys): bytes changed on
    disk, or read under another sample's name or in another encoder's folder, do not match it."""
    digest = hashlib.sha256(ENTRY_TAG)
    _add(digest, "encoder", encoder.encode())
    _add(digest, "sample", sample.encode())
    _add(digest, "tokens", tokens)
    _add(digest, "mask", mask)
    return digest.digest()


def encoder_key(block: Any) -> str:
    """sha256 of what decides a block's encoder outputs: the encoder's spec and program, every tensor of its state
    dict, the block's input standardisation and input conventions, the torch and legokit versions that run it (how
    legokit feeds an encoder and reads its output may change between versions) and the kind of device it runs on
    (a GPU's kernels round otherwise than a CPU's)."""
    digest = hashlib.sha256(TAG)
    config = block.config
    conventions = {
        "encoder": config.encoder.to_dict(),
        "input_shape": list(config.input_shape),
        "input_dtype": config.input_dtype,
        "torch": torch.__version__,
        "legokit": __version__,
        "device": block.input_shift.device.type,
    }
    _add(digest, "conventions", json.dumps(conventions, sort_keys=True, default=str).encode())
    program = block.program()
    if program is not None:
        _add(digest, "program", program)
    for name, tensor in sorted(block.encoder.state_dict().items()):
        _add(digest, f"encoder.{name}|{tensor.dtype}|{tuple(tensor.shape)}", tensor_bytes(tensor))
    for name in ("input_shift", "input_scale"):
        _add(digest, name, tensor_bytes(getattr(block, name)))
    return digest.hexdigest()


def real_length(mask: torch.Tensor) -> torch.Tensor:
    """(b,) one past the last real token of each row (0 for a row with none)."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask * positions).amax(dim=1) if mask.shape[1] else torch.zeros(mask.shape[0], dtype=torch.long)


def sample_keys(x: torch.Tensor, mask: torch.Tensor | None) -> list[str]:
    """One key per sample: blake2b of its dtype, shape and bytes, up to its last real token (with the mask over that
    span), so that padding, which depends on the batch, is not part of it."""
    lengths = real_length(mask).tolist() if mask is not None else None
    keys = []
    for row in range(x.shape[0]):
        digest = hashlib.blake2b(digest_size=16)
        sample = x[row] if lengths is None else x[row, : lengths[row]]
        _add(digest, f"{sample.dtype}|{tuple(sample.shape)}", tensor_bytes(sample))
        if mask is not None and lengths is not None:
            _add(digest, "mask", tensor_bytes(mask[row, : lengths[row]]))
        keys.append(digest.hexdigest())
    return keys
