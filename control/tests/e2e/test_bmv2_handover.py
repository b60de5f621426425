"""The agent driving BMv2: a real TCP download through a proxy, handed over to
the P4 program on simple_switch_grpc. Runs under `make bmv2-test`; without
p4c and BMv2 it is skipped (the reason is printed).

    client [c0]--[w0] switch [w1]--[s0] server        BMv2 ports 0..3: w0..w3
                  [w2]  [w3]                          w2, w3 face the proxy;
                   |     |                            the agent talks P4Runtime
              [pc] proxy [ps]   (+ a management link)  over the management link
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from processes import BIN, Processes, mosto, traffic, wait_for

pytestmark = [
    pytest.mark.skipif(
        not (shutil.which("p4c-bm2-ss") and shutil.which("simple_switch_grpc")),
        reason="p4c-bm2-ss / simple_switch_grpc not on PATH (make bmv2-test)",
    ),
]

MAC = {
    "c0": "02:00:00:00:01:01",
    "pc": "02:00:00:00:01:02",
    "ps": "02:00:00:00:02:02",
    "s0": "02:00:00:00:02:01",
}
PORT = {"c0": 0, "s0": 1, "pc": 2, "ps": 3}  # the switch port each host link ends on
MGMT_PROXY, MGMT_SWITCH = "192.168.77.1", "192.168.77.2"


@pytest.fixture(scope="module")
def lab():
    from bmv2 import switch
    from netns import create, remove, veth

    tag = os.urandom(2).hex()
    names = {r: f"mb{tag}-{r}" for r in ("client", "proxy", "server", "switch")}
    ns = {r: create(n) for r, n in names.items()}
    try:
        for host, role in (("c0", "client"), ("pc", "proxy"), ("ps", "proxy"), ("s0", "server")):
            veth(ns[role], host, ns["switch"], f"w{PORT[host]}", a_mac=MAC[host])
        veth(ns["proxy"], "pm", ns["switch"], "wm")
        ns["proxy"].sh("ip", "addr", "add", f"{MGMT_PROXY}/30", "dev", "pm")
        ns["switch"].sh("ip", "addr", "add", f"{MGMT_SWITCH}/30", "dev", "wm")
        for role, ifname, cidr in (
            ("client", "c0", "10.1.0.1/24"),
            ("proxy", "pc", "10.1.0.2/24"),
            ("proxy", "ps", "10.2.0.2/24"),
            ("server", "s0", "10.2.0.1/24"),
        ):
            ns[role].sh("ip", "addr", "add", cidr, "dev", ifname)
            ns[role].sh("ethtool", "-K", ifname, "tx", "off")
        ns["client"].sh("ip", "route", "add", "default", "via", "10.1.0.2")
        ns["server"].sh("ip", "route", "add", "default", "via", "10.2.0.2")
        # Static neighbours: the switch floods nothing, so no ARP.
        for role, ip, ifname, peer in (
            ("client", "10.1.0.2", "c0", "pc"),
            ("proxy", "10.1.0.1", "pc", "c0"),
            ("proxy", "10.2.0.1", "ps", "s0"),
            ("server", "10.2.0.2", "s0", "ps"),
        ):
            ns[role].sh(
                "ip", "neigh", "replace", ip, "lladdr", MAC[peer], "dev", ifname, "nud", "permanent"
            )
        for n in ns.values():
            n.quiet()
        with switch(ns["switch"], ["w0", "w1", "w2", "w3"], grpc_host=MGMT_SWITCH) as params:
            # Plain forwarding for the hosts, written before the agent takes over
            # (it keeps the pipeline it finds), from the proxy's namespace.
            script = (
                "import sys; from mosto.targets.bmv2.target import Bmv2Target\n"
                "t = Bmv2Target(sys.argv[1], 0, sys.argv[2], sys.argv[3])\n"
                "for mac, port in zip(sys.argv[4::2], sys.argv[5::2]):\n"
                "    t.add_l2(mac, int(port))\n"
                "t.close()\n"
            )
            macs = [x for h, port in PORT.items() for x in (MAC[h], str(port))]
            ns["proxy"].sh(
                str(BIN / "python"),
                "-c",
                script,
                params["grpc_addr"],
                params["p4info"],
                params["bmv2_json"],
                *macs,
            )
            yield ns, params
    finally:
        for n in names.values():
            remove(n)


def test_download_handed_over_to_bmv2(lab):
    ns, params = lab
    tmp = Path(tempfile.mkdtemp(prefix="mosto-bmv2-e2e-"))
    sock = str(tmp / "agent.sock")
    with Processes(tmp) as procs:
        procs.spawn(
            ns["server"], traffic("serve", "--listen", "0.0.0.0:9000"), "server.log", ready=True
        )
        procs.spawn(
            ns["proxy"],
            mosto(
                "agent",
                "--target",
                "bmv2",
                "--grpc-addr",
                params["grpc_addr"],
                "--port",
                "pc=0",
                "--port",
                "ps=1",
                "--socket",
                sock,
                "--grace",
                "0.5",
            ),
            "agent.log",
        )
        wait_for(lambda: os.path.exists(sock), 20, "the agent")
        stats = tmp / "proxy.json"
        procs.spawn(
            ns["proxy"],
            mosto(
                "proxy",
                "--listen",
                "0.0.0.0:8000",
                "--upstream",
                "10.2.0.1:9000",
                "--agent",
                sock,
                "--handover-after",
                "256K",
                "--stats-file",
                str(stats),
            ),
            "proxy.log",
        )
        wait_for(stats.exists, 10, "the proxy")
        out = ns["client"].sh(
            *traffic("fetch", "--connect", "10.1.0.2:8000", "--size", "4M"), check=False
        )
        result = json.loads(out.stdout or "{}")
        assert result.get("ok"), (result, out.stderr, (tmp / "agent.log").read_text()[-2000:])

        def settled() -> dict | None:
            st = json.loads(stats.read_text())
            return st if st["handed_over"] or st["refused"] else None

        st = wait_for(settled, 5, "the hand-over")
        assert st["handed_over"] == 1, st
        assert st["relayed_bytes"] < 4 << 20
        # FIN both ways went through the switch; the agent removed the entries.
        listed = wait_for(
            lambda: (
                json.loads(ns["proxy"].sh(*mosto("ctl", "list", "--json", "--socket", sock)).stdout)
                == []
                or None
            ),
            10,
            "the splice's removal",
        )
        assert listed
