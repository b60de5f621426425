"""The data-plane contract (shared/contract.h): sizes, entry flags, the event's
TCP flags and the counter list, read from the one header the XDP/tc program
and the P4 program are built from.

Why parse the header at import time rather than generate a module at build
time: the values then cannot go stale (there is no generated file to forget
to regenerate), `import mosto` needs no build step or compiler (the proxy and
the BMv2 target run where there is no clang), and an installed package reads
the copy shipped beside this module as package data
(control/mosto/dataplane/contract.h is a symlink to shared/contract.h in the
checkout; setuptools copies its content into sdists and wheels). The header
keeps to a grammar small enough to parse exactly; anything outside it fails
the import, so a change the parser does not understand cannot be misread.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from importlib import resources

HEADER = "contract.h"

_EMPTY = re.compile(r"#\s*define\s+\w+\s*$")
_OBJECT = re.compile(r"#\s*define\s+(\w+)\s+(.+)")
_FUNCTION = re.compile(r"#\s*define\s+(\w+)\(([\w\s,]*)\)\s*(.*)")
_CALL = re.compile(r"\b(\w+)\(([^()]*)\)")
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_,
}


class ContractError(ValueError):
    """shared/contract.h says something this parser does not understand."""


@dataclass(frozen=True)
class Counter:
    macro: str  # CNT_<macro> in C and P4
    name: str  # the name user space shows
    index: int


def _logical_lines(text: str) -> list[str]:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = text.replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _eval(expr: str) -> int:
    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
            v = value(node.operand)
            return v if isinstance(node.op, ast.UAdd) else -v
        raise ContractError(f"not an integer expression: {expr!r}")

    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise ContractError(f"not an integer expression: {expr!r}") from None
    return value(tree.body)


class _Macros:
    """Just enough of the C preprocessor for this header: object-like and
    function-like macros, expanded until nothing is left to expand."""

    def __init__(self) -> None:
        self.objects: dict[str, str] = {}
        self.functions: dict[str, tuple[list[str], str]] = {}

    def expand(self, text: str, depth: int = 0) -> str:
        if depth > 16:
            raise ContractError(f"macro expansion does not end: {text!r}")

        def call(m: re.Match[str]) -> str:
            name, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
            if name not in self.functions:
                return m.group(0)
            params, body = self.functions[name]
            if len(args) != len(params):
                raise ContractError(f"{name} takes {len(params)} arguments: {m.group(0)!r}")
            for param, arg in zip(params, args, strict=True):
                body = re.sub(rf"\b{param}\b", arg, body)
            return body

        out = re.sub(r"\b\w+\b", lambda m: self.objects.get(m.group(0), m.group(0)), text)
        # A function-like macro's name alone, as an argument, expands later.
        out = _CALL.sub(call, out)
        return out if out == text else self.expand(out, depth + 1)


def parse(text: str) -> tuple[dict[str, int], tuple[Counter, ...]]:
    """The header's integer definitions (MOSTO_* names) and its counter list."""
    macros = _Macros()
    for line in _logical_lines(text):
        if not line.startswith("#"):
            raise ContractError(f"not a preprocessor line: {line!r}")
        if _EMPTY.match(line):
            continue  # the include guard
        if m := _FUNCTION.match(line):
            params = [p.strip() for p in m.group(2).split(",") if p.strip()]
            macros.functions[m.group(1)] = (params, m.group(3))
        elif m := _OBJECT.match(line):
            macros.objects[m.group(1)] = m.group(2)
        elif not re.match(r"#\s*(ifndef|endif|undef)\b", line):
            raise ContractError(f"unexpected directive: {line!r}")

    params, body = macros.functions.get("MOSTO_COUNTERS", ([], ""))
    if len(params) != 1:
        raise ContractError("no MOSTO_COUNTERS(X) list")
    counters = []
    for m in re.finditer(rf"\b{params[0]}\(([^()]*)\)", body):
        fields = [f.strip() for f in m.group(1).split(",")]
        if len(fields) != 3 or not all(re.fullmatch(r"\w+", f) for f in fields[:2]):
            raise ContractError(f"counter entries are X(NAME, name, index): {m.group(0)!r}")
        counters.append(Counter(fields[0], fields[1], _eval(macros.expand(fields[2]))))
    if sorted(c.index for c in counters) != list(range(len(counters))):
        raise ContractError("counter indices must be 0..n-1, each once")

    values = {
        name: _eval(macros.expand(value))
        for name, value in macros.objects.items()
        if name.startswith("MOSTO_") and not name.endswith("_H")
    }
    return values, tuple(sorted(counters, key=lambda c: c.index))


def _load() -> tuple[dict[str, int], tuple[Counter, ...]]:
    source = resources.files("mosto.dataplane").joinpath(HEADER)
    try:
        return parse(source.read_text())
    except OSError as exc:
        raise ContractError(
            f"cannot read {HEADER} (package data of mosto.dataplane): {exc}"
        ) from None


VALUES, COUNTER_LIST = _load()

MAX_ENTRIES: int = VALUES["MOSTO_MAX_ENTRIES"]
MAX_PORTS: int = VALUES["MOSTO_MAX_PORTS"]
EVENTS_BYTES: int = VALUES["MOSTO_EVENTS_BYTES"]
L2_ENTRIES: int = VALUES["MOSTO_L2_ENTRIES"]
VLAN_MAX: int = VALUES["MOSTO_VLAN_MAX"]
IPV6_EXT_MAX: int = VALUES["MOSTO_IPV6_EXT_MAX"]
IPV6_EXT_UNITS: int = VALUES["MOSTO_IPV6_EXT_UNITS"]
SPLICE_F_TS: int = VALUES["MOSTO_SPLICE_F_TS"]
SPLICE_F_NAT: int = VALUES["MOSTO_SPLICE_F_NAT"]
SPLICE_F_LEARN: int = VALUES["MOSTO_SPLICE_F_LEARN"]
LEARN_SEQ_BACK: int = VALUES["MOSTO_LEARN_SEQ_BACK"]
TCP_FIN: int = VALUES["MOSTO_TCP_FIN"]
TCP_RST: int = VALUES["MOSTO_TCP_RST"]
TCP_ACK: int = VALUES["MOSTO_TCP_ACK"]
TRACK_SEQ_AHEAD: int = VALUES["MOSTO_TRACK_SEQ_AHEAD"]
NO_PEER: int = VALUES["MOSTO_NO_PEER"]
NUM_COUNTERS: int = VALUES["MOSTO_NUM_COUNTERS"]
COUNTERS: tuple[str, ...] = tuple(c.name for c in COUNTER_LIST)

if NUM_COUNTERS != len(COUNTERS):
    raise ContractError(f"MOSTO_NUM_COUNTERS is {NUM_COUNTERS}, the list has {len(COUNTERS)}")
