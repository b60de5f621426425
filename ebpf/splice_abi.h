/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * The contract between the XDP program and user space: map keys, values and
 * counter indices. mosto/xdp/abi.py mirrors these layouts with ctypes; change
 * both together (test_abi.py compares them through the object's BTF).
 */
#ifndef MOSTO_SPLICE_ABI_H
#define MOSTO_SPLICE_ABI_H

#include <linux/types.h>

#define MOSTO_MAX_ENTRIES 65536
#define MOSTO_MAX_PORTS 64
#define MOSTO_EVENTS_BYTES (256 * 1024)

/* One direction of a spliced flow, as the packet arrives. Addresses and
 * ports are in network byte order; IPv4 uses saddr[0]/daddr[0], the rest is 0. */
struct splice_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u8 family; /* AF_INET or AF_INET6 */
	__u8 pad[3];
};

enum splice_flags {
	SPLICE_F_TS = 1 << 0,   /* shift TSval and TSecr */
	SPLICE_F_NAT = 1 << 1,  /* rewrite addresses and ports */
	SPLICE_F_LEARN = 1 << 2, /* proxy still owns the flow: record TSval, pass */
};

/* What to do with a packet that hits. Deltas are added mod 2^32. */
struct splice_entry {
	__u32 id; /* index into mosto_stats */
	__u32 seq_delta;
	__u32 ack_delta; /* also moves SACK blocks */
	__u32 tsval_delta;
	__u32 tsecr_delta;
	__u32 egress_ifindex; /* == ingress: XDP_TX, else redirect via mosto_tx_ports */
	__u32 new_saddr[4];   /* SPLICE_F_NAT only, network byte order */
	__u32 new_daddr[4];
	__u16 new_sport;
	__u16 new_dport;
	__u8 smac[6];
	__u8 dmac[6];
	__s8 wscale_shift; /* window <<= shift (saturating) or >>= -shift */
	__u8 flags;        /* enum splice_flags */
	__u8 pad[2];
};

/* Per entry, per CPU. */
struct splice_stats {
	__u64 packets;
	__u64 bytes; /* whole frames, as received */
	__u64 last_seen_ns; /* CLOCK_MONOTONIC, coarse (a tick): cheap, enough for idling */
	__u32 last_tsval;   /* SPLICE_F_LEARN: the TSval of the last frame with one */
	__u32 has_tsval;
};

/* Reported on mosto_events for every FIN or RST of a spliced flow. */
struct splice_event {
	struct splice_key key;
	__u32 id;
	__u8 tcp_flags;
	__u8 pad[3];
	__u64 ts_ns;
};

/* Global counters (mosto_counters, per CPU). Every packet lands in exactly one
 * HIT, PASS or DROP counter; CNT_EVENT_LOST counts events, not packets. */
enum mosto_counter {
	CNT_HIT_TX,           /* translated, sent back out of the ingress port */
	CNT_HIT_REDIRECT,     /* translated, redirected to another port */
	CNT_PASS_MISS,        /* TCP, no entry */
	CNT_PASS_NOT_IP,      /* not IPv4/IPv6 (after at most one 802.1Q tag) */
	CNT_PASS_NOT_TCP,     /* IPv4 protocol / IPv6 next header is not TCP */
	CNT_PASS_TRUNCATED,   /* headers up to the fixed TCP header do not fit */
	CNT_PASS_BAD_IP,      /* IPv4 IHL < 5 or version mismatch */
	CNT_PASS_FRAGMENT,    /* IPv4 non-first fragment: no TCP header to match */
	CNT_DROP_BAD_TCP,     /* spliced flow, but TCP header/options untranslatable */
	CNT_DROP_NO_EGRESS,   /* spliced flow, egress port not in mosto_tx_ports */
	CNT_EVENT_LOST,       /* ring buffer full: a FIN/RST event was not reported */
	CNT_PASS_LEARN,       /* a learning entry's flow: TSval recorded, passed */
	CNT_MAX,
};

#endif /* MOSTO_SPLICE_ABI_H */
