"""Composition: the typed graph of blocks and operations, LegoMerge, and YAML recipes."""
