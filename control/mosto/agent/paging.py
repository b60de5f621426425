"""Answers that do not fit one datagram go out as pages: each page under the
datagram limit, "more": true on all but the last; lists are split, every other
field rides on the last page."""

from __future__ import annotations

import json
from typing import Any

from mosto.wire.protocol import MAX_MESSAGE

PAGE_BUDGET = MAX_MESSAGE - 1024  # room for the envelope and the last page's extras


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def pages(answer: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """answer split on its list answer[key]."""
    items = answer[key]
    rest = {k: v for k, v in answer.items() if k != key}
    budget = PAGE_BUDGET - _size(rest)
    out: list[dict[str, Any]] = []
    page: list[Any] = []
    used = 0
    for item in items:
        n = _size(item) + 1
        if page and used + n > budget:
            out.append({"ok": True, key: page, "more": True})
            page, used = [], 0
        page.append(item)
        used += n
    out.append({**rest, key: page, "more": False})
    return out
