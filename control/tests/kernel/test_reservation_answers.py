"""Why the data plane drops a spliced flow's segments that it cannot
translate, instead of passing them (docs/security.md, ebpf/README.md): a
segment that reached the proxy host's stack would reach the agent's
reservation for the four-tuple, and the kernel answers it. Two network
namespaces of the test's own, a veth between them; root."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

PROXY, PEER = ("10.99.0.2", 8080), ("10.99.0.1", 40000)
SND_NXT, RCV_NXT = 1000, 5000
TCP_ACK, TCP_RST = 0x10, 0x04

# In the peer's namespace: sends each segment, reports what comes back on the
# four-tuple. Its own stack's RSTs (it has no socket) are dropped by nftables,
# so only the proxy side's answers reach the reservation's peer.
PEER_SCRIPT = r"""
import json, socket, sys, time
from scapy.layers.inet import IP, TCP
from scapy.sendrecv import send
proxy, peer = ("10.99.0.2", 8080), ("10.99.0.1", 40000)
cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
cap.bind((sys.argv[1], 0))
cap.settimeout(0.3)
out = []
for seq, ack, flags, data in json.loads(sys.argv[2]):
    send(IP(src=peer[0], dst=proxy[0]) / TCP(sport=peer[1], dport=proxy[1], seq=seq, ack=ack,
         flags=flags) / data.encode(), verbose=False)
    got = []
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        try:
            frame = cap.recv(2048)
        except TimeoutError:
            break
        ip = IP(frame[14:])
        if ip.src == proxy[0] and TCP in ip and ip[TCP].sport == proxy[1]:
            got.append([int(ip[TCP].flags), ip[TCP].seq, ip[TCP].ack])
    out.append(got)
print(json.dumps(out))
"""


# In the proxy's namespace: the agent's reservation for the tuple, held until stdin closes.
RESERVE = f"""
import socket, sys
from mosto.agent.kernel.neutral import Reservation
r = Reservation(socket.AF_INET, {PROXY!r}, {SND_NXT}, {RCV_NXT})
r.connect({PEER!r})
print("reserved", flush=True)
sys.stdin.read()
"""


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def test_a_reservation_acks_data_that_reaches_it_and_an_rst_frees_its_tuple():
    tag = uuid.uuid4().hex[:6]
    proxy_ns, peer_ns, veth = f"mrsv{tag}p", f"mrsv{tag}q", f"mrsv{tag}"
    _sh("ip", "netns", "add", proxy_ns)
    _sh("ip", "netns", "add", peer_ns)
    try:
        _sh("ip", "link", "add", veth + "a", "netns", peer_ns, "type", "veth",
            "peer", "name", veth + "b", "netns", proxy_ns)  # fmt: skip
        for ns, dev, addr in ((peer_ns, veth + "a", PEER[0]), (proxy_ns, veth + "b", PROXY[0])):
            _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
        _sh("ip", "netns", "exec", peer_ns, "nft", "add table ip t; "
            "add chain ip t out { type filter hook output priority 0; }; "
            "add rule ip t out tcp flags rst drop")  # fmt: skip
        hold = subprocess.Popen(
            ["ip", "netns", "exec", proxy_ns, sys.executable, "-c", RESERVE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert hold.stdout.readline().strip() == "reserved"
        segments = [
            (RCV_NXT, SND_NXT, "PA", "hello"),  # in window: taken, and ACKed
            (RCV_NXT + 900_000, SND_NXT, "PA", "bogus"),  # out of window: an ACK
            (RCV_NXT + 5, 0, "R", ""),  # in window: resets the reservation
            (RCV_NXT + 5, SND_NXT, "PA", "again"),  # the tuple is free: an RST
        ]
        out = subprocess.run(
            ["ip", "netns", "exec", peer_ns, sys.executable, "-c", PEER_SCRIPT, veth + "a",
             json.dumps(segments)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        hold.communicate("")
        data, bogus, rst, after = json.loads(out)
        assert [TCP_ACK, SND_NXT, RCV_NXT + 5] in data, data
        assert [f for f, _, _ in bogus] == [TCP_ACK], bogus
        assert rst == [], rst
        assert any(f & TCP_RST for f, _, _ in after), after
    finally:
        subprocess.run(["ip", "netns", "del", proxy_ns], check=False)
        subprocess.run(["ip", "netns", "del", peer_ns], check=False)
