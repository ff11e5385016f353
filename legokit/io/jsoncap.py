"""JSON from files, parsed with its nesting capped: deep nesting makes recursive readers (Python's own, and the
walkers that follow) fail with RecursionError far from where the file was read."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

MAX_JSON_DEPTH = 200


def nested_too_deep(text: str | bytes, value: Any) -> bool:
    """Whether parsed JSON nests past MAX_JSON_DEPTH; walked without recursion, and only when its text holds more
    opening brackets than the cap (with fewer, it cannot nest past it)."""
    opening = text.count("[") + text.count("{") if isinstance(text, str) else text.count(b"[") + text.count(b"{")
    if opening <= MAX_JSON_DEPTH:
        return False
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > MAX_JSON_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return False


def capped_json(text: str | bytes, fail: Callable[[str], Exception]) -> Any:
    """Parsed JSON whose nesting stays within MAX_JSON_DEPTH; otherwise `fail(reason)` is raised, the reason saying
    "is not valid JSON (...)" or "is nested over N levels"."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer of over 4,300 digits
        raise fail(f"is not valid JSON ({type(exc).__name__})") from exc
    if nested_too_deep(text, value):
        raise fail(f"is nested over {MAX_JSON_DEPTH} levels")
    return value
