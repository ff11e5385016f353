"""Fusion modes (LegoFuse, MM-Lego Sec. 3.3): the schedule in which fused blocks' update steps write the one latent.
Each mode registers by name with the `fusion_mode` class decorator, as the built-in `stack` and `weave` below do;
fused models, the graph, the CLI and recipes find modes here, and fused files store a mode by its name."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from legokit.errors import ConfigError
from legokit.nn.block import BlockConfig

Schedule = list[tuple[str, int]]  # (modality, update step) in the order they run on the latent


def no_check(configs: Mapping[str, BlockConfig]) -> None:
    """A mode that fuses whatever merging could join (`compose.joins.check_joinable`) checks nothing more."""


@dataclass(frozen=True)
class FusionMode:
    """One mode: `schedule(order, depths)` lists the update steps the present blocks run, `check(configs)` refuses
    blocks it cannot fuse (a ConfigError), `summary` says it in a few words for help texts."""

    name: str
    schedule: Callable[[Sequence[str], Mapping[str, int]], Schedule]
    check: Callable[[Mapping[str, BlockConfig]], None] = no_check
    summary: str = ""


_MODES: dict[str, FusionMode] = {}


def register_fusion_mode(mode: FusionMode) -> FusionMode:
    """Add a mode; a name already taken by another mode is refused."""
    if (
        not isinstance(mode.name, str)
        or not mode.name.isidentifier()
        or mode.name in ("merge", "input", "block", "adapter", "head")
    ):
        raise ConfigError(f"a fusion mode name must be a Python identifier and no graph node type, got {mode.name!r}")
    known = _MODES.get(mode.name)
    if known is not None and known != mode:
        raise ConfigError(f"fusion mode {mode.name!r} is already registered")
    _MODES[mode.name] = mode
    return mode


def fusion_mode(name: str) -> Callable[[type], type]:
    """Class decorator: the class's static `schedule` (and optional `check`, `summary`) make the mode registered
    under `name`; the class keeps it as `.mode`."""

    def register(cls: type) -> type:
        found: dict[str, Any] = {
            key: value.__func__ if isinstance(value, staticmethod) else value for key, value in vars(cls).items()
        }
        if not callable(found.get("schedule")):
            raise ConfigError(f"fusion mode {name!r} ({cls.__name__}) lacks a static schedule(order, depths)")
        mode = FusionMode(name, found["schedule"], found.get("check", no_check), found.get("summary", ""))
        cls.mode = register_fusion_mode(mode)  # type: ignore[attr-defined]
        return cls

    return register


def fusion_modes() -> list[str]:
    """The registered modes' names, in registration order (the built-ins first)."""
    return list(_MODES)


def mode_named(name: str) -> FusionMode:
    """The registered mode of this name; an unknown one is a one-line ConfigError listing the registered ones."""
    found = _MODES.get(name) if isinstance(name, str) else None
    if found is None:
        raise ConfigError(f"fuse mode must be one of {', '.join(_MODES)}, got {name!r}")
    return found


def describe_modes() -> str:
    """The registered modes with their summaries, for help texts: `stack: block after block; ...`."""
    return "; ".join(f"{m.name}: {m.summary}" if m.summary else m.name for m in _MODES.values())


@fusion_mode("stack")
class Stack:
    """Stack (MM-Lego Sec. 3.3): each block runs all its update steps on the latent before the next block does."""

    summary = "block after block"

    @staticmethod
    def schedule(order: Sequence[str], depths: Mapping[str, int]) -> Schedule:
        return [(m, s) for m in order for s in range(depths[m])]


@fusion_mode("weave")
class Weave:
    """Weave (MM-Lego Sec. 3.3): the blocks take turns, step by step, so every block needs the same depth."""

    summary = "layer after layer"

    @staticmethod
    def schedule(order: Sequence[str], depths: Mapping[str, int]) -> Schedule:
        return [(m, s) for s in range(depths[order[0]]) for m in order]

    @staticmethod
    def check(configs: Mapping[str, BlockConfig]) -> None:
        depths = {m: c.depth for m, c in configs.items()}
        if len(set(depths.values())) > 1:
            shown = ", ".join(f"{m} {d}" for m, d in depths.items())
            raise ConfigError(f"weave interleaves the blocks' layers step by step, so they need one depth; got {shown}")
