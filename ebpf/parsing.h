/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Header parsing up to the fixed TCP header: Ethernet, up to MOSTO_VLAN_MAX
 * VLAN tags (in the data, or for tc the outer one in skb metadata), IPv4 or
 * IPv6 with up to MOSTO_IPV6_EXT_MAX extension headers. */
#ifndef MOSTO_PARSING_H
#define MOSTO_PARSING_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
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
#define IP6_OFFSET 0xfff8 /* fragment header: offset (13 bits), 2 reserved, M */
#define IP6_MF 0x0001
#define IPV6_EXT_UNIT 8 /* extension header lengths count 8-byte units */
#define TCP_MIN_DOFF 5
#define TCP_FLAGS_BYTE 13 /* offset of the flags byte in the TCP header */

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* The first unit of every extension header the parser walks. For a fragment
 * header (always one unit) the second byte is reserved and frag_off holds
 * the offset and M; for the others hdrlen counts the units after the first. */
struct ipv6_ext_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
	__be16 frag_off;
	__be32 rest;
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
	int meta_tags; /* VLAN tags outside the data (ctx_vlan_tags()) */
	__u32 first_fragment; /* offset 0, more fragments follow */
	__u32 ipv6_ext;       /* TCP sits behind IPv6 extension headers */
	struct splice_key key;
};

#define PARSE_OK CNT_MAX /* any other value is the mosto_counter to count */

/* Parse results that drop the frame: it may belong to a spliced flow, and
 * the stack, which would reassemble or walk it, no longer has its socket. */
static __always_inline bool parse_drops(int ret)
{
	return ret == CNT_DROP_FRAGMENT || ret == CNT_DROP_DEEP_HEADERS;
}

/* The kernel takes both kinds of tag off (eth_type_vlan()), in any order. */
static __always_inline bool eth_type_vlan(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

static __always_inline int parse_eth(struct packet *p, __u16 *proto, void **next)
{
	struct ethhdr *eth = p->data;
	struct vlan_hdr *vlan;
	int tags = p->meta_tags, i;

	if ((void *)(eth + 1) > p->data_end)
		return CNT_PASS_TRUNCATED;
	p->eth = eth;
	p->l3_off = sizeof(*eth);
	*proto = eth->h_proto;
	*next = eth + 1;
	/* One pass more than tags allowed: the last one only sees the bound. A
	 * priority tag (VID 0) is stripped by the stack however many there are. */
	for (i = 0; i <= MOSTO_VLAN_MAX; i++) {
		if (!eth_type_vlan(*proto))
			return PARSE_OK;
		if (tags >= MOSTO_VLAN_MAX)
			return CNT_DROP_DEEP_HEADERS;
		vlan = *next;
		if ((void *)(vlan + 1) > p->data_end)
			return CNT_PASS_TRUNCATED;
		*proto = vlan->encap_proto;
		*next = vlan + 1;
		p->l3_off += sizeof(*vlan);
		tags++;
	}
	return CNT_DROP_DEEP_HEADERS;
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
	p->first_fragment = !!(ip->frag_off & bpf_htons(IP_MF));
	p->key.family = AF_INET;
	p->key.saddr[0] = ip->saddr;
	p->key.daddr[0] = ip->daddr;
	*next = l3 + ihl_bytes;
	p->l4_off = p->l3_off + ihl_bytes;
	return PARSE_OK;
}

static __always_inline bool ipv6_ext_walked(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_FRAGMENT || nexthdr == IPPROTO_DSTOPTS;
}

/* Walks the extension headers from *next to TCP; *next ends on it. Anything
 * else (AH, ESP, no next header, ...) is not TCP as far as the parser goes. */
static __always_inline int parse_ipv6_ext(struct packet *p, __u8 nexthdr, void **next)
{
	struct ipv6_ext_hdr *ext;
	__u32 units = 0, size;
	int i;

	for (i = 0; i <= MOSTO_IPV6_EXT_MAX; i++) {
		if (nexthdr == IPPROTO_TCP)
			return PARSE_OK;
		if (!ipv6_ext_walked(nexthdr))
			return CNT_PASS_NOT_TCP;
		if (i == MOSTO_IPV6_EXT_MAX)
			break;
		ext = *next;
		if ((void *)(ext + 1) > p->data_end)
			return CNT_PASS_TRUNCATED;
		size = nexthdr == IPPROTO_FRAGMENT ? 1 : ext->hdrlen + 1;
		if (units + size > MOSTO_IPV6_EXT_UNITS)
			break;
		if (*next + size * IPV6_EXT_UNIT > p->data_end)
			return CNT_PASS_TRUNCATED;
		if (nexthdr == IPPROTO_FRAGMENT) {
			if (ext->frag_off & bpf_htons(IP6_OFFSET))
				return CNT_PASS_FRAGMENT;
			/* M = 0 at offset 0 is an atomic fragment (RFC 6946): whole. */
			if (ext->frag_off & bpf_htons(IP6_MF))
				p->first_fragment = 1;
		}
		nexthdr = ext->nexthdr;
		*next += size * IPV6_EXT_UNIT;
		p->l4_off += size * IPV6_EXT_UNIT;
		units += size;
		p->ipv6_ext = 1;
	}
	return CNT_DROP_DEEP_HEADERS;
}

static __always_inline int parse_ipv6(struct packet *p, void *l3, void **next)
{
	struct ipv6hdr *ip6 = l3;

	if ((void *)(ip6 + 1) > p->data_end)
		return CNT_PASS_TRUNCATED;
	if (ip6->version != 6)
		return CNT_PASS_BAD_IP;
	*next = ip6 + 1;
	p->l4_off = p->l3_off + sizeof(*ip6);
	p->ip6 = ip6;
	p->key.family = AF_INET6;
	__builtin_memcpy(p->key.saddr, &ip6->saddr, sizeof(p->key.saddr));
	__builtin_memcpy(p->key.daddr, &ip6->daddr, sizeof(p->key.daddr));
	return parse_ipv6_ext(p, ip6->nexthdr, next);
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
	/* A first fragment that splits the fixed TCP header (RFC 1858's tiny
	 * fragment) cannot be matched, and the stack would reassemble it: no
	 * stack sends one, so it goes whoever's it is. */
	if ((void *)(tcp + 1) > p->data_end)
		return p->first_fragment ? CNT_DROP_FRAGMENT : CNT_PASS_TRUNCATED;
	p->tcp = tcp;
	p->key.sport = tcp->source;
	p->key.dport = tcp->dest;
	return PARSE_OK;
}

#endif /* MOSTO_PARSING_H */
