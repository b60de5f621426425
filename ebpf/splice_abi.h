/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * The C side of the data-plane contract: map keys, values, stats and the
 * event, and the counter indices. Sizes, flags and the counter list come
 * from shared/contract.h (shared with p4src/ and the Python package).
 * control/mosto/targets/xdp/abi.py mirrors these layouts with ctypes; change
 * both together (control/tests/kernel/test_xdp_target.py compares every
 * field's name, offset and size with the object's BTF).
 */
#ifndef MOSTO_SPLICE_ABI_H
#define MOSTO_SPLICE_ABI_H

#include <linux/types.h>

#include "contract.h"

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
	SPLICE_F_TS = MOSTO_SPLICE_F_TS,
	SPLICE_F_NAT = MOSTO_SPLICE_F_NAT,
	SPLICE_F_LEARN = MOSTO_SPLICE_F_LEARN,
};

/* What to do with a packet that hits. Deltas are added mod 2^32. */
struct splice_entry {
	__u32 id; /* index into mosto_stats */
	__u32 seq_delta;
	__u32 ack_delta; /* also moves SACK blocks */
	__u32 tsval_delta;
	__u32 tsecr_delta;
	__u32 egress_ifindex; /* == ingress: XDP_TX, else redirect via mosto_tx_ports */
	__u32 ingress_ifindex; /* the only interface its frames may come in by; 0: any */
	/* The FIN/RST window check (track.h): the sender's state at install, the
	 * generation that tags this entry's slot in mosto_track (0: not tracked,
	 * every FIN/RST is reported), and the other direction's entry. */
	__u32 track_gen;
	__u32 track_snd_nxt;
	__u32 track_ack;
	__u32 peer_id; /* MOSTO_NO_PEER: not installed */
	__u32 peer_gen; /* its track_gen when it was linked */
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
	/* SPLICE_F_LEARN: the last frame with a TSval (MOSTO_LEARN_SEQ_BACK says
	 * which frames may replace it), with its seq and ack, host byte order */
	__u32 last_tsval;
	__u32 has_tsval;
	__u32 learn_seq;
	__u32 learn_ack;
};

/* What a tracked entry knows of its sender (mosto_track, by entry id; one
 * per entry, not per CPU: the other direction reads it). Host byte order. */
struct splice_track {
	__u32 gen;     /* the entry's track_gen when written; any other: stale */
	__u32 snd_nxt; /* the sender's next sequence number, as it arrives */
	__u32 ack;     /* its latest acceptable ACK, translated (as it leaves) */
};

/* Reported on mosto_events for a FIN or RST of a spliced flow that passed
 * the window check (every one, for an entry not tracked). */
struct splice_event {
	struct splice_key key;
	__u32 id;
	__u8 tcp_flags;
	__u8 pad[3];
	__u64 ts_ns;
};

/* Global counters (mosto_counters, per CPU), indexed as MOSTO_COUNTERS says. */
enum mosto_counter {
#define MOSTO_COUNTER_ENUM(NAME, name, index) CNT_##NAME = index,
	MOSTO_COUNTERS(MOSTO_COUNTER_ENUM)
#undef MOSTO_COUNTER_ENUM
	CNT_MAX = MOSTO_NUM_COUNTERS,
};

/* CNT_MAX distinct indices, each below it: exactly 0..CNT_MAX-1. (CNT_MAX, not
 * MOSTO_NUM_COUNTERS: a macro does not expand inside its own expansion.) */
#define MOSTO_COUNTER_IN_RANGE(NAME, name, index) \
	_Static_assert(index < CNT_MAX, "counter " #name ": index out of range");
MOSTO_COUNTERS(MOSTO_COUNTER_IN_RANGE)
#undef MOSTO_COUNTER_IN_RANGE

/* Never called: a repeated index is a repeated case label, a compile error. */
static inline __attribute__((unused)) int mosto_counter_indices_are_unique(int index)
{
	switch (index) {
#define MOSTO_COUNTER_CASE(NAME, name, index) case index:
	MOSTO_COUNTERS(MOSTO_COUNTER_CASE)
#undef MOSTO_COUNTER_CASE
		return 1;
	}
	return 0;
}

#endif /* MOSTO_SPLICE_ABI_H */
