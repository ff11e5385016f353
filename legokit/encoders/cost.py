"""What a foreign program's forward pass costs, measured under fake tensors before it runs for real.

A program from a file is code legokit did not write: an aten-only graph can still ask for gigabytes or loop for
hours. Before a program first runs at an input shape, legokit runs it on fake tensors (shapes and dtypes, no data,
no memory), counting the bytes its operators' new tensors hold at once (peak), the bytes they write in all
(subgraphs of scan counted once per step) and the floating-point operations of its matrix products and
convolutions. One sample's pass must keep to per-sample caps, and a batch may cost no more than its samples would
(an encoder is linear in the batch; a program that is not would hide its cost from the one-sample check). A program
whose output shapes depend on its input values cannot be bounded in advance, and is refused too.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException, FakeTensor,
                                          FakeTensorMode)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from ..errors import ConfigError, EncoderError, brief

GiB = 1 << 30
# per-sample caps, with the environment variables that change them
MEMORY_ENV, WRITTEN_ENV, FLOPS_ENV = "LEGOKIT_MAX_PROGRAM_MEMORY", "LEGOKIT_MAX_PROGRAM_WRITES", "LEGOKIT_MAX_PROGRAM_FLOPS"
DEFAULT_MEMORY = 2 * GiB
DEFAULT_WRITTEN = 64 * GiB
DEFAULT_FLOPS = 2 * 10**12
BATCH_SLACK = 64 << 20  # bytes or FLOPs a batch may cost beyond its samples' (allocator rounding, shared buffers)


@dataclass(frozen=True)
class Cost:
    """One forward pass: the most bytes its intermediate tensors hold at once, the bytes written, and the FLOPs."""

    peak_bytes: int
    written_bytes: int
    flops: int


@dataclass(frozen=True)
class Caps:
    """Per-sample limits on a foreign program's forward pass."""

    peak_bytes: int = DEFAULT_MEMORY
    written_bytes: int = DEFAULT_WRITTEN
    flops: int = DEFAULT_FLOPS

    @classmethod
    def from_env(cls) -> "Caps":
        """The caps, each raised or lowered by its environment variable (a number of bytes or FLOPs)."""
        return cls(*(_env_number(name, default) for name, default in
                     ((MEMORY_ENV, DEFAULT_MEMORY), (WRITTEN_ENV, DEFAULT_WRITTEN), (FLOPS_ENV, DEFAULT_FLOPS))))


def _env_number(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text)) if len(text) <= 24 else -1
    except ValueError:
        value = -1
    if value < 1:
        raise ConfigError(f"{name} must be a positive number, got {text[:24]!r}")
    return value


class _Meter(TorchDispatchMode):
    """Counts, for every operator that makes new tensors (not views or in-place results), the bytes they hold while
    alive (their Python objects are dropped when the graph no longer needs them) and the bytes written in all."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = self.written = self.flops = 0

    def _free(self, size: int) -> None:
        self.live -= size

    supports_higher_order_operators = True

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
            written, flops, costs = self.written, self.flops, []
            for branch in branches:
                self._count_body(branch, list(operands), 1)
                costs.append((self.written - written, self.flops - flops))
                self.written, self.flops = written, flops
            self.written += max(c[0] for c in costs)
            self.flops += max(c[1] for c in costs)
        elif name in ("wrap_with_set_grad_enabled", "wrap_with_autocast"):
            at = 1 if name == "wrap_with_set_grad_enabled" else 4
            self._count_body(args[at], list(args[at + 1:]), 1)

    def _count_body(self, body: Any, inputs: list[Any], repeat: int) -> None:
        """Run a subgraph once under this mode; what it writes and computes counts `repeat` times."""
        if repeat < 1:
            return
        written, flops, live = self.written, self.flops, self.live
        with self:
            out = body(*inputs)
        del out
        self.written = written + (self.written - written) * repeat
        self.flops = flops + (self.flops - flops) * repeat
        self.live = live

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if isinstance(func, torch._ops.HigherOrderOperator):  # noqa: SLF001 - torch's public HOP type lives here
            self._bodies(func, args)
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(getattr(func, "overloadpacket", None))
        if formula is not None:
            self.flops += int(formula(*args, **(kwargs or {}), out_val=out))
        schema = getattr(func, "_schema", None)
        if schema is not None and any(r.alias_info is not None for r in schema.returns):
            return out
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                size = tensor.numel() * tensor.element_size()
                self.live += size
                self.written += size
                weakref.finalize(tensor, self._free, size)
        self.peak = max(self.peak, self.live)
        return out


def measure(graph: nn.Module, args: tuple[torch.Tensor, ...]) -> Cost:
    """Run `graph` on fake copies of `args` and count what the real run would cost (see the module's docstring)."""
    meter = _Meter()
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = tuple(mode.from_tensor(a) for a in args)
        with meter, torch.no_grad():
            out = graph(*fake)
        del out
    return Cost(meter.peak, meter.written, meter.flops)


def _first_sample(args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(a[:1] for a in args)


def _over(cost: Cost, caps: Caps) -> str | None:
    """Which per-sample cap one sample's cost breaks, as a phrase; None when it keeps to all."""
    for name, used, cap, unit, env in (("holds", cost.peak_bytes, caps.peak_bytes, "bytes at once", MEMORY_ENV),
                                       ("writes", cost.written_bytes, caps.written_bytes, "bytes", WRITTEN_ENV),
                                       ("computes", cost.flops, caps.flops, "floating-point operations", FLOPS_ENV)):
        if used > cap:
            return f"one sample's forward pass {name} {used:,} {unit} (cap {cap:,}; {env} raises it if you trust it)"
    return None


def _superlinear(batch: Cost, one: Cost, samples: int) -> bool:
    """Whether a batch costs more than `samples` single samples would (with slack): an encoder's cost grows
    linearly with the batch, so anything faster is a program that hides its cost from the one-sample check."""
    return any(b > 2 * samples * o + BATCH_SLACK for b, o in ((batch.peak_bytes, one.peak_bytes),
                                                              (batch.written_bytes, one.written_bytes),
                                                              (batch.flops, one.flops)))


def _measured(graph: nn.Module, args: tuple[torch.Tensor, ...], what: str, samples: int) -> Cost:
    """`measure`, with its failures as one-line EncoderErrors: a program that cannot run on fake inputs of this
    shape will not run on real ones either (and must not get to try)."""
    try:
        return measure(graph, args)
    except (DataDependentOutputException, DynamicOutputShapeException) as exc:
        raise EncoderError(f"{what}: its output shapes depend on its input values ({brief(exc, 80)}), so its cost "
                           "cannot be bounded before it runs; legokit refuses such programs") from exc
    except Exception as exc:  # noqa: BLE001 - a program fails inside any operator, with any type
        raise EncoderError(f"{what} fails at batch size {samples}: export it with dynamic_shapes (batch axis "
                           f"Dim.DYNAMIC), legokit runs encoders on any number of samples ({brief(exc, 100)})") from exc


def check_cost(graph: nn.Module, args: tuple[torch.Tensor, ...], what: str, caps: Caps | None = None,
               one: Cost | None = None) -> Cost:
    """The cost of one sample's forward pass, measured on inputs shaped like `args` (and the batch's, when `args`
    hold more than one sample): over a per-sample cap, growing faster than the batch, or unknowable before the run
    (output shapes that depend on input values) is an EncoderError. `one` is the one-sample cost already known."""
    caps = caps or Caps.from_env()
    samples = int(args[0].shape[0]) if args and args[0].dim() else 1
    one = one or _measured(graph, _first_sample(args), what, 1)
    problem = _over(one, caps)
    if problem is None and samples > 1 and _superlinear(_measured(graph, args, what, samples), one, samples):
        problem = f"its cost grows faster than the batch (measured at {samples} samples against one)"
    if problem:
        raise EncoderError(f"{what}: {problem}")
    return one


def _tracing(values: list[Any]) -> bool:
    """Whether the program is being traced (torch.export re-exporting it) rather than run: nothing is allocated."""
    return torch.compiler.is_compiling() or any(isinstance(v, FakeTensor) for v in values)


def guard(graph: nn.Module, what: str) -> nn.Module:
    """Make `graph` check its cost (`check_cost`) before it first runs at each input shape; returns `graph`.

    A forward pre-hook, so that the module, its parameters and its state-dict keys stay what they are."""
    checked: set[tuple[Any, ...]] = set()
    per_sample: dict[tuple[Any, ...], Cost] = {}

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        values = [*args, *kwargs.values()]
        if _tracing(values):
            return
        if kwargs or not all(isinstance(v, torch.Tensor) and v.dim() for v in values):
            raise EncoderError(f"{what}: an exported program takes batched tensors, by position")
        key = tuple((tuple(v.shape), v.dtype) for v in values)
        if key not in checked:
            sample = tuple((tuple(v.shape[1:]), v.dtype) for v in values)
            per_sample[sample] = check_cost(module, tuple(args), what, one=per_sample.get(sample))
            checked.add(key)

    graph.register_forward_pre_hook(before, with_kwargs=True)
    return graph
