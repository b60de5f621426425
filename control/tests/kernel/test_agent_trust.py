"""The agent's checks of passed sockets and its neutralisation, on real kernel
sockets (loopback, and a network namespace of the test's own): root."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid

import pytest

from mosto.agent import trust
from mosto.agent.core import Agent, Quotas
from mosto.agent.kernel import neutral, sockinfo
from mosto.agent.kernel.tcpstate import TCP_QUEUE_SEQ, enter_repair, read_state
from mosto.agent.trust import Caller
from mosto.targets.memory import MemoryTarget
from mosto.wire import refusal

TCP_CLOSE = 7
ETH_P_ALL = 3


@pytest.fixture
def listener():
    srv = socket.create_server(("127.0.0.1", 0))
    yield srv
    srv.close()


@pytest.fixture(params=["127.0.0.1", "::1", "::ffff:127.0.0.1"], ids=["v4", "v6", "v4-mapped"])
def any_listener(request):
    """v4-mapped: an IPv6 socket talking IPv4 (a proxy listening on [::])."""
    host = request.param
    if host == "::ffff:127.0.0.1":
        srv = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
        to = ("::ffff:127.0.0.1", srv.getsockname()[1])  # the connecting end is mapped
    else:
        try:
            srv = socket.create_server((host, 0), family=socket.getaddrinfo(host, 0)[0][0])
        except OSError as exc:
            pytest.skip(f"no {host} here: {exc.strerror}")
        to = srv.getsockname()[:2]
    yield srv, to
    srv.close()


def _pair(srv: socket.socket, to: tuple | None = None) -> tuple[socket.socket, socket.socket]:
    """(the connecting end, the accepted end)."""
    c = socket.create_connection(to or srv.getsockname()[:2])
    a, _ = srv.accept()
    return c, a


def _state(s: socket.socket) -> int:
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


class Tap:
    """Frames on lo to or from one port (others use loopback at the same time)."""

    def __init__(self, port: int):
        self.port = port
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind(("lo", ETH_P_ALL))
        self.sock.setblocking(False)

    def frames(self) -> list[bytes]:
        seen = []
        while True:
            try:
                f = self.sock.recv(65535)
            except BlockingIOError:
                return seen
            kind = struct.unpack_from("!H", f, 12)[0] if len(f) >= 58 else 0
            if kind == 0x0800 and f[23] == 6:
                l4 = 14 + (f[14] & 0xF) * 4
            elif kind == 0x86DD and f[20] == 6:
                l4 = 54
            else:
                continue
            if self.port in struct.unpack_from("!HH", f, l4):
                seen.append(f)

    def close(self) -> None:
        self.sock.close()


def test_neutralised_socket_sends_nothing_keeps_the_peer_and_the_tuple(any_listener):
    proxy, peer = _pair(*any_listener)
    local, remote = proxy.getsockname(), proxy.getpeername()
    tap = Tap(local[1])
    time.sleep(0.05)
    tap.frames()  # the handshake
    enter_repair(proxy)
    st = read_state(proxy, repair=True)
    r = neutral.Reservation(proxy.family, local, st.snd_nxt, st.rcv_nxt)
    neutral.neutralise(proxy)
    r.connect(remote)
    assert _state(proxy) == TCP_CLOSE and not sockinfo.in_repair(proxy)
    with pytest.raises(OSError) as exc:  # no repair powers left to the holder
        proxy.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, struct.pack("I", 1))
    assert exc.value.errno in (errno.EPERM, errno.EINVAL)
    proxy.close()
    # The four-tuple is taken while the reservation lives, with or without SO_REUSEADDR.
    for reuse in (0, 1):
        with socket.socket(proxy.family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
            with pytest.raises(OSError) as exc:
                s.bind(local)
                s.connect(remote)
            assert exc.value.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
    time.sleep(0.05)
    assert tap.frames() == [], "the proxy host sent something"
    assert _state(peer) == 1  # ESTABLISHED: the peer noticed nothing
    r.close()
    time.sleep(0.05)
    assert tap.frames() == []
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # the flow ends (an RST: the accepted end is gone at once)
    with socket.socket(proxy.family) as s:
        s.bind(local)
        s.connect(remote)  # free again
    tap.close()


def test_a_socket_already_in_repair_mode_is_refused_and_left_in_it(listener):
    proxy, peer = _pair(listener)
    other, _ = _pair(listener)
    enter_repair(proxy)
    with pytest.raises(refusal.InRepair):
        Agent(MemoryTarget()).offload(proxy, other)
    assert sockinfo.in_repair(proxy), "the agent switched repair off on a socket it did not"


def test_one_socket_twice_or_dup_is_refused(listener):
    proxy, _ = _pair(listener)
    agent = Agent(MemoryTarget())
    dup = socket.socket(fileno=os.dup(proxy.fileno()))
    for b in (proxy, dup):
        with pytest.raises(refusal.SameConnection):
            agent.register(proxy, b)
    dup.close()
    assert agent.stats()["learning"] == 0


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _in_netns(name: str, fn):
    """fn() run on a thread that entered netns name (setns is per thread)."""
    box: dict = {}

    def run() -> None:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            box["value"] = fn()
        except Exception as exc:
            box["error"] = exc
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_sockets_of_another_network_namespace_are_refused():
    name = f"mosto-trust-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)

        def make():
            srv = socket.create_server(("127.0.0.1", 0))
            c, a = _pair(srv)
            srv.close()
            return c, a

        c, a = _in_netns(name, make)
        with pytest.raises(refusal.WrongNamespace):
            Agent(MemoryTarget()).register(a, c)
        c.close()
        a.close()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _md5(s: socket.socket, peer: str) -> None:
    """struct tcp_md5sig: sockaddr_storage, flags, prefixlen, keylen, ifindex, key[80]."""
    addr = struct.pack("=HH4s", socket.AF_INET, 0, socket.inet_aton(peer)).ljust(128, b"\0")
    key = b"mosto-test"
    s.setsockopt(
        socket.IPPROTO_TCP,
        14,
        addr + struct.pack("=BBHI", 0, 0, len(key), 0) + key.ljust(80, b"\0"),
    )


def test_tcp_md5_connections_are_seen_and_refused():
    srv = socket.socket()
    _md5(srv, "127.0.0.1")
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.socket()
    _md5(c, "127.0.0.1")
    c.connect(srv.getsockname())
    a, _ = srv.accept()
    for s, name in ((c, "client"), (a, "server")):
        with pytest.raises(refusal.TcpAuth, match="TCP-MD5"):
            trust.check_auth(s, read_state(s), name)
    with socket.create_server(("127.0.0.1", 0)) as plain:
        p, q = _pair(plain)
        trust.check_auth(p, read_state(p), "client")  # unsigned: no refusal
        p.close()
        q.close()
    for s in (srv, c, a):
        s.close()


def _in_a_netns_of_its_own(script: str) -> subprocess.CompletedProcess:
    """A Python script run in a network namespace made for it and removed after."""
    name = f"mosto-trust-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        return subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


NOT_LOCAL_SCRIPT = """
import socket, subprocess, time
from mosto.agent.trust import LOCAL_CACHE_S
from mosto.agent.core import Agent, Quotas
from mosto.targets.memory import MemoryTarget
from mosto.wire import refusal
for cmd in ("ip link set lo up", "ip addr add 10.98.0.1/32 dev lo",
            "ip addr add 10.98.0.2/32 dev lo"):
    subprocess.run(cmd.split(), check=True)
srv = socket.create_server(("10.98.0.1", 7000))
ends = []
for _ in range(2):
    c = socket.socket()
    c.bind(("10.98.0.2", 0))
    c.connect(("10.98.0.1", 7000))
    ends.append((c, srv.accept()[0]))
agent = Agent(MemoryTarget())
agent.register(ends[0][0], ends[1][0])
print("local", flush=True)
subprocess.run("ip addr del 10.98.0.2/32 dev lo".split(), check=True)
time.sleep(LOCAL_CACHE_S + 0.1)  # the agent caches the answer that long
try:
    agent.register(ends[0][0], ends[1][0])
    print("accepted")
except refusal.Refused as exc:
    print(exc.code)
"""


def test_a_socket_whose_local_address_is_not_this_hosts_is_refused():
    """The connection outlived its address (as one made with IP_FREEBIND would
    never have had it): the agent's namespace, so the answer is not_local."""
    out = _in_a_netns_of_its_own(NOT_LOCAL_SCRIPT)
    assert out.stdout.split() == ["local", "not_local"], out.stderr


OUT_OF_DESCRIPTORS_SCRIPT = """
import ipaddress, json, resource, socket, subprocess, threading, time
from mosto.agent import trust
from mosto.agent.kernel import netinfo, sockinfo

for cmd in (
    "link add d0 type veth peer name d1",
    "link set d0 up",
    "addr add 10.9.0.1/24 dev d0",
    "neigh add 10.9.0.2 lladdr 02:00:00:00:09:02 dev d0 nud permanent",
):
    subprocess.run(["ip", *cmd.split()], check=True)
addr, peer = ipaddress.ip_address("10.9.0.1"), ipaddress.ip_address("10.9.0.2")
before = [trust._is_local(addr), netinfo.next_hop(peer).ifname]
# Both answers due for the reaper's refresh, which a thread of its own runs.
trust._local[addr] = (time.monotonic() - trust.LOCAL_CACHE_S / 2, before[0])
key = next(iter(netinfo._cache))
netinfo._cache[key] = (time.monotonic() - netinfo.CACHE_TTL_S / 2, netinfo._cache[key][1])
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
held = []
try:
    while True:
        held.append(socket.socket())
except OSError:
    pass
seen = {}

def reaper():
    try:
        sockinfo.is_local(addr)
        seen["lookup"] = "answered"
    except OSError as exc:
        seen["lookup"] = type(exc).__name__
    netinfo.refresh()
    trust.refresh_local()

t = threading.Thread(target=reaper)
t.start()
t.join()
for s in held:
    s.close()
seen["local"] = trust._local.get(addr, (0, None))[1]
seen["hop"] = getattr(netinfo._cache.get(key, (0, None))[1], "ifname", None)
print(json.dumps({"before": before, **seen}))
"""


def test_out_of_descriptors_a_lookup_fails_and_no_answer_is_cached():
    """pyroute2 opens an event loop per thread: with no descriptor free the
    lookup fails, which the agent once took, and cached, as "not local" (every
    hand-over refused not_local for a second after a descriptor flood)."""
    out = _in_a_netns_of_its_own(OUT_OF_DESCRIPTORS_SCRIPT)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {"before": [True, "d0"], "lookup": "OSError", "local": True, "hop": "d0"}, got


def test_learning_entries_are_limited_per_uid_and_root_is_not(listener):
    agent = Agent(MemoryTarget())
    agent.quotas = Quotas(learning=2)
    alice = Caller(1001, conn=1)
    pairs = [_pair(listener) for _ in range(6)]
    ends = [accepted for _, accepted in pairs]
    agent.register(ends[0], ends[1], alice)
    with pytest.raises(refusal.LimitReached, match="uid 1001"):
        agent.register(ends[2], ends[3], alice)
    agent.register(ends[2], ends[3], Caller(0))  # root: no quota
    agent.register(ends[4], ends[5], Caller(1002))  # another uid has its own
    assert agent.stats(alice)["learning"] == 2 and agent.stats()["learning"] == 6


HALF_CLOSE_SCRIPT = """
import json, socket, subprocess, time
from mosto.agent.core import Agent
from mosto.agent.kernel.hold import Holds
from mosto.targets.memory import MemoryTarget
subprocess.run("ip link set lo up".split(), check=True)
srv = socket.create_server(("127.0.0.1", 7000))
client, proxy_c = socket.create_connection(("127.0.0.1", 7000)), srv.accept()[0]
proxy_s, server = socket.create_connection(("127.0.0.1", 7000)), srv.accept()[0]
holds = Holds()
agent = Agent(MemoryTarget(), holds)
agent.hold(proxy_c, proxy_s)
held_before = len(agent._held)
client.shutdown(socket.SHUT_WR)  # the client's FIN: the proxy's client socket leaves ESTABLISHED
time.sleep(0.05)
agent.expire_holds()
out = {"before": held_before, "after": len(agent._held)}
agent.hold(proxy_s, server)  # another hold, of a pair we then unhold after a FIN
server.shutdown(socket.SHUT_WR)
time.sleep(0.05)
agent.unhold(proxy_s, server)
out["unhold"] = len(agent._held)
holds.close()
print(json.dumps(out))
"""


def test_a_fin_during_a_hold_lifts_both_sides_and_unhold_still_works():
    """A client that half-closes during the drain: the server's sender must not
    stay held until the timeout, and the proxy may still lift the hold itself."""
    out = _in_a_netns_of_its_own(HALF_CLOSE_SCRIPT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"before": 2, "after": 0, "unhold": 0}


BACKSTOP_SCRIPT = """
import ipaddress, json, time
from mosto.agent.kernel.hold import FREEZE_BACKSTOP_S, Holds
from mosto.dataplane.entry import FlowKey
flow = FlowKey(ipaddress.ip_address("10.9.0.1"), ipaddress.ip_address("10.9.0.2"), 1000, 2000)
holds = Holds(backstop_s=1)
holds.freeze(flow)
holds.hold(flow)
time.sleep(max(FREEZE_BACKSTOP_S, 1) + 1.5)  # the kernel times both out
out = {"listed": holds._nft.cmd("list set inet mosto_hold held4")[1].count("10.9.0")}
holds.thaw(flow)  # neither may fail: an offload's thaw comes in its finally
holds.release(flow)
out["held"] = holds.held(flow)
holds.close()
print(json.dumps(out))
"""


def test_holds_and_freezes_the_kernel_timed_out_are_lifted_without_an_error():
    out = _in_a_netns_of_its_own(BACKSTOP_SCRIPT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"listed": 0, "held": False}
