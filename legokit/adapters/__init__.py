"""Missing-modality adapters: MoRA (modality-aware LoRA) and SSF (scale and shift per modality combination),
attached to any nn.Module, routed per sample by an availability mask, saved as their own artifacts. Methods are
registered by name (`register_adapter`); importing this package registers the built-ins, MoRA first."""

from legokit.adapters.base import Adapted, Adapter, attach, detach
from legokit.adapters.missing import MissingRates
from legokit.adapters.mora import MoRA
from legokit.adapters.registry import adaptation_methods, adapter_class, adapter_names, register_adapter
from legokit.adapters.ssf import SSF

__all__ = [
    "Adapted",
    "Adapter",
    "MissingRates",
    "MoRA",
    "SSF",
    "adaptation_methods",
    "adapter_class",
    "adapter_names",
    "attach",
    "detach",
    "register_adapter",
]
