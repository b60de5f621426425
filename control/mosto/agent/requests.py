"""What a well-formed request is: its op, its fields and their types, its
descriptors. Anything else is one `bad_request`, whatever is wrong with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mosto.wire import refusal

FD_OPS = frozenset({"register", "hold", "unhold", "offload"})
BATCH_OPS = frozenset({"offload_many"})  # any number of pairs, up to MAX_BATCH
OPS = FD_OPS | BATCH_OPS | {"release", "list", "stats", "watch"}
MAX_BATCH = 64  # pairs: 128 descriptors, under the kernel's 253 per message
MAX_ID_LEN = 64
MAX_SPLICE_ID = 1 << 53  # ids are below it (agent.core._new_id): exact in JSON


@dataclass(frozen=True)
class Request:
    op: str
    splice: int | None = None  # release
    id: int | str | None = None  # echoed in every answer to it


def _request_id(value: Any) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise refusal.BadRequest("'id' must be an integer or a string")
    if isinstance(value, str) and len(value) > MAX_ID_LEN:
        raise refusal.BadRequest(f"'id' longer than {MAX_ID_LEN} characters")
    if isinstance(value, int) and not 0 <= value < 1 << 63:
        raise refusal.BadRequest("'id' out of range")
    return value


def echoed_id(value: Any) -> int | str | None:
    """The id an answer carries: the request's if it is a valid one, else none
    (the bad_request says what is wrong with it)."""
    try:
        return _request_id(value)
    except refusal.BadRequest:
        return None


def parse(doc: dict[str, Any], nfds: int) -> Request:
    op = doc.get("op")
    if not isinstance(op, str):
        raise refusal.BadRequest(f"'op' must be a string, not {type(op).__name__}")
    if op not in OPS:
        raise refusal.BadRequest(f"unknown op {op[:32]!r}")
    allowed = {"op", "id"} | ({"splice"} if op == "release" else set())
    extra = sorted(k for k in doc if k not in allowed)
    if extra:
        raise refusal.BadRequest(f"{op} takes no field {extra[0][:32]!r}")
    if op in BATCH_OPS:
        if nfds < 2 or nfds % 2 or nfds > 2 * MAX_BATCH:
            raise refusal.BadRequest(
                f"{op} needs 2 descriptors per pair, 1 to {MAX_BATCH} pairs; got {nfds}"
            )
    else:
        want = 2 if op in FD_OPS else 0
        if nfds != want:
            raise refusal.BadRequest(f"{op} needs {want} descriptors, got {nfds}")
    splice = None
    if op == "release":
        splice = doc.get("splice")
        if isinstance(splice, bool) or not isinstance(splice, int):
            raise refusal.BadRequest("release needs an integer 'splice'")
        if not 0 <= splice < MAX_SPLICE_ID:
            raise refusal.BadRequest("'splice' out of range: no splice has that id")
    return Request(op, splice, _request_id(doc.get("id")))
