"""Entries mosto writes to BMv2 read back the same through p4runtime-shell, the
P4Runtime tool the field uses by hand (`mosto bmv2 shell` opens it), while
mosto's client stays the primary controller. Skipped without p4c and BMv2."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from bmv2 import switch
from netns import namespace, veth

pytestmark = pytest.mark.skipif(
    not (shutil.which("p4c-bm2-ss") and shutil.which("simple_switch_grpc")),
    reason="p4c-bm2-ss / simple_switch_grpc not on PATH (make bmv2-test)",
)

# Runs in the switch's namespace, where its P4Runtime server listens.
CHECK = r"""
import ipaddress, json, sys
import p4runtime_sh.shell as sh
from mosto.dataplane.entry import Entry, FlowKey
from mosto.targets.bmv2 import encoding as enc
from mosto.targets.bmv2.target import Bmv2Target

grpc_addr, device_id, p4info, bmv2_json = sys.argv[1:5]
ip = ipaddress.ip_address
entry = Entry(
    match=FlowKey(ip("10.1.0.1"), ip("10.1.0.2"), 40000, 8000),
    seq_delta=0x01020304, ack_delta=0xFFFFFF00,
    smac="02:00:00:00:02:02", dmac="02:00:00:00:02:01", egress=1,
    tsval_delta=7, tsecr_delta=0xFFFFFFF9, wscale_shift=-2,
    rewrite=FlowKey(ip("10.2.0.2"), ip("10.2.0.1"), 45000, 9000),
)
target = Bmv2Target(grpc_addr, int(device_id), p4info=p4info, device_config=bmv2_json)
entry_id = target.add(entry)
written = enc.table_entry(target.names, entry, entry_id, 0)
sh.setup(device_id=int(device_id), grpc_addr=grpc_addr, election_id=(0, 0))  # a backup
rows = [row.msg() for row in sh.TableEntry(enc.SPLICE_TABLE).read()]
sh.teardown()
still_primary = target.entry_id(entry.match) == entry_id and target.delete(entry.match)
target.close()
print(json.dumps({
    "rows": len(rows),
    "same_table": rows[0].table_id == written.table_id,
    "same_match": list(rows[0].match) == list(written.match),
    "same_action": rows[0].action == written.action,
    "same_metadata": rows[0].metadata == written.metadata,
    "mosto_still_writes": bool(still_primary),
}))
"""


def test_entries_written_by_mosto_read_back_identically_through_p4runtime_shell():
    with namespace("msh") as ns:
        veth(ns, "sw0", ns, "sw0p")
        veth(ns, "sw1", ns, "sw1p")
        with switch(ns, ["sw0", "sw1"]) as params:
            args = [params[k] for k in ("grpc_addr", "device_id", "p4info", "bmv2_json")]
            out = ns.sh(sys.executable, "-c", CHECK, *args, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "rows": 1,
        "same_table": True,
        "same_match": True,
        "same_action": True,
        "same_metadata": True,
        "mosto_still_writes": True,
    }
