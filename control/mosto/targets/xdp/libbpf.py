"""The few libbpf calls mosto needs, through ctypes.

Why not BCC: BCC compiles its own C at run time; mosto ships one clang-built
object that `ip`, bpftool and xdp-loader load as well, and libbpf is the
library that loads such objects. There is no maintained Python binding for
libbpf, and the surface used here is small, so ctypes it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator
from typing import Any

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# enum bpf_tc_attach_point, enum bpf_tc_flags (libbpf.h)
BPF_TC_INGRESS = 1 << 0
BPF_TC_EGRESS = 1 << 1
BPF_TC_F_REPLACE = 1 << 0


class BpfError(OSError):
    """A libbpf call failed; carries errno and what was attempted."""


_p = ctypes.c_void_p
RingBufferSampleFn = ctypes.CFUNCTYPE(ctypes.c_int, _p, _p, ctypes.c_size_t)

# (name, restype, *argtypes) of every libbpf function used here.
_SIGNATURES: list[tuple[Any, ...]] = [
    ("bpf_object__open_file", _p, ctypes.c_char_p, _p),
    ("bpf_object__load", ctypes.c_int, _p),
    ("bpf_object__close", None, _p),
    ("bpf_object__next_map", _p, _p, _p),
    ("bpf_object__find_program_by_name", _p, _p, ctypes.c_char_p),
    ("bpf_map__name", ctypes.c_char_p, _p),
    ("bpf_map__fd", ctypes.c_int, _p),
    ("bpf_map__key_size", ctypes.c_uint32, _p),
    ("bpf_map__value_size", ctypes.c_uint32, _p),
    ("bpf_map__set_pin_path", ctypes.c_int, _p, ctypes.c_char_p),
    ("bpf_map__reuse_fd", ctypes.c_int, _p, ctypes.c_int),
    ("bpf_program__fd", ctypes.c_int, _p),
    ("bpf_obj_get", ctypes.c_int, ctypes.c_char_p),
    ("bpf_map_update_elem", ctypes.c_int, ctypes.c_int, _p, _p, ctypes.c_uint64),
    ("bpf_map_lookup_elem", ctypes.c_int, ctypes.c_int, _p, _p),
    ("bpf_map_delete_elem", ctypes.c_int, ctypes.c_int, _p),
    ("bpf_map_get_next_key", ctypes.c_int, ctypes.c_int, _p, _p),
    (
        "bpf_map_lookup_batch",
        ctypes.c_int,
        ctypes.c_int,
        _p,
        _p,
        _p,
        _p,
        ctypes.POINTER(ctypes.c_uint32),
        _p,
    ),
    ("bpf_xdp_attach", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint32, _p),
    ("bpf_xdp_detach", ctypes.c_int, ctypes.c_int, ctypes.c_uint32, _p),
    ("bpf_xdp_query_id", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)),
    ("bpf_prog_test_run_opts", ctypes.c_int, ctypes.c_int, _p),
    ("bpf_tc_hook_create", ctypes.c_int, _p),
    ("bpf_tc_attach", ctypes.c_int, _p, _p),
    ("bpf_tc_detach", ctypes.c_int, _p, _p),
    ("bpf_tc_query", ctypes.c_int, _p, _p),
    ("libbpf_num_possible_cpus", ctypes.c_int),
    ("ring_buffer__poll", ctypes.c_int, _p, ctypes.c_int),
    ("ring_buffer__free", None, _p),
    ("ring_buffer__new", _p, ctypes.c_int, RingBufferSampleFn, _p, _p),
    ("libbpf_probe_bpf_map_type", ctypes.c_int, ctypes.c_int, _p),
    ("libbpf_probe_bpf_helper", ctypes.c_int, ctypes.c_int, ctypes.c_int, _p),
]


class _Library:
    """libbpf, loaded on first use: importing this module (the CLI does, for
    defaults) must work on a host without libbpf, where only the proxy runs."""

    _cdll: ctypes.CDLL | None = None

    def __getattr__(self, name: str) -> Any:
        if _Library._cdll is None:
            _Library._cdll = _load()
        return getattr(_Library._cdll, name)


def _load() -> ctypes.CDLL:
    path = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(path, use_errno=True)
    except OSError as exc:
        raise BpfError(2, f"cannot load libbpf ({path}): {exc}; install libbpf1") from None
    for name, restype, *argtypes in _SIGNATURES:
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = list(argtypes)
    return lib


_lib = _Library()


def _check(ret: int, what: str) -> int:
    """libbpf 1.x returns -errno (or NULL with errno set)."""
    if ret is None or (isinstance(ret, int) and ret < 0):
        err = -ret if isinstance(ret, int) and ret < 0 else ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


class BpfTestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf 1.1)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", _p),
        ("data_out", _p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", _p),
        ("ctx_out", _p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class XdpMd(ctypes.Structure):
    """struct xdp_md, the context given to BPF_PROG_TEST_RUN."""

    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


class SkBuff(ctypes.Structure):
    """The head of struct __sk_buff, as far as BPF_PROG_TEST_RUN lets a caller
    set it (up to cb[]; the kernel zero-fills the rest)."""

    _fields_ = [
        ("len", ctypes.c_uint32),
        ("pkt_type", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
        ("queue_mapping", ctypes.c_uint32),
        ("protocol", ctypes.c_uint32),
        ("vlan_present", ctypes.c_uint32),
        ("vlan_tci", ctypes.c_uint32),
        ("vlan_proto", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("tc_index", ctypes.c_uint32),
        ("cb", ctypes.c_uint32 * 5),
    ]


class BpfTcHook(ctypes.Structure):
    """struct bpf_tc_hook (libbpf 1.1); the trailing `size_t :0` is alignment."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),
        ("parent", ctypes.c_uint32),
    ]


class BpfTcOpts(ctypes.Structure):
    """struct bpf_tc_opts (libbpf 1.1)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
    ]


def probe_map_type(map_type: int) -> bool:
    return _check(_lib.libbpf_probe_bpf_map_type(map_type, None), "probe map type") == 1


def probe_helper(prog_type: int, helper_id: int) -> bool:
    return _check(_lib.libbpf_probe_bpf_helper(prog_type, helper_id, None), "probe helper") == 1


def num_possible_cpus() -> int:
    return _check(_lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def obj_get(path: str) -> int:
    return _check(_lib.bpf_obj_get(path.encode()), f"open pinned {path}")


def map_update(fd: int, key: ctypes.Structure | ctypes._SimpleCData, value: Any, flags: int = 0):
    _check(
        _lib.bpf_map_update_elem(fd, ctypes.addressof(key), ctypes.addressof(value), flags),
        "map update",
    )


def map_lookup(fd: int, key: Any, value: Any) -> bool:
    """Fills value; False when the key is absent."""
    ret = _lib.bpf_map_lookup_elem(fd, ctypes.addressof(key), ctypes.addressof(value))
    if ret < 0 and -ret == 2:  # ENOENT
        return False
    _check(ret, "map lookup")
    return True


def map_delete(fd: int, key: Any) -> bool:
    ret = _lib.bpf_map_delete_elem(fd, ctypes.addressof(key))
    if ret < 0 and -ret == 2:
        return False
    _check(ret, "map delete")
    return True


BATCH_CHUNK = 4096  # elements per BPF_MAP_LOOKUP_BATCH call


def map_lookup_batch(fd: int, key_type: Any, value_type: Any) -> Iterator[tuple[Any, Any]]:
    """Every (key, value) of a map, BATCH_CHUNK at a time (BPF_MAP_LOOKUP_BATCH,
    Linux 5.6): a few system calls for a table of 100,000 entries, not 200,000."""
    token_size = max(ctypes.sizeof(key_type), 8)  # a hash map's bucket, an array's index
    tokens = [(ctypes.c_uint8 * token_size)(), (ctypes.c_uint8 * token_size)()]
    chunk = BATCH_CHUNK
    first = True
    while True:
        keys, values = (key_type * chunk)(), (value_type * chunk)()
        count = ctypes.c_uint32(chunk)
        in_batch = None if first else ctypes.addressof(tokens[0])
        ret = _lib.bpf_map_lookup_batch(
            fd, in_batch, ctypes.addressof(tokens[1]), keys, values, ctypes.byref(count), None
        )
        err = -ret if ret < 0 else 0
        if err == errno.ENOSPC and count.value == 0:  # one hash bucket holds more than chunk
            chunk *= 2
            continue
        if err not in (0, errno.ENOENT):
            _check(ret, "map lookup batch")
        for i in range(count.value):
            yield keys[i], values[i]
        if err == errno.ENOENT:
            return
        ctypes.memmove(tokens[0], tokens[1], token_size)
        first = False


def map_keys(fd: int, key_type: type) -> list:
    """All keys of a hash map (a snapshot: the map may change meanwhile)."""
    keys: list[Any] = []
    prev = None
    while True:
        nxt = key_type()
        ret = _lib.bpf_map_get_next_key(
            fd, ctypes.addressof(prev) if prev else None, ctypes.addressof(nxt)
        )
        if ret < 0:
            if -ret == 2:
                return keys
            _check(ret, "map get_next_key")
        keys.append(nxt)
        prev = nxt


class BpfObject:
    """An opened and loaded BPF object file (bpf_object). Maps named in reuse
    (name -> fd) are shared with the object that holds them, pinned or not:
    that is how the XDP and the tc object use one set of maps."""

    def __init__(self, path: str, pin_dir: str | None, reuse: dict[str, int] | None = None):
        self._obj = _lib.bpf_object__open_file(path.encode(), None)
        if not self._obj:
            _check(-ctypes.get_errno() or -1, f"open {path}")
        self.maps: dict[str, Any] = {}
        m = _lib.bpf_object__next_map(self._obj, None)
        while m:
            name = _lib.bpf_map__name(m).decode()
            self.maps[name] = m
            # Pinning by name needs a directory; without one the maps stay private.
            pin = f"{pin_dir}/{name}" if pin_dir else None
            if reuse and name in reuse:
                _check(_lib.bpf_map__reuse_fd(m, reuse[name]), f"reuse {name}")
                pin = None
            elif pin and os.path.exists(pin):
                # Reuse the pinned map ourselves: libbpf 1.1 compares its flags and
                # refuses a devmap, to which the kernel adds BPF_F_RDONLY_PROG.
                fd = obj_get(pin)
                try:
                    _check(_lib.bpf_map__reuse_fd(m, fd), f"reuse pinned {name}")
                finally:
                    os.close(fd)
                pin = None
            _check(
                _lib.bpf_map__set_pin_path(m, pin.encode() if pin else None), f"pin path of {name}"
            )
            m = _lib.bpf_object__next_map(self._obj, m)
        if pin_dir:
            os.makedirs(pin_dir, exist_ok=True)
        try:
            _check(_lib.bpf_object__load(self._obj), f"load {path}")
        except BpfError:
            self.close()
            raise

    def prog_fd(self, name: str) -> int:
        prog = _lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise BpfError(2, f"no program {name} in object")
        return _check(_lib.bpf_program__fd(prog), f"fd of {name}")

    def map_fd(self, name: str) -> int:
        return _check(_lib.bpf_map__fd(self.maps[name]), f"fd of {name}")

    def map_sizes(self, name: str) -> tuple[int, int]:
        m = self.maps[name]
        return _lib.bpf_map__key_size(m), _lib.bpf_map__value_size(m)

    def close(self) -> None:
        if self._obj:
            _lib.bpf_object__close(self._obj)
            self._obj = None


def xdp_attach(ifindex: int, prog_fd: int, flags: int) -> None:
    _check(_lib.bpf_xdp_attach(ifindex, prog_fd, flags, None), f"attach XDP to ifindex {ifindex}")


def xdp_detach(ifindex: int, flags: int) -> None:
    _check(_lib.bpf_xdp_detach(ifindex, flags, None), f"detach XDP from ifindex {ifindex}")


def xdp_query_id(ifindex: int, flags: int) -> int:
    prog_id = ctypes.c_uint32(0)
    _check(_lib.bpf_xdp_query_id(ifindex, flags, ctypes.byref(prog_id)), "query XDP")
    return prog_id.value


def test_run(
    prog_fd: int, frame: bytes, ingress_ifindex: int = 1, repeat: int = 1, skb: bool = False
) -> tuple[int, bytes, int]:
    """BPF_PROG_TEST_RUN: returns (verdict, output frame, mean ns per run).
    skb: the program is a tc one (struct __sk_buff context), else XDP."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    out_size = len(frame) + 256
    data_out = ctypes.create_string_buffer(out_size)
    ctx: ctypes.Structure
    if skb:
        # ifindex gives the skb its device (ingress_ifindex alone does not)
        ctx = SkBuff(ingress_ifindex=ingress_ifindex, ifindex=ingress_ifindex)
    else:
        ctx = XdpMd(data=0, data_end=len(frame), ingress_ifindex=ingress_ifindex)
    opts = BpfTestRunOpts(
        sz=ctypes.sizeof(BpfTestRunOpts),
        data_in=ctypes.cast(data_in, _p),
        data_out=ctypes.cast(data_out, _p),
        data_size_in=len(frame),
        data_size_out=out_size,
        ctx_in=ctypes.addressof(ctx),
        ctx_size_in=ctypes.sizeof(ctx),
        repeat=repeat,
    )
    _check(_lib.bpf_prog_test_run_opts(prog_fd, ctypes.addressof(opts)), "BPF_PROG_TEST_RUN")
    return opts.retval, data_out.raw[: opts.data_size_out], opts.duration


# tc through libbpf's bpf_tc_* rather than pyroute2's tc support: the program
# fd is libbpf's already, these are the netlink requests `tc filter add ... bpf
# da` makes, and both hooks then go through one library and one error path.


def _tc_hook(ifindex: int, point: int = BPF_TC_INGRESS) -> BpfTcHook:
    return BpfTcHook(sz=ctypes.sizeof(BpfTcHook), ifindex=ifindex, attach_point=point)


def tc_attach(
    ifindex: int,
    prog_fd: int,
    handle: int,
    priority: int,
    point: int = BPF_TC_INGRESS,
    create: bool = True,
) -> None:
    """prog_fd as a direct-action filter at clsact ingress (or egress) of
    ifindex, replacing whatever filter has this handle and priority there.
    create: add clsact first (EEXIST is fine, but libbpf logs the kernel's
    complaint; a caller that knows clsact is there passes False)."""
    hook = _tc_hook(ifindex, point)
    ret = _lib.bpf_tc_hook_create(ctypes.byref(hook)) if create else 0
    if ret != -errno.EEXIST:
        _check(ret, f"create clsact on ifindex {ifindex}")
    opts = BpfTcOpts(
        sz=ctypes.sizeof(BpfTcOpts),
        prog_fd=prog_fd,
        flags=BPF_TC_F_REPLACE,
        handle=handle,
        priority=priority,
    )
    _check(
        _lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)),
        f"attach tc to ifindex {ifindex}",
    )


def tc_query(ifindex: int, handle: int, priority: int) -> int:
    """The id of the program in the filter (handle, priority) at ingress; 0 if none."""
    hook = _tc_hook(ifindex)
    opts = BpfTcOpts(sz=ctypes.sizeof(BpfTcOpts), handle=handle, priority=priority)
    ret = _lib.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts))
    if ret in (-errno.ENOENT, -errno.EINVAL):  # no such filter; EINVAL: no clsact
        return 0
    _check(ret, f"query tc on ifindex {ifindex}")
    return opts.prog_id


def tc_detach(ifindex: int, handle: int, priority: int) -> None:
    """Removes the filter (handle, priority) at ingress; clsact stays, since
    other filters may hang on it."""
    hook = _tc_hook(ifindex)
    opts = BpfTcOpts(sz=ctypes.sizeof(BpfTcOpts), handle=handle, priority=priority)
    _check(
        _lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts)),
        f"detach tc from ifindex {ifindex}",
    )


class RingBuffer:
    """Polls one BPF ring buffer map, calling on_sample(bytes) per record."""

    def __init__(self, map_fd: int, on_sample):
        def _cb(_ctx, data, size):
            on_sample(ctypes.string_at(data, size))
            return 0

        self._cb = RingBufferSampleFn(_cb)  # keep a reference: libbpf calls it later
        self._rb = _lib.ring_buffer__new(map_fd, self._cb, None, None)
        if not self._rb:
            _check(-ctypes.get_errno() or -1, "ring_buffer__new")

    def poll(self, timeout_ms: int) -> int:
        """Records delivered; 0 when a signal cut the wait short (EINTR: a
        debugger attaching, say), which is no reason to stop polling."""
        ret = _lib.ring_buffer__poll(self._rb, timeout_ms)
        if ret == -errno.EINTR:
            return 0
        return _check(ret, "ring_buffer__poll")

    def close(self) -> None:
        if self._rb:
            _lib.ring_buffer__free(self._rb)
            self._rb = None
