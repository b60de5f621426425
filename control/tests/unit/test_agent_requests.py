"""What the agent accepts on its socket: message decoding, request validation,
descriptors closed exactly once, one bad_request for every malformed request.
Real sockets and pipes, no root: the agent runs with the in-memory target."""

from __future__ import annotations

import gc
import json
import os
import socket
import threading
import time
import weakref
from pathlib import Path

import pytest

from mosto.agent import requests
from mosto.agent.core import Agent
from mosto.agent.server import WATCH_BACKLOG, AgentServer
from mosto.targets.memory import MemoryTarget
from mosto.wire import protocol, refusal


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _no_more_fds_than(baseline: set[str]) -> None:
    """The agent closes a connection when it sees the EOF, a moment later."""
    deadline = time.monotonic() + 2
    while _open_fds() - baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _open_fds() - baseline, f"descriptors left open: {_open_fds() - baseline}"


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100000 + b"]" * 100000,
        b'{"op":"list","x":' + b"[" * 50 + b"]" * 50 + b"}",
        b'{"op":"release","splice":' + b"9" * 5000 + b"}",
        b'{"op":"list","x":NaN}',
        b"[]",
        b'"list"',
        b"\xff\xfe",
        b"{",
        b'{"op":"list","op":"stats"}',
    ],
    ids=[
        "deep",
        "nested",
        "huge-int",
        "nan",
        "array",
        "string",
        "not-utf8",
        "truncated",
        "repeated-key",
    ],
)
def test_malformed_messages_are_protocol_errors(data):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(data)


@pytest.mark.parametrize(
    ("doc", "nfds"),
    [
        ({"op": ["list"]}, 0),
        ({"op": 1}, 0),
        ({}, 0),
        ({"op": "nope"}, 0),
        ({"op": "release"}, 0),
        ({"op": "release", "splice": "1"}, 0),
        ({"op": "release", "splice": True}, 0),
        ({"op": "release", "splice": -1}, 0),
        ({"op": "release", "splice": 1 << 53}, 0),
        ({"op": "list", "splice": 1}, 0),
        ({"op": "list"}, 1),
        ({"op": "offload"}, 1),
        ({"op": "offload"}, 4),
        ({"op": "offload_many"}, 0),
        ({"op": "offload_many"}, 3),
        ({"op": "offload_many"}, 2 * requests.MAX_BATCH + 2),
        ({"op": "list", "id": [1]}, 0),
        ({"op": "list", "id": "x" * 65}, 0),
    ],
)
def test_requests_with_wrong_fields_are_bad_requests(doc, nfds):
    with pytest.raises(refusal.BadRequest):
        requests.parse(doc, nfds)


def test_offload_many_takes_whole_pairs_up_to_the_batch_limit():
    for nfds in (2, 4, 2 * requests.MAX_BATCH):
        assert requests.parse({"op": "offload_many"}, nfds).op == "offload_many"


def test_a_well_formed_request_parses():
    assert requests.parse({"op": "release", "splice": 7, "id": "a"}, 0) == requests.Request(
        "release", 7, "a"
    )


@pytest.fixture
def server(tmp_path: Path):
    agent = Agent(MemoryTarget(max_entries=1 << 16))
    srv = AgentServer(agent, str(tmp_path / "run" / "agent.sock"), mode=0o600)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    t.join(5)


def _connect(srv: AgentServer) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(srv.path)
    s.settimeout(5)
    return s


def _ask(s: socket.socket, data: bytes, fds: list[int] = ()) -> dict:
    socket.send_fds(s, [data], list(fds))
    return json.loads(s.recv(protocol.MAX_MESSAGE))


def test_tcp_socket_and_pipe_are_refused_and_both_closed_once(server):
    before = _open_fds()
    tcp = socket.socket()
    r, w = os.pipe()
    with _connect(server) as s:
        answer = _ask(s, b'{"op":"offload"}', [tcp.fileno(), r])
        assert answer["error"] == "not_tcp", answer
        # The agent is still there, and still serves this connection.
        assert _ask(s, b'{"op":"list"}')["ok"] is True
    tcp.close()
    os.close(r)
    os.close(w)
    # The agent runs in this process: none of its copies may be left.
    _no_more_fds_than(before)


def test_offload_many_answers_each_pair_and_closes_every_descriptor(server):
    """Each pair is refused on its own (none is connected), in order, and the
    agent keeps none of the descriptors."""
    before = _open_fds()
    socks = [socket.socket() for _ in range(6)]
    with _connect(server) as s:
        answer = _ask(s, b'{"op":"offload_many","id":3}', [x.fileno() for x in socks])
        assert answer["ok"] is True and answer["id"] == 3 and answer["more"] is False, answer
        assert [r["error"] for r in answer["results"]] == ["not_connected"] * 3, answer
    for x in socks:
        x.close()
    _no_more_fds_than(before)


@pytest.mark.parametrize(
    "data",
    [b"not json", b"", b"[1]", b'{"op":["list"]}', b"[" * 5000, b'{"op":"list","id":{}}'],
    ids=["not-json", "empty", "not-object", "op-list", "deep", "id-object"],
)
def test_malformed_message_with_descriptors_gets_bad_request_and_no_leak(server, data):
    a, b = socket.socketpair()
    with _connect(server) as s:
        assert _ask(s, b'{"op":"list"}')["ok"] is True  # accepted: its descriptor is open
        baseline = _open_fds()
        answer = _ask(s, data, [a.fileno(), b.fileno()])
        assert answer["ok"] is False and answer["error"] == "bad_request", answer
        assert _ask(s, b'{"op":"list"}')["ok"] is True
        _no_more_fds_than(baseline)
    a.close()
    b.close()


def test_an_empty_datagram_without_descriptors_is_a_bad_request_not_an_eof(server):
    with _connect(server) as s:
        assert _ask(s, b"")["error"] == "bad_request"
        assert _ask(s, b'{"op":"list"}')["ok"] is True


def test_pipelined_requests_are_answered_in_order_and_echo_their_id(server):
    with _connect(server) as s:
        for i in range(20):
            op = ("list", "stats", "release")[i % 3]
            doc = {"op": op, "id": i, **({"splice": 999} if op == "release" else {})}
            s.send(json.dumps(doc).encode())
        ids = [json.loads(s.recv(protocol.MAX_MESSAGE))["id"] for _ in range(20)]
    assert ids == list(range(20))


def _watching(srv: AgentServer) -> socket.socket:
    s = _connect(srv)
    assert _ask(s, b'{"op":"watch"}')["ok"] is True
    deadline = time.monotonic() + 5
    while not srv.agent._watchers:  # the agent hears of the watcher after the answer
        assert time.monotonic() < deadline, "the watcher was never registered"
        time.sleep(0.01)
    return s


def test_a_watcher_gets_every_event_in_order_from_whichever_thread_emits(server):
    def emit(k: int) -> None:
        for i in range(200):
            server.agent._emit({"event": "x", "n": k * 1000 + i}, None)

    with _watching(server) as s:
        emitters = [threading.Thread(target=emit, args=(k,)) for k in range(4)]
        for t in emitters:
            t.start()
        for t in emitters:
            t.join()
        got = [json.loads(s.recv(protocol.MAX_MESSAGE))["n"] for _ in range(800)]
    for k in range(4):  # each emitter's events arrive in the order it sent them
        assert [n for n in got if n // 1000 == k] == [k * 1000 + i for i in range(200)]


def test_a_watcher_that_does_not_read_is_dropped_and_the_rest_served(server):
    before = len(server._conns)
    with _watching(server) as slow, _connect(server) as other:
        for i in range(WATCH_BACKLOG + 5000):
            server.agent._emit({"event": "x", "n": i}, None)
        assert server.agent._watchers == [], "the slow watcher is still registered"
        assert _ask(other, b'{"op":"list"}')["ok"] is True
        received = 0
        try:  # what the socket took before the drop, then the end
            while slow.recv(protocol.MAX_MESSAGE):
                received += 1
        except ConnectionResetError:
            pass
        assert received < WATCH_BACKLOG + 5000
    deadline = time.monotonic() + 5
    while len(server._conns) > before:
        assert time.monotonic() < deadline, "the agent kept the connections"
        time.sleep(0.01)


def test_a_closed_connection_is_freed_without_the_cyclic_collector(server):
    """The agent freezes what is alive (heap.py): what it lets go must not need
    the collector to be found."""
    before = set(server._conns)
    gc.disable()
    try:
        with _watching(server) as watcher, _connect(server) as asker:
            assert _ask(asker, b'{"op":"list"}')["ok"] is True
            server.agent._emit({"event": "x"}, None)
            assert json.loads(watcher.recv(protocol.MAX_MESSAGE))["event"] == "x"
            gone = [weakref.ref(c) for c in server._conns - before]
            assert len(gone) == 2
        deadline = time.monotonic() + 5
        while any(r() is not None for r in gone):
            assert time.monotonic() < deadline, "a closed connection is still alive"
            time.sleep(0.01)
    finally:
        gc.enable()
