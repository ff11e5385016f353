"""The meter behind `cost`: a dispatch mode that counts, under fake tensors, the memory, traffic and FLOPs of a
program's run. Its own module because torch's fake tensors and dispatch modes take a second to import: a command
that never runs a program (`--help`, `inspect`) never loads them."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

from ..errors import EncoderError
from .cost import Cost


def _bytes(value: Any) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


def _flops(func: Any, args: Any, kwargs: dict[str, Any], out: Any) -> int:
    packet = getattr(func, "overloadpacket", None)
    formula = flop_registry.get(packet)
    if formula is not None:
        return int(formula(*args, **kwargs, out_val=out))
    if "scaled_dot_product" in str(packet) and len(args) >= 3:  # CPU attention has no formula of torch's own
        return int(sdpa_flop_count(args[0].shape, args[1].shape, args[2].shape))
    return 0


class _Meter(TorchDispatchMode):
    """Counts, per operator: FLOPs; the bytes of its tensor inputs and outputs (traffic); and, for operators that
    make new tensors (not views or in-place results), the bytes those hold while alive (their Python objects are
    dropped when the graph, or autograd, no longer needs them)."""

    supports_higher_order_operators = True

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = self.traffic = self.flops = 0

    def _free(self, size: int) -> None:
        self.live -= size

    def _bodies(self, func: Any, args: tuple[Any, ...]) -> None:
        """Count the subgraphs of a higher-order operator (which run inside it, unseen by this mode): a scan's body
        once per step, the costlier branch of a cond, a wrapped body once."""
        name = getattr(func, "__name__", "")
        if name == "scan":
            body, init, xs, extra = args
            steps = int(xs[0].shape[0]) if xs else 0
            self._count_body(body, [*init, *(x[0] for x in xs), *extra], steps)
        elif name == "cond":
            _, *branches, operands = args
            traffic, flops, costs = self.traffic, self.flops, []
            for branch in branches:
                self._count_body(branch, list(operands), 1)
                costs.append((self.traffic - traffic, self.flops - flops))
                self.traffic, self.flops = traffic, flops
            self.traffic += max(c[0] for c in costs)
            self.flops += max(c[1] for c in costs)
        elif name in ("wrap_with_set_grad_enabled", "wrap_with_autocast"):
            at = 1 if name == "wrap_with_set_grad_enabled" else 4
            self._count_body(args[at], list(args[at + 1:]), 1)
        else:  # the schema allows no other; one that got here is refused rather than run uncounted
            raise EncoderError(f"higher-order operator {name[:40]} is not one legokit can bound")

    def _count_body(self, body: Any, inputs: list[Any], repeat: int) -> None:
        """Run a subgraph once under this mode; what it reads, writes and computes counts `repeat` times."""
        if repeat < 1:
            return
        traffic, flops, live = self.traffic, self.flops, self.live
        with self:
            out = body(*inputs)
        del out
        self.traffic = traffic + (self.traffic - traffic) * repeat
        self.flops = flops + (self.flops - flops) * repeat
        self.live = live

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):  # noqa: SLF001 - torch's public HOP type lives here
            self._bodies(func, args)
        out = func(*args, **kwargs)
        self.flops += _flops(func, args, kwargs, out)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.traffic += sum(_bytes(t) for t in tree_flatten((args, kwargs))[0]) + sum(_bytes(t) for t in outputs)
        schema = getattr(func, "_schema", None)
        if schema is not None and any(r.alias_info is not None for r in schema.returns):
            return out
        for tensor in outputs:
            size = _bytes(tensor)
            self.live += size
            weakref.finalize(tensor, self._free, size)
        self.peak = max(self.peak, self.live)
        return out


def measure(graph: nn.Module, args: tuple[torch.Tensor, ...], grad: bool = False) -> Cost:
    """Run `graph` on fake copies of `args` and count what the real run would cost (`cost`'s docstring); `grad`: as
    in training, where autograd keeps what the backward pass needs."""
    meter = _Meter()
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = tuple(mode.from_tensor(a) for a in args)
        with meter, torch.set_grad_enabled(grad):
            out = graph(*fake)
        del out
    return Cost(meter.peak, meter.traffic, meter.flops)
