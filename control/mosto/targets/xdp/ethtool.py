"""A driver's own counters (`ethtool -S`), through the SIOCETHTOOL ioctl, and
the one the hairpin path needs watched: XDP_TX frames the driver failed to
send (veth: rx_queue_N_xdp_tx_errors, virtio_net: txN_xdp_tx_drops; the
program never learns of them, its verdict was XDP_TX). Read in the caller's network namespace."""

from __future__ import annotations

import ctypes
import fcntl
import re
import socket
import struct

SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS, ETHTOOL_GSTATS, ETHTOOL_GSSET_INFO = 0x1B, 0x1D, 0x37
ETH_SS_STATS = 1
ETH_GSTRING_LEN = 32
IFNAMSIZ = 16
# Per queue, so nothing is counted twice: veth's, virtio_net's names.
XDP_TX_ERRORS = re.compile(r"rx_queue_\d+_xdp_tx_errors|tx\d+_xdp_tx_drops")


def _ioctl(ifname: str, buf: ctypes.Array) -> None:
    ifreq = struct.pack(f"{IFNAMSIZ}sP", ifname.encode(), ctypes.addressof(buf))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)


def driver_stats(ifname: str) -> dict[str, int]:
    """Every counter the driver reports, by name; {} for a driver with none.
    OSError if the interface does not exist."""
    info = ctypes.create_string_buffer(
        struct.pack("=IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_STATS, 0)
    )
    try:
        _ioctl(ifname, info)
    except OSError as exc:
        if exc.errno == 95:  # EOPNOTSUPP: no driver counters
            return {}
        raise
    _, _, mask, count = struct.unpack("=IIQI", info.raw[:20])
    if not mask or not count:
        return {}
    names = ctypes.create_string_buffer(12 + count * ETH_GSTRING_LEN)
    struct.pack_into("=III", names, 0, ETHTOOL_GSTRINGS, ETH_SS_STATS, count)
    _ioctl(ifname, names)
    values = ctypes.create_string_buffer(8 + count * 8)
    struct.pack_into("=II", values, 0, ETHTOOL_GSTATS, count)
    _ioctl(ifname, values)
    out = {}
    for i in range(count):
        raw = names.raw[12 + i * ETH_GSTRING_LEN : 12 + (i + 1) * ETH_GSTRING_LEN]
        (value,) = struct.unpack_from("=Q", values.raw, 8 + i * 8)
        out[raw.split(b"\0", 1)[0].decode()] = value
    return out


def xdp_tx_errors(ifname: str) -> int | None:
    """The sum of the driver's XDP_TX error counters (every queue), or None if
    it reports none by a name we know (XDP_TX_ERRORS)."""
    found = [v for k, v in driver_stats(ifname).items() if XDP_TX_ERRORS.fullmatch(k)]
    return sum(found) if found else None
