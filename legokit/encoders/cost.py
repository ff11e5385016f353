"""What a foreign program's forward pass costs, measured under fake tensors before it runs for real.

A program from a file is code legokit did not write: an aten-only graph can still ask for gigabytes or loop for
hours. Before a program first runs at an input shape, legokit runs it on fake tensors (shapes and dtypes, no data,
no memory) and counts: the bytes its operators' new tensors hold at once (peak; with autograd's saved tensors when
gradients are on; a broadcast operand a heavy operator may copy whole), the bytes its operators read and write
(broadcast views counted at their full size; subgraphs of scan once per step) and the operations each operator's
own formula gives (`encoders.ops`; an operator without one is refused, never counted as free; half precision
products weigh more on CPU). One run of the program must keep to caps on all three, and one sample's output may not
outgrow its input beyond a cap. A batch over them is run in chunks of samples that fit (an encoder's samples are
independent), and a chunk may cost no more than its samples would one by one: a program whose cost grows faster
than the batch would hide it from the one-sample measurement. A program whose output shapes depend on its input
values cannot be bounded in advance, and is refused.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from legokit.encoders.ops import CPU_SLOWDOWN, OPS, Op, op_key, tensors
from legokit.errors import EncoderError, brief, env_count
from legokit.torch_internals import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
    HigherOrderOperator,
    TorchDispatchMode,
    op_schema,
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
# one sample's output may be at most OUTPUT_RATIO x its input's bytes plus this floor (a BERT's 512 x 768 float32
# tokens are 1.5 MiB)
OUTPUT_ENV, DEFAULT_OUTPUT, OUTPUT_RATIO = "LEGOKIT_MAX_PROGRAM_OUTPUT", 16 << 20, 64
BATCH_SLACK = 64 << 20  # bytes or FLOPs a chunk may cost beyond its samples' (allocator rounding, shared buffers)


@dataclass(frozen=True)
class Cost:
    """One run: the most bytes its tensors hold at once, the bytes its operators read and write, its FLOPs, and the
    bytes of its output at full size (a broadcast output is materialised by whoever keeps it)."""

    peak_bytes: int
    traffic_bytes: int
    flops: int
    output_bytes: int = 0

    def values(self) -> tuple[int, int, int]:
        return self.peak_bytes, self.traffic_bytes, self.flops


@dataclass(frozen=True)
class Caps:
    """Limits on one run of a foreign program."""

    peak_bytes: int = DEFAULT_MEMORY
    traffic_bytes: int = DEFAULT_TRAFFIC
    flops: int = DEFAULT_FLOPS
    output_bytes: int = DEFAULT_OUTPUT

    @classmethod
    def from_env(cls) -> Caps:
        """The caps, each raised or lowered by its environment variable (a number of bytes or FLOPs)."""
        return cls(
            *(
                env_count(name, default)
                for name, default in (
                    (MEMORY_ENV, DEFAULT_MEMORY),
                    (TRAFFIC_ENV, DEFAULT_TRAFFIC),
                    (FLOPS_ENV, DEFAULT_FLOPS),
                    (OUTPUT_ENV, DEFAULT_OUTPUT),
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


def _bytes(value: Any) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


def _broadcast(tensor: torch.Tensor) -> bool:
    """A view that repeats elements (a stride of 0 along an axis longer than 1): smaller in memory than it reads."""
    return any(stride == 0 and size > 1 for size, stride in zip(tensor.shape, tensor.stride()))


LENIENT = Op(lambda args, kwargs, out: sum(t.numel() for t in tensors(out)))


def _rule(func: Any, strict: bool) -> Op:
    """The operator's table entry (`encoders.ops`); without one, a program's operator is refused, never counted as
    free, and a library module's (`strict` off) counts one operation per output element."""
    key = op_key(func)
    rule = OPS.get(key)
    if rule is None:
        if strict:
            raise EncoderError(f"operator {key[:60]} has no cost formula in legokit's table, so it is not run")
        return LENIENT
    return rule


def _weighted(rule: Op, inputs: list[torch.Tensor], flops: int) -> int:
    """FLOPs counted against the cap: half precision products run many times slower on CPU (`CPU_SLOWDOWN`)."""
    if not rule.heavy:
        return flops
    slowdown = max((CPU_SLOWDOWN.get(t.dtype, 1) for t in inputs if t.device.type == "cpu"), default=1)
    return flops * slowdown


class _Meter(TorchDispatchMode):
    """Counts, per operator: FLOPs; the bytes of its tensor inputs and outputs (traffic); and, for operators that
    make new tensors (not views or in-place results), the bytes those hold while alive (their Python objects are
    dropped when the graph, or autograd, no longer needs them)."""

    supports_higher_order_operators = True

    def __init__(self, strict: bool = True) -> None:
        super().__init__()
        self.strict = strict
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
        rule = None
        if isinstance(func, HigherOrderOperator):
            self._bodies(func, args)
        else:
            rule = _rule(func, self.strict)
        out = func(*args, **kwargs)
        inputs, outputs = tensors((args, kwargs)), tensors(out)
        self.traffic += sum(_bytes(t) for t in inputs) + sum(_bytes(t) for t in outputs)
        if rule is not None:
            self.flops += _weighted(rule, inputs, int(rule.flops(args, kwargs, out)))
            # a broadcast operand may be copied whole while the operator runs, and its kernel may need scratch
            copied = sum(_bytes(t) for t in inputs if _broadcast(t)) if rule.heavy else 0
            scratch = int(rule.scratch(args, kwargs, out)) if rule.scratch is not None else 0
            self.peak = max(self.peak, self.live + copied + scratch)
        schema = op_schema(func)
        if schema is not None and any(r.alias_info is not None for r in schema.returns):
            return out
        for tensor in outputs:
            size = _bytes(tensor)
            self.live += size
            weakref.finalize(tensor, self._free, size)
        self.peak = max(self.peak, self.live)
        return out


def measure(graph: nn.Module, args: tuple[torch.Tensor, ...], grad: bool = False, strict: bool = True) -> Cost:
    """Run `graph` on fake copies of `args` and count what the real run would cost (see the module's docstring);
    `grad`: as in training, where autograd keeps what the backward pass needs; `strict`: a program, whose every
    operator must be in the table (off for a library's own module, as a Hugging Face model is before export)."""
    meter = _Meter(strict)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = tuple(mode.from_tensor(a) for a in args)
        with meter, torch.set_grad_enabled(grad):
            out = graph(*fake)
        output = sum(_bytes(t) for t in tensors(out))
        del out
    return Cost(meter.peak, meter.traffic, meter.flops, output)


def _measured(graph: nn.Module, args: tuple[torch.Tensor, ...], what: str, grad: bool, strict: bool = True) -> Cost:
    """`measure`, with its failures as one-line EncoderErrors: a program that cannot run on fake inputs of this
    shape will not run on real ones either (and must not get to try)."""
    try:
        return measure(graph, args, grad, strict)
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


def _too_large(cost: Cost, inputs: tuple[torch.Tensor, ...], caps: Caps) -> str | None:
    """Whether one sample's output outgrows its input beyond the cap: at most `OUTPUT_RATIO` times the input's bytes
    plus the floor (`LEGOKIT_MAX_PROGRAM_OUTPUT`); an encoder summarises its input, it does not inflate it."""
    given = sum(_bytes(t) for t in inputs)
    allowed = OUTPUT_RATIO * given + caps.output_bytes
    if cost.output_bytes <= allowed:
        return None
    return (
        f"one sample's output is {cost.output_bytes:,} bytes from {given:,} bytes of input (cap {allowed:,}: "
        f"{OUTPUT_RATIO} x the input + {caps.output_bytes:,}; {OUTPUT_ENV} raises it if you trust the program)"
    )


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
            first = tuple(a[:1] for a in args)
            cost = _measured(self.graph, first, self.what, grad)
            problem = _over(cost, self.caps, "one sample's forward pass") or _too_large(cost, first, self.caps)
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
    cost = _measured(graph, args, what, _grad(graph), strict=False)
    problem = _over(cost, caps or Caps.from_env(), "one run")
    if problem:
        raise EncoderError(f"{what}: {problem}")
    return cost
