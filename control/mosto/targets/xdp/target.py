"""The XDP target: load and attach the splice program, and drive its maps.

One set of maps, two hooks: the same program source is built for XDP
(splice.bpf.o) and for tc (splice_tc.bpf.o, clsact ingress, direct-action).
Whichever object loads first creates (or reuses the pinned) maps; the other
reuses its map fds, so entries, stats, counters and events are shared by
every interface, whatever its hook."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mosto.dataplane.counters import COUNTERS
from mosto.dataplane.entry import Entry, FlowKey
from mosto.dataplane.learning import Learned
from mosto.targets.base import (
    EntryStats,
    Generations,
    IdAllocator,
    SpliceEvent,
    TableFull,
    TargetError,
)
from mosto.targets.xdp import abi, libbpf
from mosto.targets.xdp.bpffs import BpffsError, ensure_bpffs
from mosto.targets.xdp.features import (
    BPF_PROG_TYPE_SCHED_CLS,
    BPF_PROG_TYPE_XDP,
    MissingFeature,
    require_bpf_features,
)
from mosto.targets.xdp.paths import DEFAULT_PIN_DIR, HOOK_OBJECTS, ObjectNotFound, find_object

__all__ = ["DEFAULT_PIN_DIR", "HOOKS", "MAPS", "TargetError", "XdpTarget", "default_hook"]
PROGRAM = "mosto_splice_prog"
HOOKS = ("xdp", "tc")
PROG_TYPES = {"xdp": BPF_PROG_TYPE_XDP, "tc": BPF_PROG_TYPE_SCHED_CLS}
# Our filter among others at clsact ingress: a handle no one picks by chance
# ("most"), and the first priority, so it runs before filters added without one.
TC_HANDLE = 0x6D6F7374
TC_PRIORITY = 1
MAPS = (
    "mosto_splice",
    "mosto_stats",
    "mosto_track",
    "mosto_counters",
    "mosto_tx_ports",
    "mosto_peer_ports",
    "mosto_events",
)
MODES = {
    "native": libbpf.XDP_FLAGS_DRV_MODE,
    "generic": libbpf.XDP_FLAGS_SKB_MODE,
}


IFINDEX_CACHE_S = 1.0  # as the agent's route cache: a lookup costs three syscalls
_ifindex_cache: dict[str, tuple[float, int]] = {}


def ifindex_of(egress: int | str) -> int:
    if isinstance(egress, int):
        if egress <= 0:
            raise TargetError(f"{egress} is not an interface index")
        return egress
    now = time.monotonic()
    hit = _ifindex_cache.get(egress)
    if hit is not None and now - hit[0] < IFINDEX_CACHE_S:
        return hit[1]
    try:
        index = socket.if_nametoindex(egress)
    except OSError:
        raise TargetError(f"no interface named {egress!r}") from None
    _ifindex_cache[egress] = (now, index)
    return index


def require_interfaces(names: Iterable[str]) -> None:
    """Before anything is loaded or pinned: a typo must not leave pins behind."""
    missing = []
    for name in names:
        try:
            socket.if_nametoindex(name)
        except OSError:
            missing.append(name)
    if missing:
        raise TargetError(f"no interface named {', '.join(map(repr, missing))}")


def is_veth(ifname: str) -> bool:
    try:
        driver = os.path.basename(os.readlink(f"/sys/class/net/{ifname}/device/driver"))
    except OSError:
        driver = ""
    if driver:
        return False  # a device with a bus driver is hardware, whatever its name
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.link("get", index=ifindex_of(ifname))
    info = links[0].get_attr("IFLA_LINKINFO") if links else None
    return info is not None and info.get_attr("IFLA_INFO_KIND") == "veth"


def peer_elsewhere(ifindex: int) -> bool:
    """A veth whose peer is in another network namespace (where
    bpf_redirect_peer() can deliver to)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.link("get", index=ifindex)
    if not links:
        return False
    info = links[0].get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return kind == "veth" and links[0].get_attr("IFLA_LINK_NETNSID") is not None


def has_clsact(ifindex: int) -> bool:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex))


def default_hook(ifname: str) -> str:
    """tc on veth, XDP elsewhere. Native XDP on veth needs XDP (or GRO) on the
    peer of every redirect target and turns GSO off on the path, so every
    1500-byte frame costs a run; tc sees GSO super-frames of up to 64 KiB."""
    return "tc" if is_veth(ifname) else "xdp"


BATCH_READ_MIN = 256  # entries from which one batched read of everything is cheaper


@functools.lru_cache(maxsize=2 * abi.MAX_ENTRIES)  # the reaper asks for every entry each scan
def _key_bytes(match: FlowKey) -> bytes:
    return bytes(abi.encode_key(match))


def _sum_stats(per_cpu: ctypes.Array) -> EntryStats:
    # Any TSval the sender used is a safe anchor; take the most recent CPU's.
    learned = sorted((s for s in per_cpu if s.has_tsval), key=lambda s: s.last_seen_ns)
    return EntryStats(
        packets=sum(s.packets for s in per_cpu),
        bytes=sum(s.bytes for s in per_cpu),
        last_seen_ns=max(s.last_seen_ns for s in per_cpu),
        tsval=learned[-1].last_tsval if learned else None,
        # Each CPU's record moved forward on its own: the agent checks each.
        learned=tuple(Learned(s.last_tsval, s.learn_seq, s.learn_ack) for s in learned),
    )


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
        hook: str = "xdp",
    ):
        """hook: the program loaded first (obj_path is its object; default
        from the search path); the other hook's loads when first attached."""
        if hook not in HOOKS:
            raise TargetError(f"unknown hook {hook!r}: expected one of {', '.join(HOOKS)}")
        self.pin_dir = pin_dir
        self.hook = hook
        self._objs: dict[str, libbpf.BpfObject] = {}
        self._fds: dict[str, int] = {}
        self._own_fds: list[int] = []
        try:
            if pin_dir is not None:
                ensure_bpffs(pin_dir)
        except BpffsError as exc:
            raise TargetError(str(exc)) from None
        if load:
            self._load(hook, obj_path)
            self._fds = {name: self._objs[hook].map_fd(name) for name in MAPS}
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
        self._ports: set[int] = set()  # in mosto_tx_ports already (by this process)
        self._ids = IdAllocator(abi.MAX_ENTRIES, (v.id for _, v in self._raw_entries()))
        self._gens = Generations()

    def _load(self, hook: str, obj_path: Path | str | None = None) -> libbpf.BpfObject:
        if hook in self._objs:
            return self._objs[hook]
        try:
            require_bpf_features(PROG_TYPES[hook])
            path = Path(obj_path) if obj_path is not None else find_object(HOOK_OBJECTS[hook])
        except (MissingFeature, libbpf.BpfError, ObjectNotFound) as exc:
            raise TargetError(str(exc)) from None
        if not path.is_file():
            raise TargetError(f"{path}: no such BPF object")
        try:
            # The second object shares the first one's maps, pinned or not.
            self._objs[hook] = libbpf.BpfObject(str(path), self.pin_dir, reuse=self._fds or None)
        except libbpf.BpfError as exc:
            raise TargetError(str(exc)) from None
        return self._objs[hook]

    # -- life cycle -------------------------------------------------------

    def close(self) -> None:
        for fd in self._own_fds:
            os.close(fd)
        self._own_fds.clear()
        for obj in self._objs.values():
            obj.close()
        self._objs.clear()

    def __enter__(self) -> XdpTarget:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def prog_fd(self) -> int:
        """The program of the hook loaded first."""
        return self.hook_prog_fd(self.hook)

    def hook_prog_fd(self, hook: str) -> int:
        if not self._objs:
            raise TargetError("program not loaded")
        return self._load(hook).prog_fd(PROGRAM)

    def attach(self, ifname: str, mode: str = "native", hook: str = "xdp") -> str:
        """Attaches to ifname: XDP (mode native, generic, or auto: native else
        generic) or tc (clsact ingress; mode is ignored). Returns what was
        attached: the XDP mode, or "tc"."""
        if hook not in HOOKS:
            raise TargetError(f"unknown hook {hook!r}: expected one of {', '.join(HOOKS)}")
        ifindex = ifindex_of(ifname)
        prog_fd = self.hook_prog_fd(hook)
        if hook == "tc":
            try:
                libbpf.tc_attach(
                    ifindex, prog_fd, TC_HANDLE, TC_PRIORITY, create=not has_clsact(ifindex)
                )
            except libbpf.BpfError as exc:
                raise TargetError(f"cannot attach to {ifname}: {exc}") from None
            self.add_port(ifindex)
            return "tc"
        modes = ["native", "generic"] if mode == "auto" else [mode]
        last: Exception | None = None
        for m in modes:
            try:
                libbpf.xdp_attach(ifindex, prog_fd, MODES[m])
            except libbpf.BpfError as exc:
                last = exc
                continue
            self.add_port(ifindex)
            return m
        raise TargetError(f"cannot attach to {ifname}: {last}")

    @staticmethod
    def detach(ifname: str, hook: str = "xdp") -> list[str]:
        """Detaches what mosto attached: XDP in either mode, or (hook "tc") its
        filter at clsact ingress. Returns what was removed."""
        ifindex = ifindex_of(ifname)
        if hook == "tc":
            if not libbpf.tc_query(ifindex, TC_HANDLE, TC_PRIORITY):
                return []
            libbpf.tc_detach(ifindex, TC_HANDLE, TC_PRIORITY)
            return ["tc"]
        done = []
        for m, flags in MODES.items():
            if libbpf.xdp_query_id(ifindex, flags):
                libbpf.xdp_detach(ifindex, flags)
                done.append(m)
        return done

    @staticmethod
    def attached_tc(ifname: str) -> int:
        """The id of mosto's tc program on ifname's ingress, 0 if none."""
        return libbpf.tc_query(ifindex_of(ifname), TC_HANDLE, TC_PRIORITY)

    def add_port(self, ifindex: int) -> None:
        """Makes ifindex a redirect target (for tc, one to the peer's ingress if
        it is a veth with its peer elsewhere)."""
        idx = ctypes.c_uint32(ifindex)
        try:
            libbpf.map_update(self._fds["mosto_tx_ports"], idx, ctypes.c_uint32(ifindex))
            if peer_elsewhere(ifindex):
                libbpf.map_update(self._fds["mosto_peer_ports"], idx, ctypes.c_uint32(1))
            else:  # an ifindex now another device's
                libbpf.map_delete(self._fds["mosto_peer_ports"], idx)
        except libbpf.BpfError as exc:
            raise TargetError(f"cannot use ifindex {ifindex} as egress: {exc}") from None
        self._ports.add(ifindex)

    # -- entries ----------------------------------------------------------

    def _raw_entries(self) -> Iterator[tuple[abi.SpliceKey, abi.SpliceEntry]]:
        return libbpf.map_lookup_batch(self._fds["mosto_splice"], abi.SpliceKey, abi.SpliceEntry)

    def add(self, entry: Entry) -> int:
        """Installs or replaces one entry; returns its id. Stats restart at 0.
        A tracked entry is linked with the other direction's, if that is
        installed and tracked (ebpf/track.h)."""
        key = abi.encode_key(entry.match)
        ifindex = 0 if entry.learn else ifindex_of(entry.egress)
        ingress = 0 if entry.learn or entry.ingress is None else ifindex_of(entry.ingress)
        if ifindex and ifindex not in self._ports:
            self.add_port(ifindex)
        fd = self._fds["mosto_splice"]
        old = abi.SpliceEntry()
        replacing = libbpf.map_lookup(fd, key, old)
        entry_id = old.id if replacing else self._ids.alloc()
        self._reset_stats(entry_id)
        if replacing and old.track_gen:
            # The old entry's state goes with it; a peer still linked to it
            # reads a quiet flow's until it is linked again.
            self._clear_track(entry_id)
        value = abi.encode_entry(entry, entry_id, ifindex, ingress, self._gens.next())
        peer_key, peer = self._peer_of(entry)
        if peer is not None:
            value.peer_id, value.peer_gen = peer.id, peer.track_gen
        try:
            libbpf.map_update(fd, key, value)
        except libbpf.BpfError as exc:
            if not replacing:
                self._ids.free(entry_id)
            if exc.errno in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM):
                raise TableFull(f"table full: {exc}") from None
            raise TargetError(str(exc)) from None
        if peer is not None:
            peer.peer_id, peer.peer_gen = entry_id, value.track_gen
            libbpf.map_update(fd, peer_key, peer)
        return entry_id

    def _peer_of(self, entry: Entry) -> tuple[abi.SpliceKey, abi.SpliceEntry | None]:
        """The other direction's tracked entry, whose packets leave as the
        reverse of what entry matches."""
        key = abi.encode_key(entry.peer_match)
        if entry.track is None:
            return key, None
        peer = abi.SpliceEntry()
        if not libbpf.map_lookup(self._fds["mosto_splice"], key, peer):
            return key, None
        return key, peer if entry.links_with(abi.decode_entry(key, peer, 0)) else None

    def delete(self, match: FlowKey) -> bool:
        key = abi.encode_key(match)
        fd = self._fds["mosto_splice"]
        value = abi.SpliceEntry()
        if not libbpf.map_lookup(fd, key, value):
            return False
        libbpf.map_delete(fd, key)
        self._clear_track(value.id)
        self._ids.free(value.id)
        return True

    def _clear_track(self, entry_id: int) -> None:
        """An entry's slot, of no generation: a peer linked to it reads a quiet
        flow's state (ebpf/track.h)."""
        libbpf.map_update(self._fds["mosto_track"], ctypes.c_uint32(entry_id), abi.SpliceTrack())

    def track_state(self, match: FlowKey) -> abi.SpliceTrack | None:
        """What a tracked entry's slot holds, if its entry wrote it."""
        value = abi.SpliceEntry()
        if not libbpf.map_lookup(self._fds["mosto_splice"], abi.encode_key(match), value):
            return None
        slot = abi.SpliceTrack()
        libbpf.map_lookup(self._fds["mosto_track"], ctypes.c_uint32(value.id), slot)
        return slot if value.track_gen and slot.gen == value.track_gen else None

    def entries(self) -> list[tuple[int, Entry]]:
        return sorted(
            (
                v.id,
                abi.decode_entry(
                    k,
                    v,
                    ifname_of(v.egress_ifindex),
                    ifname_of(v.ingress_ifindex) if v.ingress_ifindex else None,
                ),
            )
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

    def forget_learned(self, match: FlowKey) -> None:
        entry_id = self.entry_id(match)
        if entry_id is None:
            return
        per_cpu = (abi.SpliceStats * self._ncpus)()
        fd = self._fds["mosto_stats"]
        libbpf.map_lookup(fd, ctypes.c_uint32(entry_id), per_cpu)
        # Read and written back while the program may count a frame in between:
        # a count lost at worst, never a record kept.
        for s in per_cpu:
            s.has_tsval = s.last_tsval = s.learn_seq = s.learn_ack = 0
        libbpf.map_update(fd, ctypes.c_uint32(entry_id), per_cpu)

    def stats(self, match: FlowKey) -> EntryStats:
        entry_id = self.entry_id(match)
        if entry_id is None:
            raise TargetError(f"no entry for {match}")
        return self.stats_by_id(entry_id)

    def stats_many(self, matches: Iterable[FlowKey]) -> dict[FlowKey, EntryStats]:
        """Two lookups per entry for a few; for many, the whole table and the
        whole stats array in batches (the reaper's scan of 100,000 entries)."""
        wanted = list(matches)
        if len(wanted) >= BATCH_READ_MIN:
            return self._stats_batched(wanted)
        out = {}
        for match in wanted:
            entry_id = self.entry_id(match)
            if entry_id is not None:
                out[match] = self.stats_by_id(entry_id)
        return out

    def _stats_batched(self, matches: list[FlowKey]) -> dict[FlowKey, EntryStats]:
        ids = {
            bytes(k): v.id
            for k, v in libbpf.map_lookup_batch(
                self._fds["mosto_splice"], abi.SpliceKey, abi.SpliceEntry
            )
        }
        want = {m: ids.get(_key_bytes(m)) for m in matches}
        needed = {i for i in want.values() if i is not None}
        per_id: dict[int, EntryStats] = {}
        for k, per_cpu in libbpf.map_lookup_batch(
            self._fds["mosto_stats"], ctypes.c_uint32, abi.SpliceStats * self._ncpus
        ):
            if k in needed:  # an array of c_uint32 gives ints
                per_id[k] = _sum_stats(per_cpu)
        return {m: per_id[i] for m, i in want.items() if i is not None and i in per_id}

    def stats_by_id(self, entry_id: int) -> EntryStats:
        per_cpu = (abi.SpliceStats * self._ncpus)()
        libbpf.map_lookup(self._fds["mosto_stats"], ctypes.c_uint32(entry_id), per_cpu)
        return _sum_stats(per_cpu)

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
        self, frame: bytes, ingress_ifindex: int = 1, repeat: int = 1, hook: str | None = None
    ) -> tuple[int, bytes, int]:
        """Runs a hook's program (default: the one loaded first) on one frame
        (BPF_PROG_TEST_RUN): verdict, output, ns/run."""
        hook = hook or self.hook
        return libbpf.test_run(
            self.hook_prog_fd(hook), frame, ingress_ifindex, repeat, skb=hook == "tc"
        )

    def map_sizes(self, hook: str | None = None) -> dict[str, tuple[int, int]]:
        if not self._objs:
            raise TargetError("program not loaded")
        obj = self._load(hook or self.hook)
        return {name: obj.map_sizes(name) for name in MAPS}
