"""The route and local-address caches' policy: answers at most a second old in
a request, refreshed in the background for recently used addresses only, a
bounded number per refresh. The lookup itself is replaced by a counter here;
the kernel tests and the e2e suite run the real one."""

from __future__ import annotations

import ipaddress

import pytest

from mosto.agent import trust
from mosto.agent.kernel import netinfo

ip = ipaddress.ip_address


@pytest.fixture
def lookups(monkeypatch):
    asked: list = []

    def fake_lookup(dst):
        asked.append(dst)
        return netinfo.NextHop("eth0", 2, "02:00:00:00:00:01", "02:00:00:00:00:02")

    monkeypatch.setattr(netinfo, "_lookup", fake_lookup)
    monkeypatch.setattr(netinfo, "_cache", {})
    monkeypatch.setattr(netinfo, "_used", {})
    return asked


def _age(seconds: float) -> None:
    for key, (at, hop) in list(netinfo._cache.items()):
        netinfo._cache[key] = (at - seconds, hop)
    for key in netinfo._used:
        netinfo._used[key] -= seconds


def test_an_answer_is_used_for_a_second_then_looked_up_again(lookups):
    netinfo.next_hop(ip("10.0.0.1"))
    netinfo.next_hop(ip("10.0.0.1"))
    assert len(lookups) == 1
    _age(netinfo.CACHE_TTL_S)
    netinfo.next_hop(ip("10.0.0.1"))
    assert len(lookups) == 2


def test_refresh_keeps_recent_answers_fresh_and_forgets_old_ones(lookups):
    netinfo.next_hop(ip("10.0.0.1"))
    _age(netinfo.CACHE_TTL_S)  # stale, but asked for lately: refreshed
    netinfo.refresh()
    assert len(lookups) == 2
    netinfo.next_hop(ip("10.0.0.1"))
    assert len(lookups) == 2, "the refreshed answer served the request"
    _age(netinfo.KEEP_FRESH_S + 1)  # not asked for in a long while: forgotten
    netinfo.refresh()
    assert len(lookups) == 2 and not netinfo._cache


def test_refresh_looks_up_at_most_refresh_max_answers(lookups):
    for i in range(netinfo.REFRESH_MAX + 10):
        netinfo.next_hop(ip("10.0.0.1") + i)
    _age(netinfo.CACHE_TTL_S)
    before = len(lookups)
    netinfo.refresh()
    assert len(lookups) - before == netinfo.REFRESH_MAX


def test_local_address_answers_are_refreshed_for_recent_addresses(monkeypatch):
    asked: list = []
    monkeypatch.setattr(trust.sockinfo, "is_local", lambda addr: asked.append(addr) or True)
    monkeypatch.setattr(trust, "_local", {})
    monkeypatch.setattr(trust, "_local_used", {})
    assert trust._is_local(ip("10.0.0.2"))
    trust._local[ip("10.0.0.2")] = (trust._local[ip("10.0.0.2")][0] - 1, True)
    trust.refresh_local()
    assert asked == [ip("10.0.0.2")] * 2
    assert trust._is_local(ip("10.0.0.2")) and len(asked) == 2
