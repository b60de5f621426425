"""`mosto bmv2 shell`: p4runtime-shell connected to a running switch, for
inspecting and poking entries by hand (`TableEntry("MostoIngress.splice.
mosto_splice").read(lambda e: print(e))`). The agent keeps its own small
P4Runtime client (mosto.targets.bmv2.p4runtime): it needs digests, idle
notifications and batched writes on one stream, which the shell's module-level
global client does not offer to a long-running program."""

from __future__ import annotations

import argparse
import os
import sys

from mosto.cli import CliError

# Below any primary's: the shell reads (and a user may write only when no
# agent is the primary controller), and it never takes mastership from one.
BACKUP_ELECTION_ID = "0,0"


def _shell(args: argparse.Namespace) -> int:
    try:
        import p4runtime_sh  # noqa: F401  (installed with mosto's bmv2 extra)
    except ImportError:
        raise CliError("p4runtime-shell is not installed (pip install 'mosto[bmv2]')") from None
    argv = [sys.executable, "-m", "p4runtime_sh", "--grpc-addr", args.grpc_addr]
    argv += ["--device-id", str(args.device_id), "--election-id", args.election_id]
    os.execv(sys.executable, argv)  # the shell owns the terminal from here
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    bm = sub.add_parser("bmv2", help="tools for the BMv2 target")
    bsub = bm.add_subparsers(dest="bmv2_command", required=True, metavar="ACTION")
    p = bsub.add_parser("shell", help="p4runtime-shell on the running switch (mosto's P4Info)")
    p.add_argument("--grpc-addr", default="127.0.0.1:9559", help="P4Runtime server")
    p.add_argument("--device-id", type=int, default=0)
    p.add_argument(
        "--election-id",
        default=BACKUP_ELECTION_ID,
        metavar="HIGH,LOW",
        help=f"P4Runtime election id (default {BACKUP_ELECTION_ID}: a read-only backup "
        "beside the agent)",
    )
    p.set_defaults(func=_shell)
