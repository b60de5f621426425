"""The XDP target: load and attach the splice program, and drive its maps."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mosto.dataplane.counters import COUNTERS
from mosto.dataplane.entry import Entry, FlowKey
from mosto.targets.base import EntryStats, IdAllocator, SpliceEvent, TableFull, TargetError
from mosto.targets.xdp import abi, libbpf
from mosto.targets.xdp.bpffs import BpffsError, ensure_bpffs
from mosto.targets.xdp.features import MissingFeature, require_bpf_features
from mosto.targets.xdp.paths import DEFAULT_PIN_DIR, ObjectNotFound, find_object

__all__ = ["DEFAULT_PIN_DIR", "MAPS", "TargetError", "XdpTarget"]
PROGRAM = "mosto_splice_prog"
MAPS = ("mosto_splice", "mosto_stats", "mosto_counters", "mosto_tx_ports", "mosto_events")
MODES = {
    "native": libbpf.XDP_FLAGS_DRV_MODE,
    "generic": libbpf.XDP_FLAGS_SKB_MODE,
}


def ifindex_of(egress: int | str) -> int:
    if isinstance(egress, int):
        if egress <= 0:
            raise TargetError(f"egress {egress} is not an interface index")
        return egress
    try:
        return socket.if_nametoindex(egress)
    except OSError:
        raise TargetError(f"no interface named {egress!r}") from None


def ifname_of(ifindex: int) -> int | str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return ifindex


class XdpTarget:
    """The splice maps, pinned under pin_dir (or private when pin_dir is None),
    and, when loaded, the program that uses them."""

    max_entries = abi.MAX_ENTRIES

    def __init__(
        self,
        pin_dir: str | None = DEFAULT_PIN_DIR,
        obj_path: Path | str | None = None,
        load: bool = True,
    ):
        self.pin_dir = pin_dir
        self._obj: libbpf.BpfObject | None = None
        self._fds: dict[str, int] = {}
        self._own_fds: list[int] = []
        try:
            if pin_dir is not None:
                ensure_bpffs(pin_dir)
            if load:
                require_bpf_features()
        except (BpffsError, MissingFeature, libbpf.BpfError) as exc:
            raise TargetError(str(exc)) from None
        if load:
            try:
                path = Path(obj_path) if obj_path is not None else find_object()
            except ObjectNotFound as exc:
                raise TargetError(str(exc)) from None
            if not path.is_file():
                raise TargetError(f"{path}: no such BPF object")
            try:
                self._obj = libbpf.BpfObject(str(path), pin_dir)
            except libbpf.BpfError as exc:
                raise TargetError(str(exc)) from None
            self._fds = {name: self._obj.map_fd(name) for name in MAPS}
        else:
            if pin_dir is None:
                raise TargetError("opening pinned maps needs a pin directory")
            for name in MAPS:
                try:
                    fd = libbpf.obj_get(f"{pin_dir}/{name}")
                except libbpf.BpfError:
                    self.close()  # the pins are missing (or libbpf is)
                    raise TargetError(
                        f"no mosto maps pinned under {pin_dir}: run `mosto xdp attach IFACE` first"
                    ) from None
                self._fds[name] = fd
                self._own_fds.append(fd)
        self._ncpus = libbpf.num_possible_cpus()
        self._ids = IdAllocator(abi.MAX_ENTRIES, (v.id for _, v in self._raw_entries()))

    # -- life cycle -------------------------------------------------------

    def close(self) -> None:
        for fd in self._own_fds:
            os.close(fd)
        self._own_fds.clear()
        if self._obj:
            self._obj.close()
            self._obj = None

    def __enter__(self) -> XdpTarget:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def prog_fd(self) -> int:
        if not self._obj:
            raise TargetError("program not loaded")
        return self._obj.prog_fd(PROGRAM)

    def attach(self, ifname: str, mode: str = "native") -> str:
        """Attaches to ifname (native, generic, or auto: native else generic)."""
        ifindex = ifindex_of(ifname)
        modes = ["native", "generic"] if mode == "auto" else [mode]
        last: Exception | None = None
        for m in modes:
            try:
                libbpf.xdp_attach(ifindex, self.prog_fd, MODES[m])
            except libbpf.BpfError as exc:
                last = exc
                continue
            self.add_port(ifindex)
            return m
        raise TargetError(f"cannot attach to {ifname}: {last}")

    @staticmethod
    def detach(ifname: str) -> list[str]:
        """Detaches whatever XDP program mosto attached, in either mode."""
        ifindex = ifindex_of(ifname)
        done = []
        for m, flags in MODES.items():
            if libbpf.xdp_query_id(ifindex, flags):
                libbpf.xdp_detach(ifindex, flags)
                done.append(m)
        return done

    def add_port(self, ifindex: int) -> None:
        """Makes ifindex a redirect target."""
        idx = ctypes.c_uint32(ifindex)
        try:
            libbpf.map_update(self._fds["mosto_tx_ports"], idx, ctypes.c_uint32(ifindex))
        except libbpf.BpfError as exc:
            raise TargetError(f"cannot use ifindex {ifindex} as egress: {exc}") from None

    # -- entries ----------------------------------------------------------

    def _raw_entries(self) -> Iterator[tuple[abi.SpliceKey, abi.SpliceEntry]]:
        fd = self._fds["mosto_splice"]
        for key in libbpf.map_keys(fd, abi.SpliceKey):
            value = abi.SpliceEntry()
            if libbpf.map_lookup(fd, key, value):
                yield key, value

    def add(self, entry: Entry) -> int:
        """Installs or replaces one entry; returns its id. Stats restart at 0."""
        key = abi.encode_key(entry.match)
        ifindex = 0 if entry.learn else ifindex_of(entry.egress)
        if ifindex:
            self.add_port(ifindex)
        fd = self._fds["mosto_splice"]
        old = abi.SpliceEntry()
        replacing = libbpf.map_lookup(fd, key, old)
        entry_id = old.id if replacing else self._ids.alloc()
        self._reset_stats(entry_id)
        try:
            libbpf.map_update(fd, key, abi.encode_entry(entry, entry_id, ifindex))
        except libbpf.BpfError as exc:
            if not replacing:
                self._ids.free(entry_id)
            if exc.errno in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM):
                raise TableFull(f"table full: {exc}") from None
            raise TargetError(str(exc)) from None
        return entry_id

    def delete(self, match: FlowKey) -> bool:
        key = abi.encode_key(match)
        fd = self._fds["mosto_splice"]
        value = abi.SpliceEntry()
        if not libbpf.map_lookup(fd, key, value):
            return False
        libbpf.map_delete(fd, key)
        self._ids.free(value.id)
        return True

    def entries(self) -> list[tuple[int, Entry]]:
        return sorted(
            (v.id, abi.decode_entry(k, v, ifname_of(v.egress_ifindex)))
            for k, v in self._raw_entries()
        )

    def entry_id(self, match: FlowKey) -> int | None:
        value = abi.SpliceEntry()
        if libbpf.map_lookup(self._fds["mosto_splice"], abi.encode_key(match), value):
            return value.id
        return None

    # -- counters ---------------------------------------------------------

    def _reset_stats(self, entry_id: int) -> None:
        zeros = (abi.SpliceStats * self._ncpus)()
        libbpf.map_update(self._fds["mosto_stats"], ctypes.c_uint32(entry_id), zeros)

    def stats(self, match: FlowKey) -> EntryStats:
        entry_id = self.entry_id(match)
        if entry_id is None:
            raise TargetError(f"no entry for {match}")
        return self.stats_by_id(entry_id)

    def stats_many(self, matches: Iterable[FlowKey]) -> dict[FlowKey, EntryStats]:
        out = {}
        for match in matches:
            entry_id = self.entry_id(match)
            if entry_id is not None:
                out[match] = self.stats_by_id(entry_id)
        return out

    def stats_by_id(self, entry_id: int) -> EntryStats:
        per_cpu = (abi.SpliceStats * self._ncpus)()
        libbpf.map_lookup(self._fds["mosto_stats"], ctypes.c_uint32(entry_id), per_cpu)
        # Any TSval the sender used is a safe anchor; take the most recent CPU's.
        learned = [s for s in per_cpu if s.has_tsval]
        latest = max(learned, key=lambda s: s.last_seen_ns) if learned else None
        return EntryStats(
            packets=sum(s.packets for s in per_cpu),
            bytes=sum(s.bytes for s in per_cpu),
            last_seen_ns=max(s.last_seen_ns for s in per_cpu),
            tsval=latest.last_tsval if latest else None,
        )

    def counters(self) -> dict[str, int]:
        out = {}
        for i, name in enumerate(COUNTERS):
            per_cpu = (ctypes.c_uint64 * self._ncpus)()
            libbpf.map_lookup(self._fds["mosto_counters"], ctypes.c_uint32(i), per_cpu)
            out[name] = sum(per_cpu)
        return out

    def reset_counters(self) -> None:
        zeros = (ctypes.c_uint64 * self._ncpus)()
        for i in range(len(COUNTERS)):
            libbpf.map_update(self._fds["mosto_counters"], ctypes.c_uint32(i), zeros)

    # -- events -----------------------------------------------------------

    @contextlib.contextmanager
    def events(self, on_event: Callable[[SpliceEvent], None]) -> Iterator[libbpf.RingBuffer]:
        """A ring buffer reader; call .poll(timeout_ms) on it to deliver events."""

        def decode(raw: bytes) -> None:
            ev = abi.SpliceEvent.from_buffer_copy(raw[: ctypes.sizeof(abi.SpliceEvent)])
            on_event(SpliceEvent(abi.decode_key(ev.key), ev.id, ev.tcp_flags, ev.ts_ns))

        rb = libbpf.RingBuffer(self._fds["mosto_events"], decode)
        try:
            yield rb
        finally:
            rb.close()

    # -- testing ----------------------------------------------------------

    def test_run(
        self, frame: bytes, ingress_ifindex: int = 1, repeat: int = 1
    ) -> tuple[int, bytes, int]:
        """Runs the program on one frame (BPF_PROG_TEST_RUN): verdict, output, ns/run."""
        return libbpf.test_run(self.prog_fd, frame, ingress_ifindex, repeat)

    def map_sizes(self) -> dict[str, tuple[int, int]]:
        if not self._obj:
            raise TargetError("program not loaded")
        return {name: self._obj.map_sizes(name) for name in MAPS}
