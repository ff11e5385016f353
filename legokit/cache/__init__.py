"""Frozen encoders computed once: their outputs by encoder and sample content (`keys`), kept in memory and on
disk (`store`) within a disk budget (`disk`), looked up by blocks while their encoder cannot change (`frozen`)."""

from __future__ import annotations

from legokit.cache.disk import DISK_ENV
from legokit.cache.frozen import blocks_of, cacheable, cached_encoders, encode_ahead, encoded_once, pretrained
from legokit.cache.listing import clear_cache, list_cache
from legokit.cache.store import CACHE_ENV, TokenCache, cache_root

__all__ = [
    "CACHE_ENV",
    "DISK_ENV",
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
