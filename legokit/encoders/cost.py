"""What a foreign program's forward pass costs, measured under fake tensors before it runs for real.

A program from a file is code legokit did not write: an aten-only graph can still ask for gigabytes or loop for
hours. Before a program first runs at an input shape, legokit runs it on fake tensors (shapes and dtypes, no data,
no memory) and counts: the bytes its operators' new tensors hold at once (peak; with autograd's saved tensors when
gradients are on), the bytes its operators read and write (broadcast views counted at their full size; subgraphs of
scan once per step) and the floating-point operations of its products, convolutions and attention. One run of the
program must keep to caps on all three. A batch over them is run in chunks of samples that fit (an encoder's
samples are independent), and a chunk may cost no more than its samples would one by one: a program whose cost
grows faster than the batch would hide it from the one-sample measurement. A program whose output shapes depend on
its input values cannot be bounded in advance, and is refused.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

from legokit.errors import ConfigError, EncoderError, brief
from legokit.torch_internals import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
    HigherOrderOperator,
    TorchDispatchMode,
    op_schema,
    tree_flatten,
)

GiB = 1 << 30
# caps on one run of a program, with the environment variables that change them: on 2 CPU cores a run at the caps
# takes a few seconds (FLOPs), and never holds more than a GiB
MEMORY_ENV, TRAFFIC_ENV, FLOPS_ENV = (
    "LEGOKIT_MAX_PROGRAM_MEMORY",
    "LEGOKIT_MAX_PROGRAM_TRAFFIC",
    "LEGOKIT_MAX_PROGRAM_FLOPS",
)
DEFAULT_MEMORY = 1 * GiB
DEFAULT_TRAFFIC = 16 * GiB
DEFAULT_FLOPS = 2 * 10**11
BATCH_SLACK = 64 << 20  # bytes or FLOPs a chunk may cost beyond its samples' (allocator rounding, shared buffers)


@dataclass(frozen=True)
class Cost:
    """One run: the most bytes its tensors hold at once, the bytes its operators read and write, and its FLOPs."""

    peak_bytes: int
    traffic_bytes: int
    flops: int

    def values(self) -> tuple[int, int, int]:
        return self.peak_bytes, self.traffic_bytes, self.flops


@dataclass(frozen=True)
class Caps:
    """Limits on one run of a foreign program."""

    peak_bytes: int = DEFAULT_MEMORY
    traffic_bytes: int = DEFAULT_TRAFFIC
    flops: int = DEFAULT_FLOPS

    @classmethod
    def from_env(cls) -> Caps:
        """The caps, each raised or lowered by its environment variable (a number of bytes or FLOPs)."""
        return cls(
            *(
                _env_number(name, default)
                for name, default in (
                    (MEMORY_ENV, DEFAULT_MEMORY),
                    (TRAFFIC_ENV, DEFAULT_TRAFFIC),
                    (FLOPS_ENV, DEFAULT_FLOPS),
                )
            )
        )

    def values(self) -> tuple[int, int, int]:
        return self.peak_bytes, self.traffic_bytes, self.flops


NAMES = (
    ("holds", "bytes at once", MEMORY_ENV),
    ("reads and writes", "bytes", TRAFFIC_ENV),
    ("computes", "floating-point operations", FLOPS_ENV),
)


def _env_number(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text)) if len(text) <= 24 else -1
    except (ValueError, OverflowError):
        value = -1
    if value < 1:
        raise ConfigError(f"{name} must be a positive number, got {text[:24]!r}")
    return value


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
            self._count_body(args[at], list(args[at + 1 :]), 1)
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
        if isinstance(func, HigherOrderOperator):
            self._bodies(func, args)
        out = func(*args, **kwargs)
        self.flops += _flops(func, args, kwargs, out)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.traffic += sum(_bytes(t) for t in tree_flatten((args, kwargs))[0]) + sum(_bytes(t) for t in outputs)
        schema = op_schema(func)
        if schema is not None and any(r.alias_info is not None for r in schema.returns):
            return out
        for tensor in outputs:
            size = _bytes(tensor)
            self.live += size
            weakref.finalize(tensor, self._free, size)
        self.peak = max(self.peak, self.live)
        return out


def measure(graph: nn.Module, args: tuple[torch.Tensor, ...], grad: bool = False) -> Cost:
    """Run `graph` on fake copies of `args` and count what the real run would cost (see the module's docstring);
    `grad`: as in training, where autograd keeps what the backward pass needs."""
    meter = _Meter()
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = tuple(mode.from_tensor(a) for a in args)
        with meter, torch.set_grad_enabled(grad):
            out = graph(*fake)
        del out
    return Cost(meter.peak, meter.traffic, meter.flops)


def _measured(graph: nn.Module, args: tuple[torch.Tensor, ...], what: str, grad: bool) -> Cost:
    """`measure`, with its failures as one-line EncoderErrors: a program that cannot run on fake inputs of this
    shape will not run on real ones either (and must not get to try)."""
    try:
        return measure(graph, args, grad)
    except EncoderError as exc:
        raise EncoderError(f"{what}: {exc}") from exc
    except (DataDependentOutputException, DynamicOutputShapeException) as exc:
        raise EncoderError(
            f"{what}: its output shapes depend on its input values ({brief(exc, 80)}), so its cost "
            "cannot be bounded before it runs; legokit refuses such programs"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a program fails inside any operator, with any type
        samples = int(args[0].shape[0]) if args and args[0].dim() else 1
        raise EncoderError(
            f"{what} fails at batch size {samples}: export it with dynamic_shapes (batch axis "
            f"Dim.DYNAMIC), legokit runs encoders on any number of samples ({brief(exc, 100)})"
        ) from exc


def _over(cost: Cost, caps: Caps, what: str) -> str | None:
    """Which cap one run breaks, as a phrase; None when it keeps to all."""
    for used, cap, (verb, unit, env) in zip(cost.values(), caps.values(), NAMES):
        if used > cap:
            return f"{what} {verb} {used:,} {unit} (cap {cap:,}; {env} raises it if you trust the program)"
    return None


def _superlinear(batch: Cost, one: Cost, samples: int) -> bool:
    """Whether a chunk costs more than its samples would one by one (with slack)."""
    return any(b > 2 * samples * o + BATCH_SLACK for b, o in zip(batch.values(), one.values()))


def _tracing(values: list[Any]) -> bool:
    """Whether the program is being traced (torch.export re-exporting it) rather than run: nothing is allocated."""
    return torch.compiler.is_compiling() or any(isinstance(v, FakeTensor) for v in values)


def _grad(graph: nn.Module) -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for p in graph.parameters())


class CostGuard:
    """The cost checks of one program's module: a forward pre-hook refuses a run it has not measured within the
    caps, and `chunk` says how many samples one run may take."""

    def __init__(self, graph: nn.Module, what: str, caps: Caps | None = None):
        self.graph, self.what, self.caps = graph, what, caps or Caps.from_env()
        self.per_sample: dict[tuple[Any, ...], Cost] = {}
        self.checked: set[tuple[Any, ...]] = set()
        graph.register_forward_pre_hook(self._before, with_kwargs=True)

    def one(self, args: tuple[torch.Tensor, ...]) -> Cost:
        """One sample's cost at these inputs' sample shapes (measured once, then remembered); over a cap is refused."""
        grad = _grad(self.graph)
        key = (grad, *((tuple(a.shape[1:]), a.dtype) for a in args))
        if key not in self.per_sample:
            cost = _measured(self.graph, tuple(a[:1] for a in args), self.what, grad)
            problem = _over(cost, self.caps, "one sample's forward pass")
            if problem:
                raise EncoderError(f"{self.what}: {problem}")
            self.per_sample[key] = cost
        return self.per_sample[key]

    def chunk(self, args: tuple[torch.Tensor, ...]) -> int:
        """How many samples one run may take at these shapes: half of what the caps allow by the one-sample cost
        (the other half is the slack a chunk may cost beyond its samples)."""
        one = self.one(args)
        fits = [cap // (2 * used) for used, cap in zip(one.values(), self.caps.values()) if used]
        return max(1, min(fits, default=1 << 30))

    def _before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        values = [*args, *kwargs.values()]
        if _tracing(values):
            return
        if kwargs or not all(isinstance(v, torch.Tensor) and v.dim() for v in values):
            raise EncoderError(f"{self.what}: an exported program takes batched tensors, by position")
        grad = _grad(module)
        key = (grad, *((tuple(v.shape), v.dtype) for v in values))
        if key in self.checked:
            return
        one = self.one(tuple(args))
        samples = int(args[0].shape[0])
        if samples > 1:
            cost = _measured(module, tuple(args), self.what, grad)
            if _superlinear(cost, one, samples):
                raise EncoderError(
                    f"{self.what}: its cost grows faster than the batch (measured at {samples} samples against one)"
                )
            problem = _over(cost, self.caps, f"a run of {samples} samples")
            if problem:
                raise EncoderError(f"{self.what}: {problem}; run fewer samples at once")
        self.checked.add(key)


def guard(graph: nn.Module, what: str) -> CostGuard:
    """Make `graph` check its cost before it first runs at each input shape (a forward pre-hook, so that the module,
    its parameters and its state-dict keys stay what they are); the guard also tells how to chunk a batch."""
    return CostGuard(graph, what)


def check_cost(graph: nn.Module, args: tuple[torch.Tensor, ...], what: str, caps: Caps | None = None) -> Cost:
    """One run's cost, refused over the caps: for a module legokit runs once as it is (a Hugging Face model probed
    at its longest input)."""
    cost = _measured(graph, args, what, _grad(graph))
    problem = _over(cost, caps or Caps.from_env(), "one run")
    if problem:
        raise EncoderError(f"{what}: {problem}")
    return cost
