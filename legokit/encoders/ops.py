"""The operators a block's program may call, each with its own cost formula: the one table that both the program
check (`artifacts.program_schema`, at wrap and at load) and the cost meter (`encoders.cost`, before each first run)
read. An operator that is not here is refused by name.

Every entry is a pure function of its inputs: no in-place or `out=` overload, no global state, no I/O, no printing,
no uninitialised memory. Operators that draw random numbers are marked `random` (the encoder cache never keeps what
they produce). The FLOPs formula is written from the operator's arguments and output (fake tensors: shapes only); a
broadcast input counts at its full size, since the operator reads every element of the view. Bytes held and moved
are counted by the meter for every operator alike; `heavy` operators (products, convolutions, pooling, attention,
distances) may also copy a broadcast input whole before they compute, which the meter adds to the memory held.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from legokit.torch_internals import op_schema, tree_flatten

Formula = Callable[[Sequence[Any], Mapping[str, Any], Any], int]

# CPU slowdown of half precision in products, convolutions and attention against float32 (2-core x86 machine,
# torch 2.13: float16 mm 2.9 vs 47 GFLOP/s, conv2d 0.6 vs 54; bfloat16 runs near float32 speed only where the
# processor has bf16 instructions): their FLOPs count this many times against the cap
CPU_SLOWDOWN = {torch.float16: 64, torch.bfloat16: 8}
# every operator's count is in float32 matrix-product FLOPs, the unit of the cap: each weight is what one unit of
# the operator's own work costs on CPU against a float32 mm (`OMP_NUM_THREADS=1 python -m benchmarks.op_costs`
# prints both; on this 2-core x86 machine an elementwise op over fresh memory measured 210-290 per element, a sum
# 15, logsumexp 310, a sort 470 per element and comparison, a pooling window 57-85, a float64 convolution 20 per
# FLOP, a depthwise one 1.5 at kernel 15 and ~100 at kernel 31, cdist 2.5 / 59 / 500 per pair and feature at
# p = 2 / 1 / 3.7, an FFT of a prime length 165 per n log2 n)
ELEMENT, TRANSCENDENTAL_ELEMENT, SUM, SMOOTH_SUM, SCAN, NORM = 256, 256, 16, 512, 256, 64
SORT_WEIGHT, WINDOW, CONV_SLOW, FOURIER_WEIGHT = 512, 128, 64, 256
DISTANCE_WEIGHT = {2.0: 4, 1.0: 64, 0.0: 64, math.inf: 64, -1.0: 512}  # -1: any other p


@dataclass(frozen=True)
class Op:
    """One allowed operator: its cost in FLOPs from (args, kwargs, out); `graph`: a program may call it by name
    (else only the meter sees it, inside another allowed operator); `random`: it draws random numbers; `heavy`: it
    may copy a broadcast input whole and runs slowly in half precision on CPU; `scratch`: bytes its kernel allocates
    for itself while it runs (an im2col buffer), which no output shows."""

    flops: Formula
    graph: bool = True
    random: bool = False
    heavy: bool = False
    scratch: Formula | None = None


def tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _numel(value: Any) -> int:
    return sum(t.numel() for t in tensors(value))


def _first(args: Sequence[Any], at: int = 0) -> torch.Tensor:
    found = [a for a in args if isinstance(a, torch.Tensor)]
    return found[at] if len(found) > at else torch.empty(0)


def _ints(value: Any, rank: int) -> list[int]:
    """A size argument (one int or a list) as `rank` ints."""
    if isinstance(value, int):
        return [value] * rank
    values = [int(v) for v in value] if isinstance(value, (list, tuple)) else []
    return values if len(values) == rank else ([values[0]] * rank if len(values) == 1 else [1] * rank)


# ---- formulas ----


def free(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    """Views, metadata and assertions: no arithmetic."""
    return 0


def per_output(weight: int) -> Formula:
    """`weight` operations per output element (copies, factories, elementwise arithmetic)."""
    return lambda args, kwargs, out: weight * _numel(out)


def per_input(weight: int) -> Formula:
    """`weight` operations per element of the largest input (reductions, normalisations, softmax)."""
    return lambda args, kwargs, out: weight * max((t.numel() for t in tensors((args, kwargs))), default=0)


def sorting(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    """n log n per sorted row, over the whole input."""
    x = _first(args)
    longest = max(x.shape, default=1)
    return SORT_WEIGHT * x.numel() * max(1, math.ceil(math.log2(longest + 1)))


def product(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    """Matrix products (mm, bmm, addmm, matmul, linear, ...): 2 x output elements x the contracted length, taken as
    the last axis of the first operand that is a matrix (the bias of addmm and baddbmm comes first)."""
    operands = tensors(args)
    matrices = [t for t in operands if t.dim() >= 2] or operands
    contracted = matrices[0].shape[-1] if matrices and matrices[0].dim() else 1
    if len(matrices) >= 3:  # addmm(bias, a, b), baddbmm(bias, a, b): the product is of the last two
        contracted = matrices[-2].shape[-1]
    return 2 * max(_numel(out), 1) * int(contracted)


def dot(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    return 2 * _first(args).numel()


def _conv_parts(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    x, weight = _first(args), _first(args, 1)
    transposed = bool(args[6]) if len(args) > 6 and isinstance(args[6], bool) else bool(kwargs.get("transposed"))
    return x, weight, transposed


def convolution(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    """2 x output elements x (input channels per group x kernel volume); transposed: x input elements instead. The
    output's size already reflects stride, padding and dilation. Grouped (depthwise) and float64 convolutions run
    far slower per FLOP on CPU (no fast kernel): x CONV_SLOW."""
    x, weight, transposed = _conv_parts(args, kwargs)
    if weight.dim() < 2:
        return 0
    per_window = int(weight.shape[1]) * math.prod(int(s) for s in weight.shape[2:])
    grouped = not transposed and x.dim() >= 2 and int(weight.shape[1]) != int(x.shape[1])
    slow = CONV_SLOW if grouped or x.dtype == torch.float64 else 2
    return slow * 2 * (x.numel() if transposed else _numel(out)) * per_window


def convolution_scratch(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    """The unfolded input (im2col) a convolution kernel may build: per output position, every input channel's
    kernel window."""
    x, weight, transposed = _conv_parts(args, kwargs)
    result = tensors(out)
    if weight.dim() < 3 or not result or x.dim() < 2:
        return 0
    grid = x if transposed else result[0]  # the positions the kernel is applied at, per channel
    positions = grid.numel() // max(int(grid.shape[1]), 1)
    return positions * int(x.shape[1]) * math.prod(int(s) for s in weight.shape[2:]) * x.element_size()


def pooling(rank: int) -> Formula:
    """Kernel volume x output elements (a max or mean over each window, whatever the stride or dilation)."""

    def formula(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
        kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size", 1)
        return WINDOW * math.prod(_ints(kernel, rank)) * _numel(tensors(out)[:1])

    return formula


def adaptive_pooling(rank: int) -> Formula:
    """Output elements x the largest window an adaptive pool uses (ceil(in / out) + 1 per axis)."""

    def formula(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
        x, result = _first(args), tensors(out)[:1]
        if not result or x.dim() < rank:
            return 0
        window = [math.ceil(int(i) / max(int(o), 1)) + 1 for i, o in zip(x.shape[-rank:], result[0].shape[-rank:])]
        return WINDOW * math.prod(window) * result[0].numel()

    return formula


def attention(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    """Scores and weighted sum: 2 x query elements x key length + 2 x value elements x query length."""
    q, k, v = (_first(args, i) for i in range(3))
    if min(q.dim(), k.dim(), v.dim()) < 2:
        return 0
    batch = math.prod(int(s) for s in torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]))
    keys, queries = int(k.shape[-2]), int(q.shape[-2])
    return 2 * batch * queries * keys * (int(q.shape[-1]) + int(v.shape[-1]))


def distance(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    """cdist: every pair of rows over the feature axis; p = 2 runs as a product, p = 1 elementwise, any other p
    through a power and a root per element (`DISTANCE_WEIGHT`)."""
    x = _first(args)
    p = args[2] if len(args) > 2 and isinstance(args[2], (int, float)) else kwargs.get("p", 2.0)
    weight = DISTANCE_WEIGHT.get(float(p), DISTANCE_WEIGHT[-1.0])
    return weight * _numel(out) * (int(x.shape[-1]) if x.dim() else 1)


def distance_scratch(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    """cdist copies both point sets to their broadcast batch before it compares them."""
    a, b = _first(args), _first(args, 1)
    if min(a.dim(), b.dim()) < 2:
        return 0
    batch = math.prod(int(s) for s in torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    return batch * (int(a.shape[-2]) + int(b.shape[-2])) * int(a.shape[-1]) * a.element_size()


def fourier(args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> int:
    """5 n log2 n over the larger of input and output."""
    n = max(_first(args).numel(), _numel(out), 2)
    return FOURIER_WEIGHT * n * math.ceil(math.log2(n))


# ---- the table ----

VIEWS = (
    "view reshape _reshape_alias _unsafe_view expand expand_as permute transpose t numpy_T unsqueeze squeeze slice "
    "select split split_with_sizes chunk unbind alias detach narrow flatten unflatten movedim view_as diagonal "
    "sym_size sym_numel sym_stride sym_storage_offset _assert_tensor_metadata _assert_scalar sym_constrain_range "
    "sym_constrain_range_for_size _assert_async lift_fresh"
)
COPIES = (
    "clone contiguous _to_copy to type_as cat stack hstack vstack constant_pad_nd pad repeat tile flip roll tril "
    "triu index_select gather index embedding take_along_dim zeros ones full arange zeros_like ones_like full_like "
    "new_zeros new_ones new_full scalar_tensor eye select_scatter slice_scatter diag_embed copy fill lift_fresh_copy "
    "masked_fill where _masked_scale zero select_copy slice_copy view_copy permute_copy unsqueeze_copy squeeze_copy "
    "expand_copy transpose_copy t_copy split_copy split_with_sizes_copy unbind_copy detach_copy alias_copy"
)
ARITHMETIC = (
    "add sub rsub mul div neg abs sign floor ceil round trunc frac clamp clamp_min clamp_max clip maximum minimum "
    "fmax fmin eq ne lt le gt ge logical_and logical_or logical_not logical_xor bitwise_and bitwise_or bitwise_not "
    "bitwise_xor __and__ __or__ __xor__ remainder fmod floor_divide isnan isinf isfinite nan_to_num "
    "square relu relu6 hardtanh threshold leaky_relu prelu _prelu_kernel hardsigmoid hardswish lerp addcmul addcdiv "
    "reciprocal positive"
)
TRANSCENDENTAL = (
    "exp exp2 expm1 log log2 log10 log1p pow sqrt rsqrt sin cos tan tanh sinh cosh asin acos atan atan2 asinh acosh "
    "atanh sigmoid gelu silu mish elu selu celu softplus erf erfc erfinv logit glu xlogy hypot _log_softmax "
    "_softmax log_softmax softmax _safe_softmax"
)
SUMS = "sum mean prod amax amin max min argmax argmin any all nansum"
SMOOTH_SUMS = "var std var_mean std_mean logsumexp norm linalg_vector_norm"
NORMS = (
    "layer_norm native_layer_norm group_norm native_group_norm batch_norm native_batch_norm "
    "_native_batch_norm_legit_no_training instance_norm rms_norm _fused_rms_norm"
)
PRODUCTS = "mm bmm addmm baddbmm matmul linear mv addmv outer"
CONVOLUTIONS = "convolution _convolution conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d"
ATTENTION = (
    "scaled_dot_product_attention _scaled_dot_product_flash_attention_for_cpu _scaled_dot_product_attention_math "
    "_scaled_dot_product_efficient_attention _scaled_dot_product_flash_attention _scaled_dot_product_cudnn_attention"
)
RANDOM = "dropout native_dropout feature_dropout alpha_dropout bernoulli rand randn rand_like randn_like randint_like"
FOURIER = "_fft_r2c _fft_c2r _fft_c2c fft_fft fft_ifft fft_rfft fft_irfft fft_fftn fft_ifftn fft_rfftn fft_irfftn"
# met only inside allowed operators (their own decompositions, fake-tensor bookkeeping, higher-order operators),
# never named by a graph (which may call none of them): uninitialised buffers filled at once, and in-place
# arithmetic on the fresh tensors of a decomposition (dropout's mask: empty_like, bernoulli_, div_)
INTERNAL = (
    "prim.device aten.empty aten.empty_like aten.empty_strided aten.fill_ aten.zero_ aten.copy_ aten.add_ aten.mul_ "
    "aten.div_ aten.sigmoid_ aten.tanh_ aten.unsafe_split"
)


def _table() -> dict[str, Op]:
    table: dict[str, Op] = {}

    def add(names: str, op: Op) -> None:
        table.update({f"aten.{name}": op for name in names.split()})

    add(VIEWS, Op(free))
    add(COPIES, Op(per_output(ELEMENT)))
    add(ARITHMETIC, Op(per_output(ELEMENT)))
    add(TRANSCENDENTAL, Op(per_output(TRANSCENDENTAL_ELEMENT)))
    add(SUMS, Op(per_input(SUM)))
    add(SMOOTH_SUMS, Op(per_input(SMOOTH_SUM)))
    add("cumsum cumprod", Op(per_input(SCAN)))
    add(NORMS, Op(per_input(NORM)))
    add("sort argsort topk", Op(sorting, heavy=True))
    add(PRODUCTS, Op(product, heavy=True))
    add("dot vdot", Op(dot, heavy=True))
    add(CONVOLUTIONS, Op(convolution, heavy=True, scratch=convolution_scratch))
    for rank in (1, 2, 3):
        add(f"max_pool{rank}d max_pool{rank}d_with_indices avg_pool{rank}d", Op(pooling(rank), heavy=True))
        add(
            f"adaptive_avg_pool{rank}d adaptive_max_pool{rank}d" + (f" _adaptive_avg_pool{rank}d" if rank > 1 else ""),
            Op(adaptive_pooling(rank), heavy=True),
        )
    add(ATTENTION, Op(attention, heavy=True, random=True))  # random with a dropout rate (the cache checks it)
    add("cdist _cdist_forward _euclidean_dist", Op(distance, heavy=True, scratch=distance_scratch))
    add(FOURIER, Op(fourier, heavy=True))
    add(RANDOM, Op(per_output(ELEMENT), random=True))
    table.update({name: Op(per_output(ELEMENT), graph=False) for name in INTERNAL.split()})
    table["aten.bernoulli_"] = Op(per_output(ELEMENT), graph=False, random=True)
    return table


OPS: Mapping[str, Op] = _table()


def op_key(func: Any) -> str:
    """`aten.add` for torch.ops.aten.add.Tensor: the table's key for an operator overload."""
    namespace, _, rest = func.name().partition("::")
    return f"{namespace}.{rest.split('.')[0]}"


def graph_op_problem(namespace: str, name: str, overload: str) -> str | None:
    """Why a program may not call torch.ops.<namespace>.<name>.<overload> (None: it may): only a real overload of a
    table entry, never one that writes to an argument (in-place, `out=`), random only when the table says so."""
    rule = OPS.get(f"{namespace}.{name}")
    if rule is None or not rule.graph:
        if name.endswith("_") and not name.endswith("__") and f"{namespace}.{name[:-1]}" in OPS:
            return "an in-place operator; a stored program is a pure function (wrap the encoder again with legokit)"
        return "an operator outside legokit's table of pure operators with a known cost"
    packet = getattr(getattr(torch.ops, namespace), name, None)
    if packet is None or overload not in packet.overloads():
        return "not an operator of this torch"
    func = getattr(packet, overload)
    schema = op_schema(func)
    if schema is None or any(
        a.is_out or (a.alias_info is not None and a.alias_info.is_write) for a in schema.arguments
    ):
        return "an in-place or out= overload (a program is a pure function; re-wrap with this legokit to store it so)"
    if torch.Tag.nondeterministic_seeded in func.tags and not rule.random:
        return "draws random numbers, which its table entry does not allow"
    return None


def in_place_problem(namespace: str, name: str, overload: str) -> str | None:
    """Why a user's program given to `wrap` may not call this in-place overload (None: it may): its pure twin
    (`masked_fill` for `masked_fill_`) must be a table entry, since wrap re-exports the program as a pure function
    and the stored program is checked by `graph_op_problem`. `out=` overloads stay refused."""
    twin = OPS.get(f"{namespace}.{name[:-1]}") if name.endswith("_") and not name.endswith("__") else None
    packet = getattr(getattr(torch.ops, namespace), name, None)
    if twin is None or not twin.graph or packet is None or overload not in packet.overloads():
        return "an in-place or out= overload of no pure operator in legokit's table"
    schema = op_schema(getattr(packet, overload))
    if schema is None or any(a.is_out for a in schema.arguments):
        return "an out= overload"
    return None
