"""Chains in the reference proxy without root: the ingress proxy's lookup
(route.py) on a table made from a matrix, and three real proxies on loopback
that pass a flow along by its chain header (no agent: they only relay)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import threading
from pathlib import Path

import pytest

from mosto.chains.pareto import precompute
from mosto.chains.table import ChainTable
from mosto.chains.topology import parse_rtt_json
from mosto.proxy import ppv2
from mosto.proxy.ppv2 import Hop
from mosto.proxy.relay import Chained, Proxy
from mosto.proxy.route import ChainRoutes

# inp - trp - egp - server in a line, 45 ms a hop: a big transfer takes the
# whole chain, a one-round one goes straight (its cost is the sum alone).
NODES = ["inp", "trp", "egp", "server"]
RTT = [[0, 45, 90, 135], [45, 0, 45, 90], [90, 45, 0, 45], [135, 90, 45, 0]]


@pytest.fixture(scope="module")
def table() -> ChainTable:
    topo = parse_rtt_json(json.dumps({"nodes": NODES, "rtt": RTT}))
    return ChainTable(topo.names, precompute(topo))


def _routes(table: ChainTable, expect: int, **peers) -> ChainRoutes:
    peers = peers or {
        "trp": [Hop.parse("10.2.0.2:8000"), Hop.parse("[fd02::2]:8000")],
        "egp": [Hop.parse("10.3.0.2:8000")],
    }
    sites = [(ipaddress.ip_network("10.4.0.0/24"), "server")]
    sites.append((ipaddress.ip_network("fd04::/64"), "server"))
    return ChainRoutes(table, "inp", peers, sites, expect)


def test_the_size_picks_the_chain(table):
    big = _routes(table, 500_000).route(Hop.parse("10.4.0.2:9000"))
    assert big is not None and big.path == ("inp", "trp", "egp", "server")
    assert big.hops == (Hop.parse("10.2.0.2:8000"), Hop.parse("10.3.0.2:8000"))
    small = _routes(table, 10_000).route(Hop.parse("10.4.0.2:9000"))
    assert small is not None and small.path == ("inp", "server") and small.hops == ()
    assert small.rounds == 1 and big.rounds == 6


def test_a_peer_of_the_destinations_family_is_taken(table):
    route = _routes(table, 500_000).route(Hop.parse("[fd04::2]:9000"))
    assert route is not None
    assert route.hops == (Hop.parse("[fd02::2]:8000"), Hop.parse("10.3.0.2:8000"))


def test_a_destination_in_no_site_has_no_route(table):
    assert _routes(table, 500_000).route(Hop.parse("10.9.0.1:80")) is None


@pytest.mark.parametrize(
    ("location", "peers", "error"),
    [
        ("nowhere", {}, "'nowhere' is not in the chain table"),
        ("inp", {"inp": [Hop.parse("10.0.0.1:1")]}, "own: not a peer"),
        ("inp", {"trp": [Hop.parse("10.0.0.1:1")]}, "no --peer or --site for table locations egp"),
    ],
)
def test_inconsistent_routes_are_refused(table, location, peers, error):
    sites = [(ipaddress.ip_network("10.4.0.0/24"), "server")]
    with pytest.raises(ValueError, match=error):
        ChainRoutes(table, location, peers, sites, 1 << 20)


def _server(seen: list[bytes]) -> socket.socket:
    """Answers each connection with the sha256 of what it got and who it came from."""
    srv = socket.create_server(("127.0.0.1", 0))

    def one(conn: socket.socket) -> None:
        with conn:
            data = b""
            while chunk := conn.recv(1 << 16):
                data += chunk
            seen.append(data)
            conn.sendall(hashlib.sha256(data).hexdigest().encode())

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv


def _start(proxy: Proxy) -> int:
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return proxy.listener.getsockname()[1]


def _send(port: int, data: bytes) -> bytes:
    """What comes back for data; b"" if the proxy closed on us (then, by
    timing, our write, shutdown or read may be the one to fail)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        answer = b""
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(1 << 16):
                answer += chunk
        except TimeoutError:
            raise
        except OSError:  # reset, broken pipe, not connected
            return b""
    return answer


def test_three_proxies_pass_a_flow_along_its_chain(table, tmp_path: Path):
    seen: list[bytes] = []
    srv = _server(seen)
    loopback = Chained((ipaddress.ip_network("127.0.0.0/8"),))
    egp = Proxy(("127.0.0.1", 0), None, None, chained=loopback)
    trp = Proxy(("127.0.0.1", 0), None, None, chained=loopback)
    egp_port, trp_port = _start(egp), _start(trp)
    peers = {"trp": [Hop.of("127.0.0.1", trp_port)], "egp": [Hop.of("127.0.0.1", egp_port)]}
    sites = [(ipaddress.ip_network("127.0.0.1/32"), "server")]
    routes = ChainRoutes(table, "inp", peers, sites, 500_000)
    inp = Proxy(("127.0.0.1", 0), ("127.0.0.1", srv.getsockname()[1]), None, routes=routes)
    payload = bytes(range(256)) * 4000
    try:
        answer = _send(_start(inp), payload)
    finally:
        srv.close()
    # The server got the client's bytes, no header: the last proxy strips it.
    assert answer.decode() == hashlib.sha256(payload).hexdigest()
    assert seen == [payload]
    chain = [e for e in inp.stats.to_json()["events"] if e["event"] == "chain"]
    assert chain and chain[0]["path"] == ["inp", "trp", "egp", "server"]
    assert trp.stats.flows == egp.stats.flows == 1


def test_a_chained_proxy_closes_on_untrusted_peers_and_bad_headers():
    seen: list[bytes] = []
    srv = _server(seen)
    dest = Hop.of("127.0.0.1", srv.getsockname()[1])
    elsewhere = Chained((ipaddress.ip_network("10.0.0.0/8"),))
    strict = _start(Proxy(("127.0.0.1", 0), None, None, chained=elsewhere))
    loopback = Chained((ipaddress.ip_network("127.0.0.0/8"),))
    trusting = Proxy(("127.0.0.1", 0), None, None, chained=loopback)
    port = _start(trusting)
    header = ppv2.ChainHeader(Hop.of("127.0.0.1", 1), dest).encode()
    try:
        assert _send(strict, header + b"x") == b""  # closed, never relayed
        assert _send(port, b"GET / HTTP/1.1\r\n\r\n") == b""
        assert _send(port, header + b"hello") == hashlib.sha256(b"hello").hexdigest().encode()
    finally:
        srv.close()
    assert seen == [b"hello"]
    assert trusting.stats.refused == {"no_upstream": 1}


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--chained"], "--chained needs --chain-from"),
        (["--upstream", "10.4.0.2:9000", "--chain-from", "10.0.0.0/8"], "--chain-from goes with"),
        (["--upstream", "10.4.0.2:9000", "--location", "inp"], "go with --chain-table"),
        (["--upstream", "10.4.0.2:9000", "--chain-table", "T"], "needs --location"),
        (["--chained", "--chain-from", "10.0.0.0/8", "--chain-table", "T"], "not a --chained"),
        (["--chained", "--chain-from", "10.0.0.0/33"], "'10.0.0.0/33'"),
        (
            [
                "--upstream",
                "10.4.0.2:9000",
                "--chain-table",
                "T",
                "--location",
                "inp",
                "--peer",
                "trp=10.2.0.2:8000",
                "--site",
                "10.4.0.0/24=server",
            ],
            "no --peer or --site for table locations egp",
        ),
        (
            [
                "--upstream",
                "10.4.0.2:9000",
                "--chain-table",
                "T",
                "--location",
                "inp",
                "--peer",
                "trp=name:80",
            ],
            "--peer trp=name:80",
        ),
    ],
)
def test_the_proxys_chain_options_are_checked(table, tmp_path: Path, capsys, args, error):
    from mosto.cli import main

    table.save(tmp_path / "t.npz")
    args = [str(tmp_path / "t.npz") if a == "T" else a for a in args]
    assert main(["proxy", "--listen", "127.0.0.1:0", "--agent", "", *args]) == 2
    assert error in capsys.readouterr().err
