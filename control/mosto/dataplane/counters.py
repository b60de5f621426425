"""The data plane's global counters by index: enum mosto_counter in
ebpf/splice_abi.h. p4src/include/headers.p4 uses the same indices (a test
compares the compiled program's with these)."""

COUNTERS = (
    "hit_tx",
    "hit_redirect",
    "pass_miss",
    "pass_not_ip",
    "pass_not_tcp",
    "pass_truncated",
    "pass_bad_ip",
    "pass_fragment",
    "drop_bad_tcp",
    "drop_no_egress",
    "event_lost",
    "pass_learn",
)
