"""Frozen encoders computed once: their outputs by encoder and sample content (`keys`), kept in memory and on
disk (`store`), looked up by blocks while their encoder cannot change (`frozen`)."""

from __future__ import annotations

from legokit.cache.frozen import blocks_of, cacheable, cached_encoders, encode_ahead, encoded_once, pretrained
from legokit.cache.store import CACHE_ENV, TokenCache, cache_root, clear_cache, list_cache

__all__ = [
    "CACHE_ENV",
    "TokenCache",
    "blocks_of",
    "cache_root",
    "cacheable",
    "cached_encoders",
    "clear_cache",
    "encode_ahead",
    "encoded_once",
    "list_cache",
    "pretrained",
]
