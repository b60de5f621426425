"""A table of things each owned by a uid (or None: not known yet), indexed by
owner as well as by key: an unprivileged caller's quota and ownership checks
and its listings cost what it owns, not what the whole table holds (tens of
thousands of splices, most of them other users')."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, Protocol, TypeVar


class HasOwner(Protocol):
    @property
    def owner(self) -> int | None: ...


K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=HasOwner)


class Owned(Generic[K, V]):
    """The dict operations the agent uses, and by_owner() and count(). An
    item's owner is read as it is put in: to change it, pop the item and put
    it back."""

    def __init__(self) -> None:
        self._items: dict[K, V] = {}
        self._by_owner: dict[int | None, set[K]] = {}

    def __setitem__(self, key: K, value: V) -> None:
        self.pop(key, None)
        self._items[key] = value
        self._by_owner.setdefault(value.owner, set()).add(key)

    def __delitem__(self, key: K) -> None:
        value = self._items.pop(key)
        keys = self._by_owner[value.owner]
        keys.discard(key)
        if not keys:
            del self._by_owner[value.owner]

    def pop(self, key: K, default: V | None = None) -> V | None:
        value = self._items.get(key)
        if value is None:
            return default
        del self[key]
        return value

    def count(self, owner: int | None) -> int:
        return len(self._by_owner.get(owner, ()))

    def by_owner(self, owner: int | None) -> list[V]:
        return [self._items[k] for k in self._by_owner.get(owner, ())]

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def values(self) -> list[V]:
        return list(self._items.values())

    def items(self) -> list[tuple[K, V]]:
        return list(self._items.items())
