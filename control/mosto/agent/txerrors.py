"""The drivers' XDP_TX error counters of the interfaces XDP runs on: a frame
the program sent back out (a hairpin) that the driver could not send is lost
without the program knowing (ebpf/README.md, Hairpin). The reaper checks them
and logs a rise; the metrics endpoint shows them."""

from __future__ import annotations

import logging
import threading

from mosto.targets.xdp.ethtool import xdp_tx_errors

log = logging.getLogger("mosto.agent")


class TxErrors:
    def __init__(self, ifnames: list[str]):
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        for ifname in ifnames:
            value = self._read(ifname)
            if value is None:
                log.info("%s: the driver reports no XDP_TX error counter: not watched", ifname)
            else:
                self._last[ifname] = value
                log.info("%s: watching xdp_tx_errors (now %d)", ifname, value)

    @staticmethod
    def _read(ifname: str) -> int | None:
        try:
            return xdp_tx_errors(ifname)
        except OSError:  # the interface went away
            return None

    def check(self) -> None:
        """Reads every watched counter; a rise is logged."""
        with self._lock:
            for ifname, old in list(self._last.items()):
                new = self._read(ifname)
                if new is None or new == old:
                    continue
                self._last[ifname] = new
                if new > old:
                    log.warning(
                        "%s: %d XDP_TX frames could not be sent since the last check "
                        "(xdp_tx_errors %d): hairpinned frames are being lost",
                        ifname,
                        new - old,
                        new,
                    )

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._last)
