"""list, stats, metrics and watch with many splices, and who sees what: 50,000
splices in the in-memory target, served by the real socket server to the real
client."""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import threading
import time
from pathlib import Path

import pytest

from mosto.agent.core import Agent, Splice
from mosto.agent.server import AgentServer
from mosto.agent.trust import Caller
from mosto.dataplane.entry import Entry, FlowKey
from mosto.targets.memory import MemoryTarget
from mosto.wire import protocol, refusal
from mosto.wire.client import AgentClient

N = 50_000
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
ALICE, BOB = Caller(1001, conn=1), Caller(1002, conn=2)


def _splice_entries(i: int) -> tuple[Entry, Entry]:
    client = ipaddress.ip_address("10.1.0.1") + (i >> 14)
    from_client = FlowKey(client, ipaddress.ip_address("10.1.0.2"), 10000 + (i & 0x3FFF), 8000)
    from_server = FlowKey(
        ipaddress.ip_address("10.2.0.1"), ipaddress.ip_address("10.2.0.2"), 9000, 20000 + i
    )
    cs = Entry(
        match=from_client,
        seq_delta=1,
        ack_delta=2,
        smac=MAC_A,
        dmac=MAC_B,
        egress="ps",
        rewrite=from_server.reversed(),
    )
    sc = Entry(
        match=from_server,
        seq_delta=3,
        ack_delta=4,
        smac=MAC_B,
        dmac=MAC_A,
        egress="pc",
        rewrite=from_client.reversed(),
    )
    return cs, sc


def _spliced(agent: Agent, n: int, owner: int) -> list[int]:
    ids = []
    for i in range(len(agent.list()), len(agent.list()) + n):
        splice = agent._commit(*_splice_entries(i), lambda: None, owner)
        ids.append(splice.id)
    return ids


@pytest.fixture
def served(tmp_path: Path):
    agent = Agent(MemoryTarget(max_entries=4 * N))
    srv = AgentServer(agent, str(tmp_path / "agent.sock"), mode=0o600)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield agent, srv
    srv.shutdown()
    t.join(5)


def test_50000_splices_listed_in_pages_under_the_datagram_limit_and_counted(served):
    agent, srv = served
    _spliced(agent, N, owner=0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(srv.path)
        s.settimeout(30)
        protocol.send(s, {"op": "stats", "id": 5})
        pages = []
        while True:
            raw = s.recv(protocol.MAX_MESSAGE + 1)
            assert len(raw) <= protocol.MAX_MESSAGE
            pages.append(json.loads(raw))
            if not pages[-1]["more"]:
                break
    assert len(pages) > 1 and all(p["id"] == 5 for p in pages)
    assert sum(len(p["splices"]) for p in pages) == N
    assert "counters" in pages[-1] and "counters" not in pages[0]
    assert pages[-1]["count"] == N and "count" not in pages[0]
    with AgentClient(srv.path) as c:
        listed = c._call({"op": "list"})
        stats = c.stats()
    assert [s["id"] for s in listed["splices"]] == sorted(s.id for s in agent._splices.values())
    assert listed["count"] == N
    assert len(stats["splices"]) == N and stats["count"] == N and stats["learning"] == 0


def test_metrics_count_50000_splices(served):
    from prometheus_client import CollectorRegistry, generate_latest

    from mosto.agent.metrics import AgentCollector

    agent, _ = served
    _spliced(agent, N, owner=0)
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    text = generate_latest(registry).decode()
    assert f"mosto_splices {float(N)}" in text
    assert text.count("mosto_splice_bytes_total{") == 2 * N


def test_a_user_sees_and_releases_only_their_own_splices(served):
    agent, _ = served
    alice = _spliced(agent, 3, ALICE.uid)
    bob = _spliced(agent, 2, BOB.uid)
    assert [s["id"] for s in agent.list(ALICE)] == alice
    assert [s["id"] for s in agent.stats(BOB)["splices"]] == bob
    assert "counters" not in agent.stats(BOB)
    with pytest.raises(refusal.NotFound):  # another user's splice does not exist for Bob
        agent.release(alice[0], caller=BOB)
    admin = Caller(1003, admin=True)
    assert len(agent.list(admin)) == 5
    with pytest.raises(refusal.NotOwner):  # an admin sees, only root or the owner releases
        agent.release(alice[0], caller=admin)
    agent.release(alice[0], caller=ALICE)
    agent.release(bob[0], caller=Caller(0))
    assert len(agent.list()) == 3


def test_watchers_get_only_their_own_events(served):
    agent, _ = served
    mine, theirs, everything = agent.watch(caller=ALICE), agent.watch(caller=BOB), agent.watch()
    (sid,) = _spliced(agent, 1, ALICE.uid)
    agent.release(sid, caller=ALICE)
    assert [mine.get_nowait()["event"]] == ["removed"] and mine.empty()
    assert theirs.empty()
    assert everything.get_nowait()["splice"] == sid


def test_a_client_that_does_not_read_its_answers_is_not_read_from(served, monkeypatch):
    """Requests sent without reading the answers: the agent sends what the
    socket takes, keeps the rest of that one answer, and reads no further
    request until it is gone; then every answer comes, in order. Each event
    of the connection arms it once: a second arm lets another worker take the
    next request while one runs (answers out of order, as a run once saw)."""
    agent, srv = served
    _spliced(agent, 5000, owner=0)
    mine = threading.local()
    seen: list[tuple[int, int]] = []  # (mask, arms) of each event handled
    ready, rearm = AgentServer._ready, AgentServer._rearm

    def counted_ready(self, conn, mask):
        mine.arms = 0
        ready(self, conn, mask)
        seen.append((mask, mine.arms))
        del mine.arms

    def counted_rearm(self, sock, events):
        if hasattr(mine, "arms"):
            mine.arms += 1
        rearm(self, sock, events)

    monkeypatch.setattr(AgentServer, "_ready", counted_ready)
    monkeypatch.setattr(AgentServer, "_rearm", counted_rearm)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(srv.path)
        s.settimeout(30)
        for i in range(30):
            protocol.send(s, {"op": "list", "id": i})
        time.sleep(0.5)
        (conn,) = srv._conns
        one_answer = -(-5000 * len(json.dumps(agent.list()[0])) // protocol.MAX_MESSAGE) + 1
        assert 0 < len(conn.out) <= one_answer, len(conn.out)
        ids = []
        while len(ids) < 30:
            page = json.loads(s.recv(protocol.MAX_MESSAGE))
            if not page["more"]:
                ids.append(page["id"])
    assert ids == list(range(30))
    assert any(mask & select.EPOLLOUT for mask, _ in seen), "never waited for room to write"
    assert max(arms for _, arms in seen) == 1, seen


def test_a_listing_nobody_reads_holds_its_splices_but_not_their_json(served, monkeypatch):
    """list and stats pages are made as the socket takes them: a client that
    asks and does not read makes the agent keep a reference per splice and a
    chunk of JSON, not the whole answer (megabytes at a user's quota), on each
    of its connections. Read at last, the answers are whole and in order."""
    agent, srv = served
    _spliced(agent, N, owner=0)
    made = [0]
    to_json = Splice.to_json

    def counted(self):
        made[0] += 1
        return to_json(self)

    monkeypatch.setattr(Splice, "to_json", counted)
    socks = []
    for op in ("list", "stats"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(srv.path)
        s.settimeout(30)
        protocol.send(s, {"op": op})
        socks.append(s)
    time.sleep(0.5)
    # What the two sockets' buffers took, and a chunk each: a few thousand at most.
    assert 0 < made[0] < N // 10, made[0]
    assert all(c.later is not None for c in srv._conns)
    for s in socks:
        with s:
            ids, last = [], {"more": True}
            while last["more"]:
                last = json.loads(s.recv(protocol.MAX_MESSAGE))
                ids += [sp["id"] for sp in last["splices"]]
            assert ids == sorted(agent._splices) and last["count"] == N
    assert made[0] == 2 * N


def test_a_failure_while_pages_are_made_ends_them_with_an_error(served, monkeypatch):
    agent, srv = served
    _spliced(agent, 2000, owner=0)
    with_stats = agent.with_stats
    chunks = [0]

    def failing(splices):
        chunks[0] += 1
        if chunks[0] == 3:
            raise OSError("the map is gone")
        return with_stats(splices)

    monkeypatch.setattr(agent, "with_stats", failing)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(srv.path)
        s.settimeout(30)
        protocol.send(s, {"op": "stats", "id": 9})
        pages = [json.loads(s.recv(protocol.MAX_MESSAGE))]
        while pages[-1].get("more"):
            pages.append(json.loads(s.recv(protocol.MAX_MESSAGE)))
        assert pages[-1] == {
            "ok": False,
            "error": "internal",
            "message": "OSError: the map is gone",
            "id": 9,
        }
        assert len(pages) > 1 and all(p["ok"] for p in pages[:-1])
        protocol.send(s, {"op": "list", "id": 10})  # and the connection serves on
        assert json.loads(s.recv(protocol.MAX_MESSAGE))["id"] == 10
