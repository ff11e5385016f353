"""The adapter registry: each missing-modality adapter method is an `Adapter` subclass registered by name with
`register_adapter` (MoRA and SSF too); `adapt`, `legokit adapt` and adapter files find it by that name, never by
comparing strings."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from legokit.adapters.base import Adapter
from legokit.errors import ConfigError

WITHOUT_ADAPTER = ("head", "full")  # adaptations that train the model's own parameters (`prepare_adaptation`)
HOOKS = ("build_site", "sizes_for", "site_sizes", "site_shapes", "wrap")  # what a method must define

_ADAPTERS: dict[str, type[Adapter]] = {}
A = TypeVar("A", bound=type[Adapter])


def register_adapter(name: str) -> Callable[[A], A]:
    """Class decorator: make an `Adapter` subclass an adaptation method by name (`adapt`, `legokit adapt`, adapter
    files), checked for the hooks adapters need; the class keeps the name as `.kind`, which its files record."""
    if not isinstance(name, str) or not name.isidentifier() or name in WITHOUT_ADAPTER:
        raise ConfigError(
            f"an adapter name must be a Python identifier other than {', '.join(WITHOUT_ADAPTER)}, got {name!r}"
        )

    def register(cls: A) -> A:
        if not (isinstance(cls, type) and issubclass(cls, Adapter)):
            raise ConfigError(f"adapter {name!r}: register an Adapter subclass, got {cls!r}")
        missing = [hook for hook in HOOKS if getattr(cls, hook) is getattr(Adapter, hook)]
        if missing:
            raise ConfigError(f"adapter {name!r}: {cls.__name__} does not define {', '.join(missing)}")
        taken = inspect.signature(cls).parameters
        unknown = [option for option in cls.options if option not in taken]
        if unknown:
            raise ConfigError(f"adapter {name!r}: its options {', '.join(unknown)} are not keywords of {cls.__name__}")
        known = _ADAPTERS.get(name)
        if known is not None and known is not cls:
            raise ConfigError(f"adapter {name!r} is already registered ({known.__name__})")
        cls.kind = name
        _ADAPTERS[name] = cls
        return cls

    return register


def adapter_names() -> list[str]:
    """The registered adapter methods, in registration order (the built-ins first)."""
    return list(_ADAPTERS)


def adapter_class(name: str) -> type[Adapter]:
    """The class registered under `name`; an unknown one is a one-line error naming the registered ones."""
    found = _ADAPTERS.get(name) if isinstance(name, str) else None
    if found is None:
        raise ConfigError(f"unknown adapter {name!r}; registered adapters are {', '.join(_ADAPTERS)}")
    return found


def adaptation_methods() -> tuple[str, ...]:
    """Every way `prepare_adaptation` adapts a model: the head alone, each registered adapter, or everything."""
    return (WITHOUT_ADAPTER[0], *_ADAPTERS, WITHOUT_ADAPTER[1])


def describe_adapters() -> str:
    """The registered adapters by name with their summaries, for help texts: `mora (modality-aware LoRA) or ...`."""
    return " or ".join(f"{name} ({cls.summary})" if cls.summary else name for name, cls in _ADAPTERS.items())
