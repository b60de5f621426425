"""The kernel features the splice program needs, probed once per process with
libbpf's own probes, so a host that lacks one is told which, in one line,
instead of getting a verifier log. Minimum kernel: 5.17 (bpf_loop); the ring
buffer needs 5.8, DEVMAP_HASH 5.4."""

from __future__ import annotations

import functools

from mosto.targets.xdp import libbpf

# <linux/bpf.h> enum values (UAPI, stable)
BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP = 3, 6
BPF_MAP_TYPE_DEVMAP_HASH, BPF_MAP_TYPE_RINGBUF = 25, 27
BPF_FUNC_KTIME_GET_COARSE_NS, BPF_FUNC_LOOP = 160, 181

MIN_KERNEL = "5.17"

MAP_TYPES = {"DEVMAP_HASH": BPF_MAP_TYPE_DEVMAP_HASH, "ring buffer": BPF_MAP_TYPE_RINGBUF}
HELPERS = {"bpf_loop": BPF_FUNC_LOOP, "bpf_ktime_get_coarse_ns": BPF_FUNC_KTIME_GET_COARSE_NS}


class MissingFeature(Exception):
    pass


@functools.cache
def missing_bpf_features(prog_type: int = BPF_PROG_TYPE_XDP) -> tuple[str, ...]:
    """Names of what this kernel lacks for the splice program (empty: all there)."""
    missing = [name for name, t in MAP_TYPES.items() if not libbpf.probe_map_type(t)]
    missing += [name for name, h in HELPERS.items() if not libbpf.probe_helper(prog_type, h)]
    return tuple(missing)


def require_bpf_features(prog_type: int = BPF_PROG_TYPE_XDP) -> None:
    try:
        missing = missing_bpf_features(prog_type)
    except libbpf.BpfError as exc:
        raise MissingFeature(f"cannot probe BPF features: {exc}") from None
    if missing:
        raise MissingFeature(
            f"this kernel lacks {', '.join(missing)} (the splice program needs Linux "
            f">= {MIN_KERNEL})"
        )
