"""Answers that do not fit one datagram go out as pages: each page under the
datagram limit, "more": true on all but the last; lists are split, every other
field rides on the last page.

A listing's pages are made as the socket takes them (made_as_sent): what an
answer waiting for a slow reader holds is the list of its splices (a
reference each) and one chunk of them made into JSON, whatever the list's
length, so that a client cannot make the agent hold its whole answer, once
per connection."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from mosto.wire.protocol import MAX_MESSAGE

PAGE_BUDGET = MAX_MESSAGE - 1024  # room for the envelope and the last page's extras
CHUNK = 256  # items made into JSON at a time (for stats, one batch read of their entries)

T = TypeVar("T")


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def made_as_sent(
    items: Sequence[T],
    render: Callable[[Sequence[T]], list[Any]],
    key: str,
    rest: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    """The pages of {**rest, key: render(items)}, each made when it is asked for
    (render is called on CHUNK items at a time)."""
    budget = PAGE_BUDGET - _size(rest)
    page: list[Any] = []
    used = 0
    for start in range(0, len(items), CHUNK):
        for item in render(items[start : start + CHUNK]):
            n = _size(item) + 1
            if page and used + n > budget:
                yield {"ok": True, key: page, "more": True}
                page, used = [], 0
            page.append(item)
            used += n
    yield {**rest, key: page, "more": False}


def pages(answer: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """answer split on its list answer[key], all at once."""
    rest = {k: v for k, v in answer.items() if k != key}
    return list(made_as_sent(answer[key], list, key, rest))
