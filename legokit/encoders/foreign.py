"""Foreign encoders kept as `torch.export` programs: made from any module, stored as bytes, pickle-free.

A program is a PT2 archive whose parts are JSON and raw tensor bytes only: `sanitize_program` drops the pickled
sample inputs and refuses pickled weights or constants, and `load_program` refuses any archive that is not so.
Every program follows the plain contract of `contract.EncoderCall`; `export_encoder` makes one from a module and
checks it at several batch sizes and token counts before legokit keeps it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from torch import nn

if TYPE_CHECKING:
    from torch.export import ExportedProgram

from legokit.artifacts.allowlist import (
    PROGRAM_JSON,
    SAMPLE_INPUTS,
    Beside,
    Records,
    program_records,
    refill_records,
    whole_tensor,
)
from legokit.encoders.contract import INPUT_DTYPES, Contract, EncoderCall, mask_keyword, pick_output
from legokit.encoders.cost import guard
from legokit.encoders.recurrent import exportable_copy
from legokit.errors import EncoderError, ShapeError
from legokit.torch_internals import (
    DTYPE_CODES,
    WEIGHTS_DIR,
    WRITER_RECORDS,
    op_schema,
    pt2_archive_writer,
    ts2ep_converter,
)


def _archive(records: Records, keep_samples: bool = False) -> bytes:
    """A fresh PT2 archive holding exactly the checked records (sample inputs emptied unless `keep_samples`),
    written by torch's writer."""
    out = io.BytesIO()
    writer = pt2_archive_writer(out)  # torch.export loads its compiler stack: imported on the first call
    for name, data in records.data.items():
        if name.startswith(WRITER_RECORDS):
            continue  # the writer adds its own version records
        writer.write_bytes(name, b"" if name == SAMPLE_INPUTS and not keep_samples else data)
    writer.close()
    return out.getvalue()


def tensor_layouts(tensors: Mapping[str, torch.Tensor]) -> Beside:
    """Each tensor's (serialized dtype code, shape), as `archive.program_records` compares them with a thin
    program's records (a tensor of a dtype a program cannot name is left out)."""
    return {name: (DTYPE_CODES[t.dtype], tuple(t.shape)) for name, t in tensors.items() if t.dtype in DTYPE_CODES}


def _raw(tensor: torch.Tensor) -> bytes:
    """A tensor's bytes in row-major order, as torch.export stores a weight record (little-endian)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def thin_program(program: bytes, state: Mapping[str, torch.Tensor]) -> bytes:
    """The program as a `.st` file stores it beside the encoder's state dict: every weight record that the state
    dict's tensors rebuild exactly is written empty, so that the weights are stored once.

    `state` maps the program's fqns (its weights config's keys) to tensors: the encoder module's state dict. A weight
    record is emptied when each tensor of the program that reads it is the whole record (contiguous, offset 0, its
    bytes the record's length) and has a tensor in `state` of its dtype and shape; tied weights (fqns that share one
    record) only when their tensors in `state` are equal. Views into shared storage and constants stay as they are.
    The JSON records are unchanged, so fqn -> record tells `fill_program` how to refill. Pure: `program` (a full
    program, or one already thin against `state`) is returned unchanged when nothing can be emptied."""
    layouts = tensor_layouts(state)
    records = program_records(program, strict=True, beside=layouts)
    table = json.loads(records.data[PROGRAM_JSON[1]])["config"]
    users: dict[str, list[str]] = {}
    for fqn, meta in table.items():
        users.setdefault(WEIGHTS_DIR + meta["path_name"], []).append(fqn)
    data = dict(records.data)
    emptied = False
    for record, fqns in users.items():
        size = len(data[record])
        wholes = [whole_tensor(table[fqn]["tensor_meta"], fqn) for fqn in fqns]
        if not size or any(w is None or layouts.get(fqn) != w for fqn, w in zip(fqns, wholes)):
            continue  # already empty, or a view, or a tensor the state dict does not hold as it is
        first = state[fqns[0]]
        if first.numel() * first.element_size() != size:
            continue  # tied tensors of different sizes in one record
        if any(not torch.equal(first.detach().cpu(), state[fqn].detach().cpu()) for fqn in fqns[1:]):
            continue  # tied weights trained apart: the record keeps its bytes
        data[record] = b""
        emptied = True
    return _archive(Records(data)) if emptied else program


def fill_program(thin: bytes, tensors: Mapping[str, torch.Tensor], what: str = "the encoder program") -> bytes:
    """A thin program made whole again from the tensors stored beside it (the inverse of `thin_program`).

    `tensors` maps fqns to the file's tensors (the block's `encoder.graph.<fqn>`). Each empty weight record is filled
    from the tensor of the fqn that covers it whole, after its dtype and shape are checked against the record's
    tensor_meta (so the bytes are exactly the record's length, and no size from the program is ever allocated: the
    tensors are already in the file). An empty record with no such tensor is a one-line EncoderError naming it. A
    full program (no empty weight record) is returned unchanged. The result has not passed the allowlist yet:
    `load_program` checks it whole, as any program, before torch sees it."""
    refill = refill_records(thin, tensor_layouts(tensors), what)
    if refill is None:
        return thin
    data = dict(refill.data)
    for record, fqn in refill.plan.items():
        data[record] = _raw(tensors[fqn])
    return _archive(Records(data), keep_samples=True)


def sanitize_program(program: bytes, in_place: bool = False) -> bytes:
    """Rebuild a user's PT2 archive from the records that pass the allowlist (`archive.program_records`), with its
    pickled sample inputs emptied: loading the result unpickles nothing. `in_place`: a user's program on its way to
    `functional` (it may write into its own tensors)."""
    return _archive(program_records(program, strict=False, what="the exported program", in_place=in_place))


def functional(program: ExportedProgram) -> ExportedProgram:
    """The program with its in-place operators replaced by their pure twins (torch's functionalization, keeping
    every other operator as it is): what a block stores, so that a stored program never writes to a tensor. A
    program without one is returned as it is."""
    if not any(node.op == "call_function" and _writes(node.target) for node in program.graph.nodes):
        return program
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return program.run_decompositions({})
    except Exception as exc:  # noqa: BLE001 - torch's functionalization raises many types
        raise EncoderError(f"the program cannot be made a pure function ({_first_line(exc)[:120]})") from exc


def _writes(target: Any) -> bool:
    """Whether an operator writes into one of its arguments (an in-place or out= overload)."""
    schema = op_schema(target)
    return schema is not None and any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)


def load_program(program: bytes, in_place: bool = False) -> ExportedProgram:
    """Deserialize a program that passes the strict allowlist; anything else (corrupt bytes, pickled parts, extra
    records) is an EncoderError, raised before torch's loader sees a byte. Torch reads an archive rebuilt from the
    checked records, so no difference between two zip readers can smuggle unchecked bytes in. `in_place`: a user's
    program that `wrap` passes through `functional` before it runs."""
    import torch.export  # loaded when a program is first read, not when legokit is imported

    rebuilt = _archive(program_records(program, strict=True, in_place=in_place))
    quiet = logging.getLogger("torch.export")
    level = quiet.level
    try:
        # torch's deserializer warns and logs its own failures at length; legokit says one line instead
        quiet.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(io.BytesIO(rebuilt))  # checked: rebuilt from allowlisted records
    # a corrupt archive can fail anywhere inside torch's deserializer, with any exception type
    except Exception as exc:  # noqa: BLE001
        raise EncoderError(f"the stored encoder program cannot be read ({type(exc).__name__})") from exc
    finally:
        quiet.setLevel(level)


def _rebuilt(program: bytes | ExportedProgram, what: str) -> nn.Module:
    """A program's module (not yet guarded)."""
    loaded = load_program(program) if isinstance(program, bytes) else program
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return loaded.module()
    # torch checks a program's invariants here with asserts and other exception types
    except Exception as exc:  # noqa: BLE001
        raise EncoderError(f"{what} cannot be rebuilt ({type(exc).__name__}: {_first_line(exc)[:120]})") from exc


def program_module(program: bytes | ExportedProgram, what: str = "the encoder program") -> nn.Module:
    """A program's module, ready to run: its cost is checked before it first runs at each input shape
    (`cost.guard`)."""
    module = _rebuilt(program, what)
    guard(module, what)
    return module


def program_sha256(program: bytes) -> str:
    return hashlib.sha256(program).hexdigest()


def example_input(
    input_shape: tuple[int | None, ...], batch: int = 2, tokens: int = 3, dtype: str = "float32"
) -> torch.Tensor:
    """A zero input of the given per-sample shape, with `tokens` for each variable (None) dimension."""
    return torch.zeros(batch, *(tokens if d is None else d for d in input_shape), dtype=INPUT_DTYPES[dtype])


def random_input(
    input_shape: tuple[int | None, ...], batch: int, tokens: int, dtype: str, generator: torch.Generator
) -> torch.Tensor:
    """A random input for checks: normal floats, or token ids 0/1 (valid for any vocabulary)."""
    size = (batch, *(tokens if d is None else d for d in input_shape))
    if dtype == "int64":
        return torch.randint(0, 2, size, generator=generator)
    return torch.randn(size, generator=generator)


def padding_mask(batch: int, tokens: int) -> torch.Tensor:
    """A (batch, tokens) mask with real tokens first: the first sample full, the others shorter (at least one)."""
    lengths = torch.tensor([tokens] + [max(1, tokens // (i + 2)) for i in range(batch - 1)])
    return torch.arange(tokens) < lengths[:, None]


def variable(input_shape: tuple[int | None, ...]) -> bool:
    """True when the input has a variable token axis, so that a padding mask applies."""
    return any(d is None for d in input_shape)


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return " ".join(text.splitlines()[0].split())[:240] if text else type(exc).__name__


def _shape(input_shape: tuple[int | None, ...]) -> str:
    return ", ".join("n" if d is None else str(d) for d in input_shape)


def probe_contract(
    module: nn.Module,
    input_shape: tuple[int | None, ...],
    input_dtype: str | None = None,
    mask: str | None = "auto",
    output: str | int | None = None,
    layout: str | None = None,
) -> Contract:
    """Decide how to call a live module, from its signature and forward passes: the input dtype (token ids when
    float inputs fail), its padding-mask keyword, which output tensor to read, and its output layout."""
    keyword = (mask_keyword(module) if mask == "auto" else mask) if variable(input_shape) else None
    failure: BaseException | None = None
    for dtype in [input_dtype] if input_dtype else ["float32", "int64"]:
        try:
            with torch.no_grad():
                out = EncoderCall(module, Contract(dtype, keyword)).raw(example_input(input_shape, dtype=dtype))
            break
        except Exception as exc:  # noqa: BLE001 - a user's module can raise anything on an input it does not take
            failure = failure or exc
    else:
        raise EncoderError(
            f"the encoder fails on an input of shape (batch, {_shape(input_shape)}): {_first_line(failure)}"
        )
    tensor, selector = pick_output(out, output)
    if not tensor.is_floating_point():
        raise EncoderError(f"the encoder returns {tensor.dtype} values; legokit reads real-valued (float) features")
    channels = (
        tensor.dim() == 3 and variable(input_shape) and _tracks_last_axis(module, input_shape, dtype, keyword, selector)
    )
    if layout is None:
        layout = "map" if tensor.dim() == 4 else "channels" if channels else "tokens"
    elif layout == "channels" and tensor.dim() == 3 and variable(input_shape) and not channels:
        raise EncoderError(
            f"--layout channels: the output {tuple(tensor.shape)} does not have the token count on its "
            "last axis; it reads as (b, n, e) tokens"
        )
    expected = {"tokens": (2, 3), "channels": (3,), "map": (4,)}[layout]
    if tensor.dim() not in expected:
        raise EncoderError(
            f"the encoder's output has shape {tuple(tensor.shape)}; legokit reads (b, e) or (b, n, e) "
            "tokens, (b, c, t) conv maps (--layout channels) or (b, c, h, w) feature maps (--layout map)"
        )
    return Contract(dtype, keyword, selector, layout)


def _tracks_last_axis(
    module: nn.Module, input_shape: tuple[int | None, ...], dtype: str, keyword: str | None, selector: str | int | None
) -> bool:
    """True for a (b, c, t) conv map: its last axis, not its second, follows the number of input tokens."""
    call = EncoderCall(module, Contract(dtype, keyword, selector, "tokens"))
    with torch.no_grad():
        short, long = (
            _run_or_refuse(
                call,
                (example_input(input_shape, tokens=t, dtype=dtype),),
                f"the encoder fails with {t} tokens",
                FIXED_SHAPE_HINT,
            )
            for t in (4, 9)
        )
    return short.shape[1] == long.shape[1] and short.shape[2] != long.shape[2]


def _export_error(exc: BaseException) -> EncoderError:
    """torch.export's failure as one line; a specialised dimension is named, with what to do about it."""
    text = str(exc)
    fixed = re.findall(r"size\(\)\[(\d+)\]\) as dynamic but your code specialized it to be a constant \((\d+)\)", text)
    fixed += re.findall(r"size\(\)\[(\d+)\] as dynamic but your code specialized it to be a constant \((\d+)\)", text)
    if fixed:
        names = ", ".join(f"{'the batch' if d == '0' else f'input dimension {d}'} (fixed at {n})" for d, n in fixed)
        return EncoderError(
            f"torch.export could not keep {names} dynamic: your code specialized it to be a constant. "
            "Remove shape-dependent Python code there, or export the encoder yourself with "
            "dynamic_shapes and wrap the .pt2"
        )
    return EncoderError(f"torch.export could not trace the encoder: {_first_line(exc)}")


def export_encoder(module: nn.Module, input_shape: tuple[int | None, ...], contract: Contract) -> bytes:
    """Export a user's module behind the plain contract, with a dynamic batch and token axis (recurrent layers
    made exportable first), then check the program against the module at several batch sizes and lengths."""
    module = module.cpu()
    exportable, _ = exportable_copy(module)
    call = EncoderCall(exportable, contract)
    x = example_input(input_shape, dtype=contract.input_dtype)
    from torch.export import Dim

    dims: dict[int, object] = {0: Dim.DYNAMIC, **{i + 1: Dim.DYNAMIC for i, d in enumerate(input_shape) if d is None}}
    args: tuple[torch.Tensor, ...] = (x,)
    shapes: tuple[dict[int, object], ...] = (dims,)
    if contract.mask_keyword is not None:
        args, shapes = (x, torch.ones(x.shape[:2], dtype=torch.bool)), (dims, {0: Dim.DYNAMIC, 1: Dim.DYNAMIC})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(call, args, dynamic_shapes=shapes)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; the user needs one clear line
        raise _export_error(exc) from exc
    program = functional(program)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    clean = sanitize_program(buffer.getvalue())
    check_program(program_module(clean), EncoderCall(module, contract), input_shape, contract)
    return clean


CHECK_BATCHES = (1, 3)
CHECK_TOKENS = (1, 5, 17)


def check_program(
    graph: nn.Module,
    reference: nn.Module,
    input_shape: tuple[int | None, ...],
    contract: Contract,
    tolerance: float = 1e-4,
) -> None:
    """Run an exported encoder at batch sizes 1 and 3 and token counts 1, 5 and 17 beside the module it came from;
    a failure or a different result is refused with the shape that shows it."""
    generator = torch.Generator().manual_seed(0)
    counts = CHECK_TOKENS if variable(input_shape) else (1,)
    for batch in CHECK_BATCHES:
        for tokens in counts:
            x = random_input(input_shape, batch, tokens, contract.input_dtype, generator)
            args = (x,) if contract.mask_keyword is None else (x, padding_mask(batch, tokens))
            where = f"batch size {batch}" + (f" with {tokens} tokens" if variable(input_shape) else "")
            with torch.no_grad():
                want = _run_or_refuse(reference, args, f"the encoder fails at {where}", FIXED_SHAPE_HINT)
                got = _run_or_refuse(graph, args, f"the exported encoder fails at {where}", "")
            if len(args) == 2 and got.dim() == 3 and got.shape == want.shape and got.shape[1] == tokens:
                got, want = got[args[1]], want[args[1]]  # padded positions are free to differ (nested-tensor paths)
            if got.shape != want.shape or not torch.allclose(got, want, rtol=tolerance, atol=tolerance, equal_nan=True):
                raise EncoderError(
                    f"the exported encoder differs from the module at {where}: it depends on Python "
                    "code that torch.export fixed at the example shape"
                )


FIXED_SHAPE_HINT = (
    "; it only runs at the shape it was exported or scripted with. Export it with "
    "dynamic_shapes (batch and token axes Dim.DYNAMIC), or wrap the module or a state dict instead"
)


def _run_or_refuse(module: nn.Module, args: tuple[torch.Tensor, ...], what: str, hint: str) -> torch.Tensor:
    try:
        return module(*args)
    except Exception as exc:  # noqa: BLE001 - a module or program fails with many types outside its shapes
        raise EncoderError(f"{what}: {_first_line(exc)}{hint}") from exc


def program_input_shape(program: ExportedProgram) -> tuple[int | None, ...] | None:
    """Per-sample input shape read off a program's first user input; dynamic dimensions become None."""
    user_inputs = program.graph_signature.user_inputs
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta.get("val")
            if value is None:
                return None
            return tuple(d if isinstance(d, int) else None for d in value.shape[1:])
    return None


def program_from_torchscript(scripted: torch.jit.ScriptModule, input_shape: tuple[int | None, ...]) -> nn.Module:
    """A TorchScript module as an exported program's module (TorchScript itself is deprecated upstream)."""
    converter = ts2ep_converter()  # the compiler stack: imported on the first call
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return converter(scripted, (example_input(input_shape),)).convert().module()
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        raise EncoderError(
            f"the TorchScript module could not be converted to torch.export: {_first_line(exc)}"
        ) from exc


def _unpadded_groups(lengths: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(length, row indices) for each distinct non-zero length: samples that can run together with no padding."""
    return [(int(n), (lengths == n).nonzero().flatten()) for n in torch.unique(lengths).tolist() if n > 0]


class ExportedEncoder(nn.Module):
    """A foreign encoder rebuilt from program bytes alone: no user class, no pickle, parameters trainable.

    A sample's tokens never depend on its batch: an encoder that takes a padding mask gets it, and one that does not
    runs on groups of equally long samples with no padding at all. Samples with no token (a missing modality) are
    not run. An exported graph fixes its train/eval behaviour (dropout, batch-norm) when it is exported, so
    `train()` here changes no layer inside it.
    """

    token_input = None

    def __init__(self, program: bytes, out_dim: int, takes_mask: bool = False):
        super().__init__()
        self.program = program
        self.out_dim = out_dim
        self.takes_mask = takes_mask
        self.graph = _rebuilt(program, "the encoder program")
        self.cost = guard(self.graph, "the encoder program")

    def train(self, mode: bool = True) -> ExportedEncoder:
        self.training = mode
        return self

    def _tokens(self, out: Any, samples: int) -> torch.Tensor:
        """The program's output when it is what an encoder returns: one tensor (b, e) or (b, n, e) of `out_dim`
        real numbers per token; a tuple, a dict or another shape is a one-line EncoderError."""
        if not isinstance(out, torch.Tensor):
            raise EncoderError(f"the encoder program returns a {type(out).__name__}, not one tensor of tokens")
        if out.dim() not in (2, 3) or out.shape[0] != samples or out.shape[-1] != self.out_dim or out.is_complex():
            raise EncoderError(
                f"the encoder program returns {str(out.dtype).replace('torch.', '')} of shape "
                f"{tuple(out.shape)[:6]} for {samples} samples; expected (batch, {self.out_dim}) or "
                f"(batch, tokens, {self.out_dim}) real numbers"
            )
        return out

    def _run(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = self(x, mask)
        return rearrange(out, "b e -> b 1 e") if out.dim() == 2 else out

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The program's own output, (b, e) or (b, n, e), for one unpadded batch (a mask only if it takes one)."""
        args = (
            (x,)
            if not self.takes_mask
            else (x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask)
        )
        try:
            step = self.cost.chunk(args)
            if x.shape[0] <= step:
                return self._tokens(self.graph(*args), x.shape[0])
            # a batch over the cost caps runs in chunks that fit: an encoder's samples are independent
            return torch.cat(
                [
                    self._tokens(self.graph(*(a[start : start + step] for a in args)), min(step, x.shape[0] - start))
                    for start in range(0, x.shape[0], step)
                ]
            )
        except EncoderError:
            raise
        # a program from a file can fail inside any operator, with any type (an allocation, a shape, an assertion)
        except Exception as exc:  # noqa: BLE001
            raise EncoderError(
                f"the encoder program failed on a batch of shape {tuple(x.shape)}: {_first_line(exc)}"
            ) from exc

    def encode_tokens(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens (b, n, e) and their mask (None when every token is real)."""
        if mask is None:
            return self._run(x, None), None
        lengths = mask.sum(dim=1)
        if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device) < lengths[:, None]):
            raise ShapeError("a foreign encoder's padding must come after each sample's real tokens")
        if self.takes_mask:
            rows = (lengths > 0).nonzero().flatten()
            groups = [(int(lengths.max()), rows)] if len(rows) else []
        else:
            groups = _unpadded_groups(lengths)
        outputs = []
        for n, index in groups:
            out = self._run(x[index, :n], mask[index, :n])
            # a sequence-to-sequence encoder given a mask keeps it; any other output's tokens are all real
            real = (
                mask[index, :n]
                if self.takes_mask and out.shape[1] == n
                else torch.ones(out.shape[:2], dtype=torch.bool, device=x.device)
            )
            outputs.append((index, out, real))
        width = max((out.shape[1] for _, out, _ in outputs), default=1)
        tokens = torch.zeros(x.shape[0], width, self.out_dim, device=x.device)
        token_mask = torch.zeros(x.shape[0], width, dtype=torch.bool, device=x.device)
        for index, out, real in outputs:
            tokens[index, : out.shape[1]] = out.float()
            token_mask[index, : out.shape[1]] = real
        return tokens, token_mask
