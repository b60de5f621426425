// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * mosto splice: packets of a flow that a TCP proxy handed over are translated
 * (seq/ack, SACK, timestamps, window, optionally addresses and ports, MACs)
 * and sent straight out of the other side. Everything else passes untouched.
 * The per-packet pipeline is described in ebpf/README.md.
 *
 * Compiled twice (see ctx/ctx.h): for XDP, and with MOSTO_HOOK_TC for tc.
 */
#include <stddef.h>
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "csum.h"
#include "maps.h"
#include "parsing.h"
#include "ctx/ctx.h"
#include "parse_ctx.h"
#include "splice_abi.h"
#include "tcp_opts.h"
#include "track.h"

#define TCP_WINDOW_MAX 0xffff

/* Out of line on purpose: FIN and RST are rare, and a real function puts
 * struct splice_event into the object's BTF (through this prototype), where
 * the ABI test compares it with user space's mirror. */
static __noinline void fill_event(struct splice_event *ev, const struct splice_key *key,
				  __u32 id, __u8 tcp_flags)
{
	ev->key = *key;
	ev->id = id;
	ev->tcp_flags = tcp_flags;
	ev->pad[0] = ev->pad[1] = ev->pad[2] = 0;
	ev->ts_ns = bpf_ktime_get_ns();
}

/* flags: the segment's TCP flags (read before a rewrite: on an skb the
 * checksum helper invalidates the packet pointers). */
static __always_inline void report_fin_rst(const struct splice_key *key, const struct splice_entry *e,
					   __u8 flags)
{
	struct splice_event *ev;

	if (!(flags & (MOSTO_TCP_FIN | MOSTO_TCP_RST)))
		return;
	ev = bpf_ringbuf_reserve(&mosto_events, sizeof(*ev), 0);
	if (!ev) {
		count(CNT_EVENT_LOST);
		return;
	}
	fill_event(ev, key, e->id, flags);
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline struct splice_stats *update_stats(struct ctx_buff *ctx,
							 const struct splice_entry *e)
{
	__u32 id = e->id;
	struct splice_stats *st = bpf_map_lookup_elem(&mosto_stats, &id);

	if (!st)
		return NULL;
	st->packets++;
	st->bytes += ctx_len(ctx);
	st->last_seen_ns = bpf_ktime_get_coarse_ns();
	return st;
}

/* Whether a segment of seq may replace the recorded one: anything ahead of
 * it, or not far behind (see MOSTO_LEARN_SEQ_BACK). Serial arithmetic. */
static __always_inline bool learn_moves_forward(const struct splice_stats *st, __u32 seq)
{
	return !st->has_tsval || (__s32)(seq - st->learn_seq) >= -(__s32)MOSTO_LEARN_SEQ_BACK;
}

/* A flow the proxy still owns: remember the peer's TSval for the hand-over,
 * where it anchors the timestamp deltas, with the segment's seq and ack: the
 * agent uses it only if they were in the socket's window. */
static __always_inline void learn_tsval(const struct packet *p, const struct splice_entry *e,
					struct splice_stats *st)
{
	struct tcphdr *tcp = p->tcp;
	__u32 hdr_len = tcp->doff * 4, tsval, seq = bpf_ntohl(tcp->seq);

	/* Not behind IPv6 extension headers: once spliced, such a flow's segments
	 * are dropped, so a timestamped one had better not be handed over (no
	 * TSval: the agent refuses). It also keeps the option walk from being
	 * verified once per extension-header chain. */
	if (!st || p->ipv6_ext || tcp->doff < TCP_MIN_DOFF || (void *)tcp + hdr_len > p->data_end)
		return;
	if (!learn_moves_forward(st, seq))
		return;
	if (tcp_opts_tsval(tcp, p->data_end, hdr_len - sizeof(*tcp), e, &tsval)) {
		st->last_tsval = tsval;
		st->has_tsval = 1;
		st->learn_seq = seq;
		st->learn_ack = bpf_ntohl(tcp->ack_seq);
	}
}

static __always_inline __u16 window_shift(__u16 window, __s8 shift)
{
	__u32 wide;

	if (shift >= 0) {
		wide = (__u32)window << (shift & 0xf);
		return wide > TCP_WINDOW_MAX ? TCP_WINDOW_MAX : wide;
	}
	return window >> ((-shift) & 0xf);
}

static __always_inline void shift_u32(__be32 *field, __u32 delta, struct csum_delta *csum)
{
	__u32 old = bpf_ntohl(*field), new = old + delta;

	/* seq, ack and addresses all sit at even offsets */
	csum_delta_add32(csum, 0, old, new);
	*field = bpf_htonl(new);
}

static __always_inline void set_u32(__be32 *field, __be32 value, struct csum_delta *csum)
{
	csum_delta_add32(csum, 0, bpf_ntohl(*field), bpf_ntohl(value));
	*field = value;
}

/* Rewrites addresses and ports. Addresses are in the TCP pseudo-header
 * (their delta goes to pseudo; for IPv4 it is also the header sum's delta),
 * ports in the TCP header (hdr). */
static __always_inline void rewrite_nat(struct packet *p, const struct splice_entry *e,
					struct csum_delta *hdr, struct csum_delta *pseudo)
{
	struct tcphdr *tcp = p->tcp;
	int i;

	if (p->ip4) {
		set_u32(&p->ip4->saddr, e->new_saddr[0], pseudo);
		set_u32(&p->ip4->daddr, e->new_daddr[0], pseudo);
	} else if (p->ip6) {
		for (i = 0; i < 4; i++) {
			set_u32(&p->ip6->saddr.in6_u.u6_addr32[i], e->new_saddr[i], pseudo);
			set_u32(&p->ip6->daddr.in6_u.u6_addr32[i], e->new_daddr[i], pseudo);
		}
	}
	/* Both ports form one 32-bit word at offset 0 of the TCP header. */
	csum_delta_add32(hdr, 0, ((__u32)bpf_ntohs(tcp->source) << 16) | bpf_ntohs(tcp->dest),
			 ((__u32)bpf_ntohs(e->new_sport) << 16) | bpf_ntohs(e->new_dport));
	tcp->source = e->new_sport;
	tcp->dest = e->new_dport;
}

/* Translates a packet of a spliced flow; returns 0, or -1 if it cannot be.
 * The TCP checksum goes last: on an skb its helper invalidates the packet
 * pointers. */
static __always_inline int translate(struct ctx_buff *ctx, struct packet *p,
				     const struct splice_entry *e)
{
	struct csum_delta hdr = {}, pseudo = {};
	struct tcphdr *tcp = p->tcp;
	__u32 hdr_len = tcp->doff * 4;
	__u16 window;

	if (tcp->doff < TCP_MIN_DOFF || (void *)tcp + hdr_len > p->data_end)
		return -1;
	if (tcp_opts_rewrite(tcp, p->data_end, hdr_len - sizeof(*tcp), e, &hdr))
		return -1;

	shift_u32(&tcp->seq, e->seq_delta, &hdr);
	shift_u32(&tcp->ack_seq, e->ack_delta, &hdr);
	if (e->wscale_shift) {
		window = window_shift(bpf_ntohs(tcp->window), e->wscale_shift);
		/* window and checksum share one 32-bit word; checksum itself is excluded */
		hdr.even += csum_diff16(bpf_ntohs(tcp->window), window);
		tcp->window = bpf_htons(window);
	}
	if (e->flags & SPLICE_F_NAT) {
		rewrite_nat(p, e, &hdr, &pseudo);
		/* The IPv4 header sum is never offloaded: a direct update is right
		 * on every hook, and the frame's sum (CHECKSUM_COMPLETE) is unchanged. */
		if (p->ip4)
			p->ip4->check = bpf_htons(csum_apply(bpf_ntohs(p->ip4->check),
							     csum_delta_fold(&pseudo)));
	}

	__builtin_memcpy(p->eth->h_source, e->smac, ETH_ALEN);
	__builtin_memcpy(p->eth->h_dest, e->dmac, ETH_ALEN);
	return ctx_l4_csum_update(ctx, tcp, p->l4_off + offsetof(struct tcphdr, check), !!p->ip6,
				  &hdr, &pseudo);
}

/* A spliced four-tuple's frames come in by the interface that faces its
 * sender. The same tuple anywhere else is a spoofer (or a routing change):
 * passed, it would reach the stack, where the agent's reservation socket
 * for the tuple ACKs in-window data that then goes nowhere, answers the rest
 * with ACKs of the proxy's old sequence space, and is reset by an in-window
 * RST (docs/security.md). So it is dropped, and reports no FIN or RST. */
static __always_inline bool ingress_ok(const struct ctx_buff *ctx, const struct splice_entry *e)
{
	return !e->ingress_ifindex || e->ingress_ifindex == ctx_ingress_ifindex(ctx);
}

/* Frames of a spliced flow that are dropped instead of translated: a first
 * fragment (the rest of its datagram cannot be translated, and the stack,
 * which would reassemble it, has no socket), and a segment behind IPv6
 * extension headers (they were addressed to the proxy's stack, and with a
 * routing header the TCP checksum covers an address the frame does not
 * show). Returns the counter, or 0 to translate. */
static __always_inline int untranslatable_encap(const struct packet *p)
{
	if (p->first_fragment)
		return CNT_DROP_FRAGMENT;
	if (p->ipv6_ext)
		return CNT_DROP_IPV6_EXT;
	return 0;
}

static __always_inline int forward(struct ctx_buff *ctx, const struct splice_entry *e)
{
	int ret;

	if (e->egress_ifindex == ctx_ingress_ifindex(ctx)) {
		count(CNT_HIT_TX);
		return ctx_tx(ctx);
	}
	ret = ctx_redirect(ctx, e->egress_ifindex);
	count(ctx_redirected(ret) ? CNT_HIT_REDIRECT : CNT_DROP_NO_EGRESS);
	return ret;
}

SEC(CTX_SEC)
int mosto_splice_prog(struct ctx_buff *ctx)
{
	struct track_verdict tv;
	struct splice_stats *st;
	struct splice_entry *e;
	struct packet p = {};
	int ret;

	ret = parse_ctx(ctx, &p);
	if (ret != PARSE_OK) {
		count(ret);
		return parse_drops(ret) ? CTX_DROP : CTX_PASS;
	}
	e = bpf_map_lookup_elem(&mosto_splice, &p.key);
	if (!e) {
		count(CNT_PASS_MISS);
		return CTX_PASS;
	}
	st = update_stats(ctx, e);
	if (!ingress_ok(ctx, e)) {
		count(CNT_DROP_WRONG_INGRESS);
		return CTX_DROP;
	}
	if (e->flags & SPLICE_F_LEARN) {
		/* The proxy's stack still checks these itself. */
		report_fin_rst(&p.key, e, ((__u8 *)p.tcp)[TCP_FLAGS_BYTE]);
		learn_tsval(&p, e, st);
		count(CNT_PASS_LEARN);
		return CTX_PASS;
	}
	/* The proxy's socket is gone: if this packet reached the stack, the
	 * kernel would answer it. Drop what we cannot translate; the receiver
	 * never sees it, so it reports nothing. */
	ret = untranslatable_encap(&p);
	if (ret) {
		count(ret);
		return CTX_DROP;
	}
	track_segment(&p, e, &tv);
	if (translate(ctx, &p, e)) {
		count(CNT_DROP_BAD_TCP);
		return CTX_DROP;
	}
	track_commit(e, &tv);
	if (tv.report)
		report_fin_rst(&p.key, e, tv.flags);
	else if (tv.flags & (MOSTO_TCP_FIN | MOSTO_TCP_RST))
		count(CNT_EVENT_OUT_OF_WINDOW);
	return forward(ctx, e);
}

char _license[] SEC("license") = "Dual BSD/GPL";
