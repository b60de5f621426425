/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * TCP option rewrite: SACK blocks move with the ack delta, timestamps with
 * their own deltas. One bounded walk both validates and rewrites; a packet
 * whose options are malformed is reported as untranslatable (the caller drops
 * it, so a half-rewritten packet never leaves). In learning mode the walk
 * only reads the TSval.
 *
 * Malformed: a length byte < 2 or past the option area; SACK whose length is
 * not 2 + 8n (n = 1..4); a timestamp option whose length is not 10; SACK or
 * timestamps twice in one header (RFC 2018 / 7323 allow one each).
 */
#ifndef MOSTO_TCP_OPTS_H
#define MOSTO_TCP_OPTS_H

#include <stdbool.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "csum.h"
#include "splice_abi.h"

#define TCP_OPT_MAX_LEN 40
#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_SACK 5
#define TCPOPT_TIMESTAMP 8
#define TCPOLEN_TIMESTAMP 10
#define TCPOLEN_SACK_BASE 2
#define TCPOLEN_SACK_PERBLOCK 8
#define TCP_SACK_MAX_BLOCKS 4
#define TCPOLEN_SACK_MAX (TCPOLEN_SACK_BASE + TCP_SACK_MAX_BLOCKS * TCPOLEN_SACK_PERBLOCK)
#define TCPOPT_TSVAL_OFF 2
#define TCPOPT_TSECR_OFF 6

#define OPT_ERR -1
#define OPT_SEEN_SACK 1
#define OPT_SEEN_TS 2

/* State of one option walk, shared with the bpf_loop() callback. */
struct opt_walk {
	__u8 *opts;
	void *data_end;
	const struct splice_entry *e;
	struct csum_delta *csum;
	__u32 opt_len;
	__u32 off;
	__u32 seen; /* OPT_SEEN_* */
	int err;
	bool learn;  /* read the TSval only, rewrite nothing */
	__u32 tsval; /* learn: the TSval, valid if seen & OPT_SEEN_TS */
};

static __always_inline int opt_read_u32(__u8 *p, void *data_end, __u32 *value)
{
	if ((void *)(p + sizeof(*value)) > data_end)
		return OPT_ERR;
	__builtin_memcpy(value, p, sizeof(*value));
	*value = bpf_ntohl(*value);
	return 0;
}

/* Adds delta to the big-endian u32 at p; off is its offset from the TCP header. */
static __always_inline int opt_shift_u32(__u8 *p, void *data_end, __u32 off, __u32 delta,
					 struct csum_delta *csum)
{
	__u32 old, new;

	if (opt_read_u32(p, data_end, &old))
		return OPT_ERR;
	new = old + delta;
	csum_delta_add32(csum, off, old, new);
	new = bpf_htonl(new);
	__builtin_memcpy(p, &new, sizeof(new));
	return 0;
}

static __always_inline int opt_sack(struct opt_walk *w, __u8 *opt, __u32 off, __u32 len)
{
	__u32 edge_off;
	int i;

	if (len < TCPOLEN_SACK_BASE + TCPOLEN_SACK_PERBLOCK || len > TCPOLEN_SACK_MAX ||
	    (len - TCPOLEN_SACK_BASE) % TCPOLEN_SACK_PERBLOCK)
		return OPT_ERR;
	if (w->learn)
		return 0;
	/* Each block is a left and a right edge: 2 * blocks words in all. */
	for (i = 0; i < 2 * TCP_SACK_MAX_BLOCKS; i++) {
		edge_off = TCPOLEN_SACK_BASE + i * sizeof(__u32);
		if (edge_off >= len)
			break;
		if (opt_shift_u32(opt + edge_off, w->data_end, off + edge_off, w->e->ack_delta,
				  w->csum))
			return OPT_ERR;
	}
	return 0;
}

static __always_inline int opt_ts(struct opt_walk *w, __u8 *opt, __u32 off, __u32 len)
{
	if (len != TCPOLEN_TIMESTAMP)
		return OPT_ERR;
	if (w->learn)
		return opt_read_u32(opt + TCPOPT_TSVAL_OFF, w->data_end, &w->tsval);
	if (!(w->e->flags & SPLICE_F_TS))
		return 0;
	if (opt_shift_u32(opt + TCPOPT_TSVAL_OFF, w->data_end, off + TCPOPT_TSVAL_OFF,
			  w->e->tsval_delta, w->csum) ||
	    opt_shift_u32(opt + TCPOPT_TSECR_OFF, w->data_end, off + TCPOPT_TSECR_OFF,
			  w->e->tsecr_delta, w->csum))
		return OPT_ERR;
	return 0;
}

/* One option per call. A bpf_loop() callback is verified once, not once per
 * iteration: an open-coded walk over 40 bytes exceeds the verifier's budget. */
static long opt_walk_step(__u32 index, void *ctx)
{
	struct opt_walk *w = ctx;
	__u32 off = w->off, len, tcp_off, seen_bit;
	__u8 *opt;
	int ret;

	if (off >= w->opt_len || off >= TCP_OPT_MAX_LEN)
		return 1;
	opt = w->opts + off;
	if ((void *)(opt + 1) > w->data_end)
		goto malformed;
	if (opt[0] == TCPOPT_EOL)
		return 1;
	if (opt[0] == TCPOPT_NOP) {
		w->off = off + 1;
		return 0;
	}
	if ((void *)(opt + 2) > w->data_end)
		goto malformed;
	len = opt[1];
	if (len < 2 || off + len > w->opt_len)
		goto malformed;
	if (opt[0] == TCPOPT_SACK || opt[0] == TCPOPT_TIMESTAMP) {
		seen_bit = opt[0] == TCPOPT_SACK ? OPT_SEEN_SACK : OPT_SEEN_TS;
		if (w->seen & seen_bit)
			goto malformed;
		w->seen |= seen_bit;
		tcp_off = sizeof(struct tcphdr) + off;
		ret = opt[0] == TCPOPT_SACK ? opt_sack(w, opt, tcp_off, len)
					    : opt_ts(w, opt, tcp_off, len);
		if (ret)
			goto malformed;
	}
	w->off = off + len;
	return 0;

malformed:
	w->err = OPT_ERR;
	return 1;
}

/* Walks the opt_len bytes of options after the fixed header of tcp. */
static __always_inline int tcp_opts_walk(struct opt_walk *w, struct tcphdr *tcp, void *data_end,
					 __u32 opt_len)
{
	w->opts = (__u8 *)(tcp + 1);
	w->data_end = data_end;
	w->opt_len = opt_len;
	if (!opt_len)
		return 0;
	/* Every option takes at least one byte, so this many steps finish the walk. */
	bpf_loop(TCP_OPT_MAX_LEN, opt_walk_step, w, 0);
	return w->err;
}

static __always_inline int tcp_opts_rewrite(struct tcphdr *tcp, void *data_end, __u32 opt_len,
					    const struct splice_entry *e, struct csum_delta *csum)
{
	struct opt_walk w = { .e = e, .csum = csum };

	return tcp_opts_walk(&w, tcp, data_end, opt_len);
}

/* The TSval of a well-formed option area; false if there is none. */
static __always_inline bool tcp_opts_tsval(struct tcphdr *tcp, void *data_end, __u32 opt_len,
					   const struct splice_entry *e, __u32 *tsval)
{
	/* The verifier checks the callback's rewrite paths too: give them valid pointers. */
	struct csum_delta unused = {};
	struct opt_walk w = { .e = e, .csum = &unused, .learn = true };

	if (tcp_opts_walk(&w, tcp, data_end, opt_len) || !(w.seen & OPT_SEEN_TS))
		return false;
	*tsval = w.tsval;
	return true;
}

#endif /* MOSTO_TCP_OPTS_H */
