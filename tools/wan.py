"""MOSTO on a chain topology (topology.py's chain form): the proxies' RTT
matrix measured over the emulated links, the chain table made from it by
`mosto chains precompute`, and the reference proxies started as a chain:
the ingress proxy looks each flow's chain up, the others follow its header
(control/mosto/proxy/PPV2.md). Used by `make demo-wan`, the chain e2e tests
and `mosto repro fig5`.

Locations are the proxies' roles (inp, trp1, ..., egp) and "server": the
server is a node of the matrix too, so the lookup from the ingress proxy to
the server's site picks the egress proxy as well (the paper picks the
location nearest the destination; a proxy next to the server is what the
cost prefers anyway).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import REPO, Processes, mosto, wait_for  # noqa: E402
from topology import Chain  # noqa: E402

SERVER = "server"
PROXY_PORT = 8000
RTT_TOOL = REPO / "tools" / "rtt.py"
PYTHON = REPO / ".venv" / "bin" / "python"


def role(ch: Chain, k: int) -> str:
    """The location name of proxy k (0 is the one nearest the client)."""
    return ch.proxies[k].name.rsplit("-", 1)[1]


def listen_addr(ch: Chain, k: int, v6: bool = False) -> str:
    """Proxy k's address on its client side."""
    return ch.addr6(k, "b") if v6 else ch.addr4(k, "b")


def hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _targets(ch: Chain, ks: Sequence[int]) -> list[tuple[str, object, str]]:
    """(name, namespace, address pinged) of the chosen proxies and the server."""
    out = [(role(ch, k), ch.proxies[k], listen_addr(ch, k)) for k in ks]
    return [*out, (SERVER, ch.server, ch.server4)]


def rtt_matrix(ch: Chain, proxies: Sequence[int] | None = None, count: int = 10) -> dict:
    """{"nodes", "rtt"} of the chosen proxies (all by default) and the
    server: the median of count ICMP echoes for every pair, each pair
    measured once from its node nearer the client (so the matrix is
    symmetric, as the chain code requires). One rtt.py run per source node,
    all at once: a pair's echoes are in flight together, not one by one."""
    ks = list(range(len(ch.proxies))) if proxies is None else list(proxies)
    nodes = _targets(ch, ks)
    n = len(nodes)
    rtt = [[0.0] * n for _ in range(n)]
    tools = str(RTT_TOOL.parent)
    script = (
        f"import json, sys; sys.path.insert(0, {tools!r}); import rtt; "
        f"print(json.dumps([rtt.measure(a, {count}, 0.01, 56, 2.0) for a in sys.argv[1:]]))"
    )
    results: dict[int, list[dict]] = {}

    def measure(i: int) -> None:
        ns = nodes[i][1]
        addrs = [nodes[j][2] for j in range(i + 1, n)]
        out = ns.sh(str(PYTHON), "-c", script, *addrs).stdout  # type: ignore[attr-defined]
        results[i] = json.loads(out)

    threads = [threading.Thread(target=measure, args=(i,)) for i in range(n - 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(n - 1):
        for j, res in zip(range(i + 1, n), results[i], strict=True):
            if not res["rtt_ms"]:
                raise RuntimeError(f"no echo from {nodes[j][0]} to {nodes[i][0]}")
            rtt[i][j] = rtt[j][i] = round(statistics.median(res["rtt_ms"]), 3)
    return {"nodes": [name for name, _, _ in nodes], "rtt": rtt}


def precompute(matrix: dict, out: Path) -> Path:
    """The chain table of a matrix, by `mosto chains precompute`."""
    src = out.with_suffix(".json")
    src.write_text(json.dumps(matrix))
    p = subprocess.run(mosto("chains", "precompute", str(src), "-o", str(out)), capture_output=True)
    if p.returncode:
        raise RuntimeError(f"mosto chains precompute: {p.stderr.decode().strip()}")
    return out


def lookup(table: Path, src: str, size: int) -> list[str]:
    """The chain `mosto chains lookup` gives for a transfer of size bytes."""
    cmd = mosto("chains", "lookup", str(table), src, SERVER, "--size", str(size), "--json")
    return json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)["path"]


def proxy_args(
    ch: Chain,
    k: int,
    table: Path,
    names: Sequence[str],
    server_port: int,
    expect_bytes: int,
    ingress: bool,
    port: int = PROXY_PORT,
    v6: bool = False,
    peer_port: int | None = None,
) -> list[str]:
    """`mosto proxy` options for proxy k: the ingress one looks chains up in
    table (its locations: names) for flows to the server (on IPv6 if v6), a
    chained one takes headers from any link of the chain. Listens on both
    families; the other proxies listen on peer_port (port if None)."""
    args = ["proxy", "--listen", f"[::]:{port}"]
    if not ingress:
        return [*args, "--chained", "--chain-from", "10.0.0.0/8", "--chain-from", "fd00::/8"]
    args += ["--upstream", hostport(ch.server6 if v6 else ch.server4, server_port)]
    args += ["--chain-table", str(table), "--location", role(ch, k)]
    args += ["--expect-bytes", str(expect_bytes)]
    for j in range(len(ch.proxies)):
        if role(ch, j) in names and j != k:
            for v6 in (False, True):
                where = hostport(listen_addr(ch, j, v6), peer_port or port)
                args += ["--peer", f"{role(ch, j)}={where}"]
    last = len(ch.links) - 1
    args += [
        "--site",
        f"10.{last + 1}.0.0/24={SERVER}",
        "--site",
        f"fd{last + 1:02x}::/64={SERVER}",
    ]
    return args


def start_proxies(
    ch: Chain,
    procs: Processes,
    table: Path,
    ks: Sequence[int],
    server_port: int,
    expect_bytes: int,
    extra: dict[int, list[str]] | None = None,
    port: int = PROXY_PORT,
    tag: str = "",
    v6: bool = False,
) -> dict[str, Path]:
    """The proxies ks (ks[0] the ingress one, which looks chains up among
    ks, for flows to the server, on IPv6 if v6), each with extra[k] options
    (an agent, a hand-over policy; none: it only relays); their stats files
    by location, once all are listening."""
    names = [role(ch, k) for k in ks]
    stats = {}
    for k in ks:
        name = role(ch, k)
        path = procs.logdir / f"{tag}{name}.json"
        stats[name] = path
        cmd = proxy_args(ch, k, table, names, server_port, expect_bytes, k == ks[0], port, v6)
        cmd += [*(extra or {}).get(k, ["--agent", ""]), "--stats-file", str(path)]
        procs.spawn(ch.proxies[k], mosto(*cmd), f"{tag}{name}.log")
    for path in stats.values():
        wait_for(path.exists, 15, "the proxies' stats files")
    return stats
