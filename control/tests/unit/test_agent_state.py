"""The agent's state machine against the in-memory target: pairing entries into
splices after a restart, FIN/RST handling, reaping, install rollback, release.
No sockets are involved: these are the parts that only look at the table."""

from __future__ import annotations

import gc
import ipaddress
import time
import weakref

import pytest

from mosto.agent.core import TCP_FIN, TCP_RST, Agent
from mosto.agent.trust import Caller
from mosto.dataplane.entry import Entry, FlowKey
from mosto.targets.base import TableFull
from mosto.targets.memory import MemoryTarget
from mosto.wire import refusal

ip = ipaddress.ip_address
FROM_CLIENT = FlowKey(ip("10.1.0.1"), ip("10.1.0.2"), 40000, 8000)
FROM_SERVER = FlowKey(ip("10.2.0.1"), ip("10.2.0.2"), 9000, 45000)
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def splice_entries() -> tuple[Entry, Entry]:
    """A non-transparent splice: client->proxy continues as proxy->server."""
    cs = Entry(
        match=FROM_CLIENT,
        seq_delta=1000,
        ack_delta=2000,
        smac=MAC_A,
        dmac=MAC_B,
        egress="ps",
        rewrite=FROM_SERVER.reversed(),
    )
    sc = Entry(
        match=FROM_SERVER,
        seq_delta=-2000 % (1 << 32),
        ack_delta=-1000 % (1 << 32),
        smac=MAC_B,
        dmac=MAC_A,
        egress="pc",
        rewrite=FROM_CLIENT.reversed(),
    )
    return cs, sc


def ok() -> None:
    pass


@pytest.fixture
def target() -> MemoryTarget:
    return MemoryTarget()


def test_commit_installs_both_directions_and_replaces_learning(target):
    agent = Agent(target)
    for flow in (FROM_CLIENT, FROM_SERVER):
        target.add(Entry.learning(flow))
    agent = Agent(target)  # a restart: learning entries come back as such
    assert agent.stats()["learning"] == 2
    splice = agent._commit(*splice_entries(), ok)
    assert [e.learn for _, e in target.entries()] == [False, False]
    assert agent.stats()["learning"] == 0
    assert [s["id"] for s in agent.list()] == [splice.id]


def test_rollback_restores_learning_entries_or_nothing(target):
    target.add(Entry.learning(FROM_CLIENT))  # registered; FROM_SERVER was not
    agent = Agent(target)

    def moved() -> None:
        raise refusal.StateMoved("rcv_nxt 1 -> 2")

    with pytest.raises(refusal.StateMoved):
        agent._commit(*splice_entries(), moved)
    assert [(e.match, e.learn) for _, e in target.entries()] == [(FROM_CLIENT, True)]
    assert agent.list() == []


def test_rollback_when_the_second_entry_does_not_fit(target):
    agent = Agent(target)
    cs, sc = splice_entries()
    real_add = target.add

    def add(entry: Entry) -> int:
        if entry.match == sc.match:
            raise TableFull("table full (2 entries)")
        return real_add(entry)

    target.add = add  # type: ignore[method-assign]
    with pytest.raises(refusal.TableFull):
        agent._commit(cs, sc, ok)
    assert target.entries() == []


def test_restart_pairs_entries_into_the_same_splices_under_new_ids(target):
    first = Agent(target)
    splice = first._commit(*splice_entries(), ok)
    again = Agent(target)
    assert [(s["client"], s["server"]) for s in again.list()] == [
        (FROM_CLIENT.to_json(), FROM_SERVER.to_json())
    ]
    assert again.list()[0]["id"] > splice.id  # the dead agent's id names nothing now
    with pytest.raises(refusal.NotFound):
        again.release(splice.id)


def test_splice_ids_are_never_given_twice(target):
    agent = Agent(target)
    ids = []
    for _ in range(3):  # the same slots each time: the ids still differ
        splice = agent._commit(*splice_entries(), ok)
        ids.append(splice.id)
        agent.release(splice.id)
    assert ids == sorted(set(ids)) and len(ids) == 3
    assert Agent(target)._commit(*splice_entries(), ok).id > ids[-1]  # and after a restart
    assert ids[-1] < 2**53


def test_fin_both_ways_ends_the_splice_after_the_grace(target):
    agent = Agent(target, grace=0.0)
    splice = agent._commit(*splice_entries(), ok)
    watch = agent.watch()
    agent.on_event(FROM_CLIENT, TCP_FIN)
    agent.reap()
    assert len(agent.list()) == 1  # half closed: still spliced
    agent.on_event(FROM_SERVER, TCP_FIN)
    agent.reap()
    assert agent.list() == [] and target.entries() == []
    events = [watch.get_nowait() for _ in range(watch.qsize())]
    assert [e["event"] for e in events] == ["fin", "fin", "removed"]
    assert events[-1]["reason"] == "closed" and events[-1]["splice"] == splice.id


def test_rst_ends_the_splice_with_reason_reset(target):
    agent = Agent(target, grace=0.0)
    agent._commit(*splice_entries(), ok)
    watch = agent.watch()
    agent.on_event(FROM_SERVER, TCP_RST)
    agent.reap()
    assert target.entries() == []
    assert [watch.get_nowait()["event"] for _ in range(watch.qsize())] == ["rst", "removed"]


def test_idle_splices_and_learning_entries_are_reaped(target):
    agent = Agent(target, idle_timeout=0.0)
    agent._commit(*splice_entries(), ok)
    target.add(Entry.learning(FlowKey(ip("10.1.0.9"), ip("10.1.0.2"), 1, 2)))
    agent = Agent(target, idle_timeout=0.0)
    agent.reap()
    assert target.entries() == [] and agent.list() == []


def test_traffic_keeps_a_splice_alive(target):
    agent = Agent(target, idle_timeout=3600.0)
    agent._commit(*splice_entries(), ok)
    target.hit(FROM_CLIENT)
    agent.reap()
    assert len(agent.list()) == 1


def test_release_removes_both_entries_and_reports_stats(target):
    agent = Agent(target)
    splice = agent._commit(*splice_entries(), ok)
    target.hit(FROM_CLIENT, nbytes=1500)
    stats = agent.release(splice.id)
    assert stats["to_server"] == {"packets": 1, "bytes": 1500}
    assert target.entries() == []
    with pytest.raises(refusal.NotFound):
        agent.release(splice.id)


def test_a_spliced_flow_cannot_be_spliced_again(target):
    agent = Agent(target)
    agent._commit(*splice_entries(), ok)
    with pytest.raises(refusal.AlreadySpliced):
        agent._require_free(FROM_SERVER)


def test_restart_removes_half_a_splice(target):
    cs, _ = splice_entries()
    target.add(cs)  # an agent died between the two installs
    agent = Agent(target)
    assert target.entries() == [] and agent.list() == []


def _splice_many(agent: Agent, n: int, owners: int = 0) -> None:
    """n splices of their own ports; with owners, owned by uids 2000 to 2000+owners-1."""
    for i in range(n):
        c = FlowKey(ip("10.1.0.1"), ip("10.1.0.2"), 1000 + i, 8000)
        s = FlowKey(ip("10.2.0.1"), ip("10.2.0.2"), 9000, 20000 + i)
        cs, sc = splice_entries()
        agent._commit(
            Entry(**{**cs.__dict__, "match": c, "rewrite": s.reversed()}),
            Entry(**{**sc.__dict__, "match": s, "rewrite": c.reversed()}),
            ok,
            owner=2000 + i % owners if owners else None,
        )


def test_reaper_reads_all_stats_in_one_batch(target):
    agent = Agent(target, idle_timeout=3600.0)
    _splice_many(agent, 50)
    before = target.reads
    agent.reap()
    assert target.reads - before == 1
    assert len(agent.list()) == 50


def test_a_spoofed_rst_does_not_end_a_flow_that_goes_on(target):
    agent = Agent(target, grace=0.2)
    splice = agent._commit(*splice_entries(), ok)
    watch = agent.watch()
    for _ in range(100):  # a flood: one event for the watchers
        agent.on_event(FROM_SERVER, TCP_RST)
    time.sleep(0.15)  # past half the grace, the flow still carries packets
    target.hit(FROM_CLIENT)
    time.sleep(0.1)
    agent.reap(scan_idle=False)
    assert [s["id"] for s in agent.list()] == [splice.id]
    assert [watch.get_nowait()["event"] for _ in range(watch.qsize())] == ["rst", "kept"]
    agent.on_event(FROM_SERVER, TCP_RST)  # a real one later: the flow falls quiet
    time.sleep(0.25)
    agent.reap(scan_idle=False)
    assert agent.list() == [] and target.entries() == []


def test_fin_events_are_reported_once_per_side(target):
    agent = Agent(target, grace=3600.0)
    agent._commit(*splice_entries(), ok)
    watch = agent.watch()
    for _ in range(50):
        agent.on_event(FROM_CLIENT, TCP_FIN)
    agent.on_event(FROM_SERVER, TCP_FIN)
    events = [watch.get_nowait() for _ in range(watch.qsize())]
    assert [(e["event"], e["from"]) for e in events] == [("fin", "client"), ("fin", "server")]


def test_a_flow_quiet_since_long_before_the_read_needs_no_settle(target):
    agent = Agent(target)
    for flow in (FROM_CLIENT, FROM_SERVER):
        target.add(Entry.learning(flow))
    agent = Agent(target)
    target.hit(FROM_CLIENT, tsval=111)
    target.hit(FROM_SERVER, tsval=222)
    last = agent._last_passed(target.stats_many([FROM_CLIENT, FROM_SERVER]))
    assert last is not None
    assert agent._needs_settle(last, read_at=last + 0.001), "a packet 1 ms before the read"
    assert not agent._needs_settle(last, read_at=last + 1.0), "the last packet 1 s before"


def test_a_frozen_pair_needs_no_settle_however_recent_its_last_packet(target):
    for flow in (FROM_CLIENT, FROM_SERVER):
        target.add(Entry.learning(flow))
    agent = Agent(target)
    target.hit(FROM_CLIENT, tsval=111)
    last = agent._last_passed(target.stats_many([FROM_CLIENT, FROM_SERVER]))
    assert last is not None
    assert not agent._needs_settle(last, read_at=last + 0.001, frozen=True)
    assert not agent._needs_settle(None, read_at=time.monotonic(), frozen=True)
    switch = Agent(MemoryTarget(), port_map={"pc": 1, "ps": 2})
    assert switch._needs_settle(last, read_at=last + 100, frozen=True), "a wire to cross"


def test_a_flow_without_learning_entries_or_on_a_switch_always_settles(target):
    agent = Agent(target)
    last = agent._last_passed(target.stats_many([FROM_CLIENT, FROM_SERVER]))
    assert last is None
    assert agent._needs_settle(last, read_at=time.monotonic())
    switch = Agent(MemoryTarget(), port_map={"pc": 1, "ps": 2})
    assert switch._needs_settle(0.0, read_at=time.monotonic() + 100)


@pytest.fixture
def crowded(target):
    """An agent with 2,000 splices of other users, whose tables refuse to be
    walked from here on: an unprivileged caller's checks must go by index."""
    agent = Agent(target, idle_timeout=3600.0)
    _splice_many(agent, 2000, owners=7)

    def walked(*_a, **_k):
        raise AssertionError("a request walked every splice")

    for table in (agent._splices, agent._learning, agent._held):
        table.values = walked  # type: ignore[method-assign]
        table.items = walked  # type: ignore[method-assign]
    return agent


def test_an_unprivileged_callers_checks_and_listing_go_by_index(crowded):
    alice = Caller(1001)
    crowded._check_owner(alice, FlowKey(ip("10.9.0.1"), ip("10.9.0.2"), 1, 2))
    crowded._check_quota(alice, "splices", 1)
    crowded._check_quota(alice, "learning", 2)
    assert crowded.list(alice) == []
    assert crowded.stats(alice)["splices"] == []
    mine = crowded.list(Caller(2003))
    assert len(mine) == 2000 // 7 + (3 < 2000 % 7)
    with pytest.raises(refusal.NotOwner):  # someone else's flow, found by its match
        crowded._check_owner(alice, FlowKey(ip("10.1.0.1"), ip("10.1.0.2"), 1003, 8000))


def test_quotas_count_what_the_caller_owns(target):
    agent = Agent(target)
    agent.quotas.splices = 1
    bob = Caller(1002)
    agent._check_quota(bob, "splices", 1)
    agent._commit(*splice_entries(), ok, owner=bob.uid)
    with pytest.raises(refusal.LimitReached):
        agent._check_quota(bob, "splices", 1)
    agent._check_quota(Caller(1003), "splices", 1)  # another uid's count is its own
    agent.release(next(iter(agent._splices)))
    agent._check_quota(bob, "splices", 1)  # released: counted no more


@pytest.mark.parametrize("end", ["release", "rst", "idle"])
def test_an_ended_splice_is_freed_without_the_cyclic_collector(target, end):
    """The agent freezes what is alive (heap.py): a splice it lets go, however
    it ends, must not need the collector to be found."""
    agent = Agent(target, grace=0.0, idle_timeout=3600.0)
    agent.watch()
    gc.disable()
    try:
        splice = agent._commit(*splice_entries(), ok)
        agent._reservations[splice.id] = []
        gone = [weakref.ref(o) for o in (splice, splice.to_server, splice.to_client)]
        if end == "release":
            agent.release(splice.id)
        elif end == "rst":
            agent.on_event(FROM_SERVER, TCP_RST)
            agent.reap()
        else:
            agent.idle_timeout = 0.0
            agent.reap()
        del splice
        assert agent.list() == []
        assert [r() for r in gone] == [None, None, None]
    finally:
        gc.enable()
