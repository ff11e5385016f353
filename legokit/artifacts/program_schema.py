"""The closed schema of the torch.export program JSON that legokit reads, and the canonical JSON torch is given.

torch's deserializer interprets strings from a program as code in several places: shape expressions go to sympy's
`sympify` (which evaluates Python), pytree specs name types to import, node targets are attribute paths resolved
on modules, node names become Python source. So legokit walks the whole JSON against the schema below (unknown
fields, union members and operators are refused), checks every string by its role (identifier, dotted name,
operator, shape expression via `symexpr`, ...), drops what only serves debugging (node metadata, stack traces,
guard code that legokit never runs), and writes the JSON again from the checked values. Torch's deserializer only
ever reads that re-written JSON.
"""

from __future__ import annotations

import json
import keyword
import math
from collections.abc import Callable, Mapping
from typing import Any

from legokit.artifacts.symexpr import ExprError, parse_expr, symbol_name
from legokit.encoders.ops import graph_op_problem, in_place_problem
from legokit.errors import EncoderError
from legokit.io.jsoncap import capped_json
from legokit.torch_internals import (
    LAYOUT_CODES,
    MEMORY_FORMAT_CODES,
    PROGRAM_JSON,
    SCALAR_TYPE_CODES,
)

MAX_NAME = 256
INT64 = (-(2**63), 2**63)

# operators a program's graph may call, by their serialized names: aten operators from legokit's table of pure
# operators with a cost formula (`encoders.ops`), the higher-order operators whose subgraphs the cost check counts
# (encoders.cost._Meter._bodies), and Python's operators and size helpers one by one (a bare `_operator.` prefix
# would let a graph reach attrgetter/methodcaller and walk into any module).
HIGHER_ORDER = frozenset({"cond", "scan", "wrap_with_set_grad_enabled", "wrap_with_autocast"})
PYTHON_OPS = frozenset(
    {
        *(
            f"_operator.{name}"
            for name in (
                "getitem",
                "add",
                "sub",
                "mul",
                "floordiv",
                "truediv",
                "mod",
                "neg",
                "pos",
                "abs",
                "eq",
                "ne",
                "lt",
                "le",
                "gt",
                "ge",
                "and_",
                "or_",
                "not_",
                "pow",
            )
        ),
        *(f"math.{name}" for name in ("floor", "ceil", "trunc", "sqrt")),
        *(
            f"torch.{name}"
            for name in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sqrt", "sym_sum")
        ),
    }
)

DEVICES = frozenset({"cpu", "cuda", "meta"})
VERIFIERS = frozenset({"", "ATEN", "TRAINING"})
FLOAT_WORDS = frozenset({"Infinity", "-Infinity", "NaN"})
TREE_TYPES = frozenset({"builtins.tuple", "builtins.list", "builtins.dict"})


class Walk:
    """One walk over a program's JSON: the symbols it declares, and where it is (for the error message);
    `in_place`: a user's program on its way to being re-exported as a pure function (see `operator`)."""

    def __init__(self, what: str, declared: set[str], in_place: bool = False):
        self.what, self.declared, self.in_place = what, declared, in_place

    def fail(self, where: str, problem: str) -> EncoderError:
        return EncoderError(f"{self.what}: {where}: {problem}")


Check = Callable[[Walk, Any, str], Any]


# ---- leaves: each returns the value to write back, or raises ----


def integer(walk: Walk, value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not INT64[0] <= value < INT64[1]:
        raise walk.fail(where, "expected a 64-bit integer")
    return value


def optional_integer(walk: Walk, value: Any, where: str) -> int | None:
    return None if value is None else integer(walk, value, where)


def boolean(walk: Walk, value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise walk.fail(where, "expected true or false")
    return value


def optional_boolean(walk: Walk, value: Any, where: str) -> bool | None:
    return None if value is None else boolean(walk, value, where)


def number(walk: Walk, value: Any, where: str) -> float | int | str:
    """A float as torch writes it: a JSON number, or one of the words it uses for infinities and NaN."""
    if isinstance(value, str) and value in FLOAT_WORDS:
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise walk.fail(where, "expected a number")
    if isinstance(value, int):
        integer(walk, value, where)
    return value


def one_of(allowed: frozenset) -> Check:
    def check(walk: Walk, value: Any, where: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value not in allowed:
            raise walk.fail(where, f"{str(value)[:40]!r} is not one legokit reads")
        return value

    return check


def identifier(walk: Walk, value: Any, where: str) -> str:
    """A Python identifier (node and value names become generated source): ASCII, no keyword, no dunder."""
    if not (
        isinstance(value, str)
        and value.isascii()
        and value.isidentifier()
        and len(value) <= MAX_NAME
        and not keyword.iskeyword(value)
        and not value.startswith("__")
    ):
        raise walk.fail(where, f"{str(value)[:40]!r} is not a plain identifier")
    return value


def argument_name(walk: Walk, value: Any, where: str) -> str:
    """An operator schema's argument name (empty for some positional arguments)."""
    return value if value == "" else identifier(walk, value, where)


def dotted(walk: Walk, value: Any, where: str) -> str:
    """A module path such as `module.layers.0.weight` (empty for the root): identifiers or indices, no dunder."""
    if not isinstance(value, str) or len(value) > MAX_NAME or not value.isascii():
        raise walk.fail(where, "expected a dotted module path")
    for part in value.split(".") if value else ():
        if not (part.isdigit() or (part.isidentifier() and not part.startswith("__"))):
            raise walk.fail(where, f"{value[:60]!r} is not a dotted module path")
    return value


def text_argument(walk: Walk, value: Any, where: str) -> str:
    """A string argument of an operator (a mode such as 'tanh', an assertion's message): printable ASCII, short.
    It reaches generated code only through repr(), and the operator itself checks its meaning."""
    if not isinstance(value, str) or len(value) > 256 or not value.isascii() or not value.isprintable():
        raise walk.fail(where, f"string argument {str(value)[:40]!r} is not short printable text")
    return value


def version_text(walk: Walk, value: Any, where: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) > 64
        or not all(c.isascii() and (c.isalnum() or c in ".+-_<=") for c in value)
    ):
        raise walk.fail(where, "not a version string")
    return value


def expression(walk: Walk, value: Any, where: str) -> str:
    """A shape expression, parsed by `symexpr` and printed again by it."""
    try:
        return parse_expr(value, walk.declared).text()  # checked: legokit's own grammar, no eval
    except ExprError as exc:
        raise walk.fail(where, f"shape expression refused ({exc})") from exc


def operator(walk: Walk, value: Any, where: str) -> str:
    """A node's target: an overload of an operator in legokit's table (`encoders.ops.graph_op_problem`), an allowed
    higher-order operator, or a listed Python operator. A user's program given to `wrap` (`walk.in_place`) may also
    write into its own tensors: wrap re-exports it as a pure function before storing it, and the stored program
    passes the strict check."""
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise walk.fail(where, "an operator must be a name")
    if value in PYTHON_OPS:
        return value
    parts = value.split(".")
    if len(parts) == 4 and parts[:3] == ["torch", "ops", "higher_order"] and parts[3] in HIGHER_ORDER:
        return value
    problem = "not an operator legokit reads"
    if len(parts) == 5 and parts[:3] == ["torch", "ops", "aten"] and all(p.isidentifier() for p in parts[3:]):
        in_place = walk.in_place and parts[3].endswith("_") and not parts[3].endswith("__")
        problem = (in_place_problem if in_place else graph_op_problem)(*parts[2:]) or ""
        if not problem:
            return value
    raise walk.fail(where, f"the program calls {value[:80]}, which legokit does not allow: {problem}")


def tree_spec(walk: Walk, value: Any, where: str) -> str:
    """A pytree spec (JSON in a string) of tuples, lists, dicts with identifier keys, and leaves; written again."""
    if not isinstance(value, str) or len(value) > 65536:
        raise walk.fail(where, "a pytree spec must be JSON text of at most 64 KiB")
    try:
        protocol, root = capped_json(value, ValueError)
    except (ValueError, TypeError) as exc:
        raise walk.fail(where, "a pytree spec that is not JSON, or nested too deeply") from exc
    if protocol != 1:
        raise walk.fail(where, "a pytree spec of another protocol")
    return json.dumps([1, _tree_node(walk, root, where, 0)])


def _tree_node(walk: Walk, node: Any, where: str, depth: int) -> dict[str, Any]:
    if depth > 16 or not isinstance(node, dict) or set(node) != {"type", "context", "children_spec"}:
        raise walk.fail(where, "a pytree spec legokit does not read")
    children = node["children_spec"]
    if not isinstance(children, list) or len(children) > 4096:
        raise walk.fail(where, "a pytree spec legokit does not read")
    kind = node["type"]
    if kind is None:
        if node["context"] is not None or children:
            raise walk.fail(where, "a pytree leaf with a context")
        return {"type": None, "context": None, "children_spec": []}
    if kind not in TREE_TYPES:
        raise walk.fail(where, f"a pytree of {str(kind)[:40]!r}, which legokit does not read")
    if kind == "builtins.dict":
        try:
            keys = capped_json(node["context"], ValueError) if isinstance(node["context"], str) else None
        except ValueError as exc:
            raise walk.fail(where, "a pytree dict without its keys") from exc
        if not isinstance(keys, list) or len(keys) != len(children):
            raise walk.fail(where, "a pytree dict without its keys")
        context = json.dumps([identifier(walk, key, where) for key in keys])
    elif node["context"] != "null":
        raise walk.fail(where, "a pytree sequence with a context")
    else:
        context = "null"
    return {
        "type": kind,
        "context": context,
        "children_spec": [_tree_node(walk, c, where, depth + 1) for c in children],
    }


def empty(kind: type) -> Check:
    """A field legokit does not use; accepted only when empty, and written back empty."""

    def check(walk: Walk, value: Any, where: str) -> Any:
        if value not in (None, kind()):
            raise walk.fail(where, "must be empty in a program legokit reads")
        return kind()

    return check


def dropped(kind: type) -> Check:
    """A field that only serves debugging (stack traces, module stacks, guard code legokit never runs): checked
    for its type and written back empty, so torch reads none of its text."""

    def check(walk: Walk, value: Any, where: str) -> Any:
        if value is not None and not isinstance(value, kind):
            raise walk.fail(where, f"expected a {kind.__name__}")
        return kind()

    return check


# ---- containers ----


def list_of(item: Check, limit: int = 1 << 20) -> Check:
    def check(walk: Walk, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list) or len(value) > limit:
            raise walk.fail(where, "expected a list")
        return [item(walk, v, f"{where}[{i}]") for i, v in enumerate(value)]

    return check


def maybe(rule: Check) -> Check:
    """`rule`, or null."""
    return lambda walk, value, where: None if value is None else rule(walk, value, where)


def map_of(key: Check, item: Check) -> Check:
    def check(walk: Walk, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise walk.fail(where, "expected an object")
        return {key(walk, k, where): item(walk, v, f"{where}.{str(k)[:40]}") for k, v in value.items()}

    return check


def record(name: str, required: Mapping[str, Check | str], optional: Mapping[str, Check | str] | None = None) -> Check:
    """An object with exactly these fields (optional ones may be absent); another field is refused."""

    def check(walk: Walk, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise walk.fail(where, f"expected a {name} object")
        extra = set(value) - set(required) - set(optional or {})
        missing = set(required) - set(value)
        if extra or missing:
            field = sorted(extra or missing)[0]
            raise walk.fail(where, f"{name} field {field[:40]!r} is {'not one legokit reads' if extra else 'missing'}")
        out = {}
        for field, rule in [*required.items(), *(optional or {}).items()]:
            if field in value:
                out[field] = _rule(rule)(walk, value[field], f"{where}.{field}")
        return out

    return check


def union(name: str, members: Mapping[str, Check | str]) -> Check:
    """An object with exactly one member, one of those listed."""

    def check(walk: Walk, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict) or len(value) != 1:
            raise walk.fail(where, f"expected one {name} member")
        ((member, inner),) = value.items()
        if member not in members:
            raise walk.fail(where, f"{name} member {str(member)[:40]!r} is not one legokit reads")
        return {member: _rule(members[member])(walk, inner, f"{where}.{member}")}

    return check


SCHEMA: dict[str, Check] = {}


def _rule(rule: Check | str) -> Check:
    """A rule, or the name of a schema entry (looked up when used, so that graphs can nest graphs)."""
    if isinstance(rule, str):
        return lambda walk, value, where: SCHEMA[rule](walk, value, where)
    return rule


def _define() -> None:
    sym_expr = record(
        "SymExpr",
        {"expr_str": expression},
        {"hint": maybe(union("SymExprHint", {"as_int": integer, "as_bool": boolean, "as_float": number}))},
    )
    SCHEMA["SymInt"] = union("SymInt", {"as_expr": sym_expr, "as_int": integer})
    SCHEMA["SymBool"] = union("SymBool", {"as_expr": sym_expr, "as_bool": boolean})
    SCHEMA["SymFloat"] = union("SymFloat", {"as_expr": sym_expr, "as_float": number})
    device = record("Device", {"type": one_of(DEVICES)}, {"index": optional_integer})
    SCHEMA["TensorMeta"] = record(
        "TensorMeta",
        {
            "dtype": one_of(SCALAR_TYPE_CODES),
            "sizes": list_of(_rule("SymInt"), 64),
            "requires_grad": boolean,
            "device": device,
            "strides": list_of(_rule("SymInt"), 64),
            "storage_offset": "SymInt",
            "layout": one_of(LAYOUT_CODES),
        },
    )
    tensor = record("TensorArgument", {"name": identifier})
    optional_tensor = union("OptionalTensorArgument", {"as_tensor": tensor, "as_none": boolean})
    named = {"as_name": identifier}
    SCHEMA["Argument"] = union(
        "Argument",
        {
            "as_none": boolean,
            "as_tensor": tensor,
            "as_tensors": list_of(tensor),
            "as_int": integer,
            "as_ints": list_of(integer),
            "as_float": number,
            "as_floats": list_of(number),
            "as_string": text_argument,
            "as_strings": list_of(text_argument),
            "as_sym_int": union("SymIntArgument", {**named, "as_int": integer}),
            "as_sym_ints": list_of(union("SymIntArgument", {**named, "as_int": integer})),
            "as_scalar_type": one_of(SCALAR_TYPE_CODES),
            "as_memory_format": one_of(MEMORY_FORMAT_CODES),
            "as_layout": one_of(LAYOUT_CODES),
            "as_device": device,
            "as_bool": boolean,
            "as_bools": list_of(boolean),
            "as_sym_bool": union("SymBoolArgument", {**named, "as_bool": boolean}),
            "as_sym_bools": list_of(union("SymBoolArgument", {**named, "as_bool": boolean})),
            "as_graph": record("GraphArgument", {"name": identifier, "graph": "Graph"}),
            "as_optional_tensors": list_of(optional_tensor),
            "as_optional_tensor": optional_tensor,
            "as_sym_float": union("SymFloatArgument", {**named, "as_float": number}),
            "as_sym_floats": list_of(union("SymFloatArgument", {**named, "as_float": number})),
            "as_complex": record("ComplexValue", {"real": number, "imag": number}),
            "as_int_lists": list_of(list_of(integer)),
            "as_float_lists": list_of(list_of(number)),
            "as_nested_tensors": list_of(list_of(tensor)),
        },
    )
    node = record(
        "Node",
        {
            "target": operator,
            "inputs": list_of(
                record("NamedArgument", {"name": argument_name, "arg": "Argument"}, {"kind": optional_integer})
            ),
            "outputs": list_of(_rule("Argument")),
            "metadata": dropped(dict),
        },
        {"is_hop_single_tensor_return": optional_boolean, "name": identifier},
    )
    SCHEMA["Graph"] = record(
        "Graph",
        {
            "inputs": list_of(_rule("Argument")),
            "outputs": list_of(_rule("Argument")),
            "nodes": list_of(node),
            "tensor_values": map_of(identifier, _rule("TensorMeta")),
            "sym_int_values": map_of(identifier, _rule("SymInt")),
            "sym_bool_values": map_of(identifier, _rule("SymBool")),
        },
        {
            "is_single_tensor_return": boolean,
            "custom_obj_values": empty(dict),
            "sym_float_values": map_of(identifier, _rule("SymFloat")),
        },
    )
    user_input = record("UserInputSpec", {"arg": "Argument"})
    parameter = record("InputToParameterSpec", {"arg": tensor, "parameter_name": dotted})
    buffer = record("InputToBufferSpec", {"arg": tensor, "buffer_name": dotted, "persistent": boolean})
    constant = record("InputToTensorConstantSpec", {"arg": tensor, "tensor_constant_name": dotted})
    input_spec = union(
        "InputSpec", {"user_input": user_input, "parameter": parameter, "buffer": buffer, "tensor_constant": constant}
    )
    # a program that writes its buffers keeps state from one run to the next: not a pure function
    output_spec = union("OutputSpec", {"user_output": record("UserOutputSpec", {"arg": "Argument"})})
    signature = record(
        "ModuleCallSignature",
        {
            "inputs": list_of(_rule("Argument")),
            "outputs": list_of(_rule("Argument")),
            "in_spec": tree_spec,
            "out_spec": tree_spec,
        },
        {"forward_arg_names": maybe(list_of(identifier))},
    )
    call = record("ModuleCallEntry", {"fqn": dotted}, {"signature": maybe(signature)})
    graph_module = record(
        "GraphModule",
        {
            "graph": "Graph",
            "signature": record(
                "GraphSignature", {"input_specs": list_of(input_spec), "output_specs": list_of(output_spec)}
            ),
            "module_call_graph": list_of(call),
        },
        {"metadata": dropped(dict), "treespec_namedtuple_fields": empty(dict)},
    )
    ranges = map_of(
        _declared_symbol, record("RangeConstraint", {"min_val": optional_integer, "max_val": optional_integer})
    )
    SCHEMA["ExportedProgram"] = record(
        "ExportedProgram",
        {
            "graph_module": graph_module,
            "opset_version": map_of(identifier, integer),
            "range_constraints": ranges,
            "schema_version": record("SchemaVersion", {"major": integer, "minor": integer}),
        },
        {"verifiers": list_of(one_of(VERIFIERS), 4), "torch_version": version_text, "guards_code": dropped(list)},
    )
    payload = record(
        "PayloadMeta",
        {"path_name": identifier, "is_param": boolean, "use_pickle": boolean, "tensor_meta": "TensorMeta"},
    )
    SCHEMA["PayloadConfig"] = record("PayloadConfig", {"config": map_of(dotted, payload)})


def _declared_symbol(walk: Walk, value: Any, where: str) -> str:
    if not symbol_name(value):
        raise walk.fail(where, f"{str(value)[:40]!r} is not a size symbol's name")
    return value


_define()


def canonical_program(model: Any, what: str, in_place: bool = False) -> dict[str, Any]:
    """The program's model JSON re-written from its checked values (see the module's docstring); `in_place`: a
    user's program that `wrap` re-exports as a pure function (`operator`)."""
    ranges = model.get("range_constraints") if isinstance(model, dict) else None
    declared = {k for k in ranges if symbol_name(k)} if isinstance(ranges, dict) else set()
    return SCHEMA["ExportedProgram"](Walk(what, declared, in_place), model, PROGRAM_JSON[0])


def canonical_payload(config: Any, what: str, where: str) -> dict[str, Any]:
    """A weights or constants config re-written from its checked values (sizes are plain integers there)."""
    return SCHEMA["PayloadConfig"](Walk(what, set()), config, where)
