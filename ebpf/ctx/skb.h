/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * The tc side of the context layer: SCHED_CLS in direct-action mode at
 * clsact ingress, on an skb. Unlike XDP it may see a non-linear skb, a GSO
 * super-frame (up to 64 KiB, one program run), a checksum left to the
 * device (CHECKSUM_PARTIAL) or verified by it (CHECKSUM_COMPLETE), and a
 * VLAN tag the kernel took off the data into skb metadata.
 */
#ifndef MOSTO_CTX_SKB_H
#define MOSTO_CTX_SKB_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "../csum.h"
#include "../maps.h"

#define ctx_buff __sk_buff
#define CTX_SEC "tc"
/* Not ours: on to the next filter on the hook, then the stack. */
#define CTX_PASS TC_ACT_UNSPEC
#define CTX_DROP TC_ACT_SHOT

/* The most the program reads: Ethernet, MOSTO_VLAN_MAX tags, IPv6 with the
 * most extension-header bytes it walks (IPv4 with options is shorter), TCP
 * with options. The data offset is a 4-bit count of 32-bit words. */
#define CTX_VLAN_HLEN 4
#define CTX_IP_MAX_HLEN (40 + MOSTO_IPV6_EXT_UNITS * 8)
#define CTX_TCP_MAX_HLEN (15 * 4)
#define CTX_HDR_MAX (ETH_HLEN + MOSTO_VLAN_MAX * CTX_VLAN_HLEN + CTX_IP_MAX_HLEN + CTX_TCP_MAX_HLEN)

static __always_inline void *ctx_data(const struct __sk_buff *skb)
{
	return (void *)(long)skb->data;
}

static __always_inline void *ctx_data_end(const struct __sk_buff *skb)
{
	return (void *)(long)skb->data_end;
}

/* Direct access reaches only the linear part: is some of the frame beyond it? */
static __always_inline bool ctx_nonlinear(const struct __sk_buff *skb)
{
	return ctx_data(skb) + skb->len > ctx_data_end(skb);
}

/* For a frame whose headers are not all in the linear part (a GRO'd or
 * tunnelled one; a local sender's GSO frame keeps them there): pull as much
 * as the longest headers take. Also unclones, so writes are safe. */
static __always_inline int ctx_pull_headers(struct __sk_buff *skb)
{
	__u32 want = skb->len;

	if (want > CTX_HDR_MAX)
		want = CTX_HDR_MAX;
	if (ctx_data(skb) + want <= ctx_data_end(skb))
		return 0;
	return bpf_skb_pull_data(skb, want);
}

/* The whole frame as it arrived: fragments included, and the tag the kernel
 * moved into metadata (XDP counts it in the data). A GSO super-frame counts
 * once, with all its bytes. */
static __always_inline __u64 ctx_len(const struct __sk_buff *skb)
{
	return skb->len + (skb->vlan_present ? CTX_VLAN_HLEN : 0);
}

static __always_inline __u32 ctx_ingress_ifindex(const struct __sk_buff *skb)
{
	return skb->ingress_ifindex;
}

/* At tc ingress the kernel has already moved the outer tag (802.1Q or
 * 802.1ad) into metadata: it counts as the first of the frame's tags. */
static __always_inline int ctx_vlan_tags(const struct __sk_buff *skb)
{
	return skb->vlan_present ? 1 : 0;
}

/* Out of the ingress port (XDP_TX's equivalent); a metadata tag goes along. */
static __always_inline int ctx_tx(struct __sk_buff *skb)
{
	return bpf_redirect(skb->ingress_ifindex, 0);
}

/* bpf_redirect_map() is XDP's; tc redirects by ifindex, to the same set of
 * ports: an egress that is not in mosto_tx_ports is dropped, as in XDP. A
 * veth whose peer sits in another namespace gets the frame straight into
 * the peer's ingress: measured side by side, the offloaded download went
 * from 0.86x to 1.04x plain forwarding. Its own egress qdisc and tc egress
 * are then skipped, as they are for any frame bpf_redirect_peer() sends. */
static __always_inline int ctx_redirect(struct __sk_buff *skb, __u32 ifindex)
{
	if (!bpf_map_lookup_elem(&mosto_tx_ports, &ifindex))
		return TC_ACT_SHOT;
	if (bpf_map_lookup_elem(&mosto_peer_ports, &ifindex))
		return bpf_redirect_peer(ifindex, 0);
	return bpf_redirect(ifindex, 0);
}

static __always_inline bool ctx_redirected(int verdict)
{
	return verdict == TC_ACT_REDIRECT;
}

/* The kernel's csum helpers add a delta in memory order; ours is in host
 * order. One's-complement sums commute with the byte swap. */
static __always_inline __u32 csum_delta_mem(const struct csum_delta *d)
{
	return bpf_htons(csum_delta_fold(d));
}

/*
 * bpf_l4_csum_replace() knows what the skb's checksum field holds, which the
 * program cannot see:
 * - CHECKSUM_PARTIAL (a local sender's offload; every GSO super-frame): the
 *   field holds the pseudo-header sum only, the device (or skb_checksum_help,
 *   or GSO segmentation) sums the TCP header and payload later. So changes
 *   to the TCP header and options must not touch it, address changes must.
 *   The helper does exactly that: flags 0 leaves the field alone,
 *   BPF_F_PSEUDO_HDR applies the delta uncomplemented.
 * - otherwise the field holds the full checksum and both deltas apply as in
 *   XDP; for CHECKSUM_COMPLETE the helper also moves skb->csum by the
 *   pseudo-header part (the only change the frame's sum sees), except for
 *   IPv6 (BPF_F_IPV6), which has no header checksum to offset it.
 * Two steps give XDP's one-step bits: both fold to the one value in
 * 1..0xffff congruent to ~check + delta. The one exception is a field of
 * 0xffff (no sender computes it) with an all-zero delta: XDP keeps 0xffff,
 * the helper writes 0.
 */
static __always_inline int ctx_l4_csum_update(struct __sk_buff *skb, struct tcphdr *tcp,
					      __u32 check_off, bool ipv6,
					      const struct csum_delta *hdr,
					      const struct csum_delta *pseudo)
{
	__u64 flags = BPF_F_PSEUDO_HDR | (ipv6 ? BPF_F_IPV6 : 0);
	long ret;

	if (bpf_l4_csum_replace(skb, check_off, 0, csum_delta_mem(hdr), 0))
		return -1;
	if (!pseudo->even && !pseudo->odd)
		return 0;
	ret = bpf_l4_csum_replace(skb, check_off, 0, csum_delta_mem(pseudo), flags);
	/* Kernels before BPF_F_IPV6 (6.16) refuse it; they update skb->csum for
	 * IPv6 too, which only a CHECKSUM_COMPLETE frame notices. */
	if (ret && ipv6)
		ret = bpf_l4_csum_replace(skb, check_off, 0, csum_delta_mem(pseudo),
					  BPF_F_PSEUDO_HDR);
	return ret ? -1 : 0;
}

#endif /* MOSTO_CTX_SKB_H */
