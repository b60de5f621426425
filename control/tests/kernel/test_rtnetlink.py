"""The agent's route, link and neighbour lookups (rtnetlink.py, netinfo.py,
sockinfo.is_local) in a network namespace the test makes and removes, checked
against what iproute2 says of the same namespace: root."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import uuid

import pytest

SETUP = [
    "link add d0 type veth peer name d1",
    "link set d0 address 02:00:00:00:09:01",
    "link set d0 up",
    "link set d1 up",
    "addr add 10.9.0.1/24 dev d0",
    "addr add fd00:9::1/64 dev d0 nodad",
    "neigh add 10.9.0.2 lladdr 02:00:00:00:09:02 dev d0 nud permanent",
    "neigh add fd00:9::2 lladdr 02:00:00:00:09:03 dev d0 nud permanent",
    "neigh add 10.9.0.254 lladdr 02:00:00:00:09:fe dev d0 nud permanent",
    "route add 198.51.100.0/24 via 10.9.0.254 dev d0",
]

LOOKUPS = """
import ipaddress, json, sys
from mosto.agent.kernel import netinfo, sockinfo

out = {}
for name in sys.argv[1:]:
    addr = ipaddress.ip_address(name)
    try:
        hop = netinfo._lookup(addr)
        got = [hop.ifname, hop.ifindex, hop.smac, hop.dmac]
    except netinfo.NoRoute as exc:
        got = str(exc)
    out[name] = {"hop": got, "local": sockinfo.is_local(addr)}
print(json.dumps(out))
"""

ADDRESSES = {  # what each one is in the namespace
    "10.9.0.2": "neighbour",
    "fd00:9::2": "neighbour",
    "198.51.100.7": "via 10.9.0.254",
    "::ffff:10.9.0.2": "neighbour, v4-mapped",
    "10.9.0.3": "on-link, no neighbour entry",
    "203.0.113.1": "no route",
    "10.9.0.1": "local",
    "fd00:9::1": "local",
}


@pytest.fixture(scope="module")
def netns():
    name = f"mosto-rtnl-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in SETUP:
            subprocess.run(["ip", "-n", name, *cmd.split()], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _ip(netns: str, *args: str) -> list:
    return json.loads(
        subprocess.run(
            ["ip", "-n", netns, "-j", *args], check=True, capture_output=True, text=True
        ).stdout
    )


@pytest.fixture(scope="module")
def looked_up(netns):
    p = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", LOOKUPS, *ADDRESSES],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize("addr", ["10.9.0.2", "fd00:9::2", "198.51.100.7", "::ffff:10.9.0.2"])
def test_a_next_hop_is_the_one_iproute2_names(netns, looked_up, addr):
    plain = addr.removeprefix("::ffff:")
    route = _ip(netns, "route", "get", plain)[0]
    via = route.get("gateway", plain)
    link = _ip(netns, "link", "show", "dev", route["dev"])[0]
    neigh = [n for n in _ip(netns, "neigh", "show", "dev", route["dev"]) if n["dst"] == via]
    assert looked_up[addr] == {
        "hop": [route["dev"], link["ifindex"], link["address"], neigh[0]["lladdr"]],
        "local": False,
    }, ADDRESSES[addr]


def test_no_neighbour_entry_or_no_route_is_no_route(looked_up):
    assert looked_up["10.9.0.3"] == {"hop": "no neighbour entry for 10.9.0.3 on d0", "local": False}
    hop = looked_up["203.0.113.1"]["hop"]
    assert hop.startswith("no route to 203.0.113.1: "), hop
    assert looked_up["203.0.113.1"]["local"] is False


@pytest.mark.parametrize("addr", ["10.9.0.1", "fd00:9::1"])
def test_the_namespaces_own_addresses_are_local(looked_up, addr):
    assert looked_up[addr]["local"] is True


def test_a_late_answer_to_an_earlier_request_is_skipped():
    """A request cut short (an exception between send and recv) leaves its
    answer queued on the thread's socket: the next request must not take it."""
    from mosto.agent.kernel import netlink, rtnetlink
    from mosto.agent.kernel.threadsock import thread_socket

    nl = thread_socket(socket.AF_NETLINK, socket.SOCK_DGRAM, rtnetlink.NETLINK_ROUTE)
    body = rtnetlink.RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0)
    body += netlink.attribute(rtnetlink.RTA_DST, socket.inet_aton("127.0.0.1"))
    header = netlink.NLMSG.pack(netlink.NLMSG.size + len(body), rtnetlink.RTM_GETROUTE, 1, 0, 0)
    nl.send(header + body)  # sequence number 0: never one of request()'s
    assert rtnetlink.link(socket.if_nametoindex("lo")) == ("lo", "00:00:00:00:00:00")
    assert rtnetlink.route(ipaddress.ip_address("127.0.0.1")).kind == rtnetlink.RTN_LOCAL
