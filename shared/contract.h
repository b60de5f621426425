/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * The data-plane contract, once, for every side of it: the XDP/tc program
 * (ebpf/, C), the P4 program (p4src/, through p4c's C preprocessor) and the
 * Python control layer (mosto.dataplane.contract parses this file, shipped
 * as package data). Preprocessor definitions only: no C, no P4, so each
 * language builds its own declarations from them. It lives in shared/, not
 * in ebpf/ or p4src/, because neither target owns it (fabric-tna's shared/
 * holds its size.p4 for the same reason).
 *
 * Sizes sit behind #ifndef so a build may override them (clang -D / p4c -D);
 * the Python side reads the defaults, so a build that overrides one must
 * say so to the control plane as well.
 *
 * Grammar the Python parser accepts (anything else fails its import):
 *   #define MOSTO_NAME <integer expression of literals and MOSTO_ names>
 *   #define MOSTO_COUNTERS(X) followed by X(NAME, name, index) lines
 */
#ifndef MOSTO_CONTRACT_H
#define MOSTO_CONTRACT_H

/* ---- sizes --------------------------------------------------------------- */

/* Splice entries (mosto_splice) and their stats slots (mosto_stats): an
 * entry's id indexes its stats, so both tables have this size. Two entries
 * per splice: 50,000 live splices and their flows' learning entries fit.
 * The stats are per CPU: 131072 x 32 bytes x possible CPUs of memory. */
#ifndef MOSTO_MAX_ENTRIES
#define MOSTO_MAX_ENTRIES 131072
#endif

/* Egress ports a hit may be redirected to (mosto_tx_ports): interfaces for
 * XDP/tc, switch ports for P4. 512 covers every 9-bit v1model port. */
#ifndef MOSTO_MAX_PORTS
#define MOSTO_MAX_PORTS 512
#endif

/* The FIN/RST event ring (mosto_events), in bytes: a power of two, a
 * multiple of the page size. An event takes 64 bytes with its header: 4 MiB
 * hold the FINs of 30,000 flows closing at once while the agent catches up
 * (256 KiB lost some of 5,000 flows' FINs, which then went only when idle). */
#ifndef MOSTO_EVENTS_BYTES
#define MOSTO_EVENTS_BYTES (4 * 1024 * 1024)
#endif

/* How deep the parser looks for TCP, the same on every target. A frame whose
 * headers go on past either bound cannot be told apart from a spliced flow's
 * and is dropped (drop_deep_headers): the stack would walk further, find the
 * four-tuple and answer it. VLAN tags (802.1Q or 802.1ad, a tc metadata tag
 * included): QinQ is two. IPv6 extension headers (hop-by-hop, routing,
 * fragment, destination options): RFC 8200's full chain without IPsec is
 * five; their bytes are counted in 8-byte units, as their length fields are. */
#ifndef MOSTO_VLAN_MAX
#define MOSTO_VLAN_MAX 2
#endif
#ifndef MOSTO_IPV6_EXT_MAX
#define MOSTO_IPV6_EXT_MAX 6
#endif
#ifndef MOSTO_IPV6_EXT_UNITS
#define MOSTO_IPV6_EXT_UNITS 32
#endif

/* P4 only: the plain L2 table for frames that are not translated (XDP and tc
 * hand those to the kernel, whose FDB and neighbour tables do this). */
#ifndef MOSTO_L2_ENTRIES
#define MOSTO_L2_ENTRIES 1024
#endif

/* ---- entry flags (splice_entry.flags) ------------------------------------ */

#define MOSTO_SPLICE_F_TS (1 << 0)    /* shift TSval and TSecr */
#define MOSTO_SPLICE_F_NAT (1 << 1)   /* rewrite addresses and ports */
#define MOSTO_SPLICE_F_LEARN (1 << 2) /* the proxy still owns the flow: record TSval, pass */

/* ---- learning entries ---------------------------------------------------- */

/* A learning entry records a segment's TSval with its seq and ack, so the
 * agent can check at hand-over that the segment was in window (a spoofed,
 * blind one almost never is). The record only moves forward: a segment whose
 * seq is more than this many bytes behind the recorded one (mod 2^32) leaves
 * it alone (reordering and retransmissions of the last flight are closer). */
#define MOSTO_LEARN_SEQ_BACK (1 << 20)

/* ---- FIN/RST window check (RFC 5961) ------------------------------------ */

/* A tracked entry (one with a `track` state, which the agent always gives)
 * keeps its sender's next sequence number and latest acceptable ACK, and
 * reports a FIN or RST only if the flow's state says it is genuine: an RST
 * whose seq is exactly the next one the receiver expects, a FIN whose ACK is
 * acceptable. Segments whose seq lies more than this far ahead of the
 * sender's known next one are not taken into the state: the largest window
 * TCP can offer (65535 << 14) is below it. */
#define MOSTO_TRACK_SEQ_AHEAD (1 << 30)

/* An entry whose direction's peer entry is not installed. */
#define MOSTO_NO_PEER 0xffffffff

/* ---- TCP flags an event reports (splice_event.tcp_flags, the digest) ----- */

#define MOSTO_TCP_FIN 0x01
#define MOSTO_TCP_RST 0x04
#define MOSTO_TCP_ACK 0x10

/* ---- global counters ------------------------------------------------------ */

/*
 * X(NAME, name, index): CNT_NAME in C and P4, "name" in Python, slot index of
 * mosto_counters. Every frame lands in exactly one HIT, PASS or DROP counter;
 * the EVENT_ counters count events, not frames. Indices are dense, from 0.
 */
#define MOSTO_COUNTERS(X)                                                         \
	X(HIT_TX, hit_tx, 0)                 /* translated, back out of the ingress port */ \
	X(HIT_REDIRECT, hit_redirect, 1)     /* translated, out of another port */          \
	X(PASS_MISS, pass_miss, 2)           /* TCP, no entry */                            \
	X(PASS_NOT_IP, pass_not_ip, 3)       /* not IPv4/IPv6 (after the tags) */            \
	X(PASS_NOT_TCP, pass_not_tcp, 4)     /* IPv4 protocol / IPv6 next header not TCP */ \
	X(PASS_TRUNCATED, pass_truncated, 5) /* headers up to the fixed TCP header cut */   \
	X(PASS_BAD_IP, pass_bad_ip, 6)       /* IPv4 IHL < 5 or version mismatch */         \
	X(PASS_FRAGMENT, pass_fragment, 7)   /* IPv4/IPv6 non-first fragment */             \
	X(DROP_BAD_TCP, drop_bad_tcp, 8)     /* spliced flow, TCP header untranslatable */  \
	X(DROP_NO_EGRESS, drop_no_egress, 9) /* spliced flow, egress not a tx port */       \
	X(EVENT_LOST, event_lost, 10)        /* event ring full: a FIN/RST not reported */  \
	X(PASS_LEARN, pass_learn, 11)        /* learning entry: TSval recorded, passed */    \
	X(DROP_WRONG_INGRESS, drop_wrong_ingress, 12) /* spliced flow, not its ingress port */ \
	X(DROP_FRAGMENT, drop_fragment, 13)  /* spliced flow's first fragment; TCP header split */ \
	X(DROP_IPV6_EXT, drop_ipv6_ext, 14)  /* spliced flow, TCP behind IPv6 ext. headers */  \
	X(DROP_DEEP_HEADERS, drop_deep_headers, 15) /* tags or IPv6 ext. headers past the walk */ \
	X(EVENT_OUT_OF_WINDOW, event_out_of_window, 16) /* a FIN/RST not reported: not genuine */

/* How many there are, counted from the list itself. */
#define MOSTO_COUNTER_ONE(NAME, name, index) +1
#define MOSTO_NUM_COUNTERS (0 MOSTO_COUNTERS(MOSTO_COUNTER_ONE))

#endif /* MOSTO_CONTRACT_H */
