"""Missing-modality adapters: MoRA (modality-aware LoRA) and SSF (scale and shift per modality combination),
attached to any nn.Module, routed per sample by an availability mask, saved as their own artifacts."""

from .base import Adapted, Adapter, attach, detach
from .missing import MissingRates
from .mora import MoRA
from .ssf import SSF

__all__ = ["Adapted", "Adapter", "MissingRates", "MoRA", "SSF", "attach", "detach"]
