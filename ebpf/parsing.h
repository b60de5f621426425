/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Header parsing up to the fixed TCP header: Ethernet, one 802.1Q tag (in the
 * data, or for tc in skb metadata), IPv4 or IPv6. */
#ifndef MOSTO_PARSING_H
#define MOSTO_PARSING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ctx/ctx.h"
#include "splice_abi.h"

#define AF_INET 2
#define AF_INET6 10
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define TCP_MIN_DOFF 5

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* What the parser found; pointers are bounds-checked against data_end. */
struct packet {
	void *data;
	void *data_end;
	struct ethhdr *eth;
	struct iphdr *ip4;    /* exactly one of ip4 / ip6 is set */
	struct ipv6hdr *ip6;
	struct tcphdr *tcp;
	__u32 l3_off;  /* of the IP header, from data */
	__u32 l4_off;  /* of the TCP header, from data */
	int vlan_meta; /* CTX_VLAN_*: a tag outside the data */
	struct splice_key key;
};

#define PARSE_OK CNT_MAX /* any other value is the mosto_counter to count */

static __always_inline int parse_eth(struct packet *p, __u16 *proto, void **next)
{
	struct ethhdr *eth = p->data;
	struct vlan_hdr *vlan;

	if ((void *)(eth + 1) > p->data_end)
		return CNT_PASS_TRUNCATED;
	p->eth = eth;
	p->l3_off = sizeof(*eth);
	*proto = eth->h_proto;
	*next = eth + 1;
	/* A tag outside the data counts as the first: a frame with one there and
	 * one in the data has two, and passes as XDP passes a double-tagged one. */
	if (p->vlan_meta == CTX_VLAN_OTHER)
		return CNT_PASS_NOT_IP;
	if (p->vlan_meta == CTX_VLAN_8021Q)
		return *proto == bpf_htons(ETH_P_8021Q) ? CNT_PASS_NOT_IP : PARSE_OK;
	if (*proto != bpf_htons(ETH_P_8021Q))
		return PARSE_OK;
	vlan = *next;
	if ((void *)(vlan + 1) > p->data_end)
		return CNT_PASS_TRUNCATED;
	*proto = vlan->encap_proto;
	*next = vlan + 1;
	p->l3_off += sizeof(*vlan);
	return PARSE_OK;
}

static __always_inline int parse_ipv4(struct packet *p, void *l3, void **next)
{
	struct iphdr *ip = l3;
	__u32 ihl_bytes;

	if ((void *)(ip + 1) > p->data_end)
		return CNT_PASS_TRUNCATED;
	if (ip->version != 4 || ip->ihl < 5)
		return CNT_PASS_BAD_IP;
	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return CNT_PASS_FRAGMENT;
	if (ip->protocol != IPPROTO_TCP)
		return CNT_PASS_NOT_TCP;
	ihl_bytes = ip->ihl * 4;
	if (l3 + ihl_bytes > p->data_end)
		return CNT_PASS_TRUNCATED;
	p->ip4 = ip;
	p->key.family = AF_INET;
	p->key.saddr[0] = ip->saddr;
	p->key.daddr[0] = ip->daddr;
	*next = l3 + ihl_bytes;
	p->l4_off = p->l3_off + ihl_bytes;
	return PARSE_OK;
}

static __always_inline int parse_ipv6(struct packet *p, void *l3, void **next)
{
	struct ipv6hdr *ip6 = l3;

	if ((void *)(ip6 + 1) > p->data_end)
		return CNT_PASS_TRUNCATED;
	if (ip6->version != 6)
		return CNT_PASS_BAD_IP;
	/* Extension headers are not walked: such packets pass as not-TCP. */
	if (ip6->nexthdr != IPPROTO_TCP)
		return CNT_PASS_NOT_TCP;
	p->ip6 = ip6;
	p->key.family = AF_INET6;
	__builtin_memcpy(p->key.saddr, &ip6->saddr, sizeof(p->key.saddr));
	__builtin_memcpy(p->key.daddr, &ip6->daddr, sizeof(p->key.daddr));
	*next = ip6 + 1;
	p->l4_off = p->l3_off + sizeof(*ip6);
	return PARSE_OK;
}

/* Fills p up to the fixed TCP header and its key; returns PARSE_OK or a counter. */
static __always_inline int parse_packet(struct packet *p)
{
	struct tcphdr *tcp;
	void *l3, *l4;
	__u16 proto;
	int ret;

	ret = parse_eth(p, &proto, &l3);
	if (ret != PARSE_OK)
		return ret;
	if (proto == bpf_htons(ETH_P_IP))
		ret = parse_ipv4(p, l3, &l4);
	else if (proto == bpf_htons(ETH_P_IPV6))
		ret = parse_ipv6(p, l3, &l4);
	else
		return CNT_PASS_NOT_IP;
	if (ret != PARSE_OK)
		return ret;

	tcp = l4;
	if ((void *)(tcp + 1) > p->data_end)
		return CNT_PASS_TRUNCATED;
	p->tcp = tcp;
	p->key.sport = tcp->source;
	p->key.dport = tcp->dest;
	return PARSE_OK;
}

#endif /* MOSTO_PARSING_H */
