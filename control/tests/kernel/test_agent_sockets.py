"""The agent's checks on real (loopback) sockets: refusals that leave the
sockets as they were. Reading a socket's state takes TCP_REPAIR (root)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from mosto.agent.core import Agent
from mosto.agent.kernel.tcpstate import probe_repair
from mosto.targets.memory import MemoryTarget
from mosto.wire import refusal


@pytest.fixture
def loopback_pair():
    srv = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(srv.getsockname())
    p, _ = srv.accept()
    yield p, c
    for s in (srv, c, p):
        s.close()


def test_agent_refuses_a_socket_with_unread_data_and_leaves_it_working(loopback_pair):
    proxy_side, peer = loopback_pair
    peer.sendall(b"not read yet")
    agent = Agent(MemoryTarget())
    time.sleep(0.05)
    with pytest.raises(refusal.BuffersNotEmpty, match="12 bytes unread"):
        agent.offload(proxy_side, peer)
    assert proxy_side.recv(100) == b"not read yet"  # still a normal socket
    assert agent.results == {"buffers_not_empty": 1}


def test_agent_refuses_what_is_not_a_connected_tcp_socket(loopback_pair):
    agent = Agent(MemoryTarget())
    tcp, _ = loopback_pair
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(refusal.NotTcp, match="client descriptor"):
            agent.offload(udp, tcp)
    with socket.socket() as unconnected:
        with pytest.raises(refusal.NotConnected, match="server socket"):
            agent.offload(tcp, unconnected)


def test_repair_probe_says_why_an_unprivileged_agent_cannot_work():
    assert probe_repair() is None  # root
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-c",
         "from mosto.agent.kernel.tcpstate import probe_repair; print(probe_repair())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout == "TCP_REPAIR needs CAP_NET_ADMIN: run the agent as root\n"


def test_a_trip_through_repair_mode_keeps_the_proxys_so_reuseaddr(loopback_pair):
    """Leaving repair mode resets the kernel's sk_reuse: a proxy whose accepted
    sockets lost SO_REUSEADDR could not bind its port again past a TIME_WAIT."""
    from mosto.agent.kernel.poke import prompt_ack

    proxy_side, peer = loopback_pair
    proxy_side.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    prompt_ack(proxy_side)  # what register does to each socket
    assert proxy_side.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    prompt_ack(peer)  # and a socket without it stays without
    assert peer.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0


def test_a_flow_past_established_is_not_registered(loopback_pair):
    proxy_side, peer = loopback_pair
    peer.shutdown(socket.SHUT_WR)  # the client's FIN: proxy_side is in CLOSE_WAIT
    time.sleep(0.05)
    with pytest.raises(refusal.NotEstablished, match="client connection is in TCP state"):
        Agent(MemoryTarget()).register(proxy_side, peer)
