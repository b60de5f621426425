/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Headers, constants and metadata of the mosto splice program. Counter
 * indices, table sizes and the event's TCP flags come from
 * shared/contract.h, the header the XDP/tc program and the Python package
 * read too (p4c runs the C preprocessor on P4 sources).
 */
#ifndef _MOSTO_HEADERS_P4_
#define _MOSTO_HEADERS_P4_

#include "../../shared/contract.h"

typedef bit<48> mac_addr_t;
typedef bit<32> ipv4_addr_t;
typedef bit<128> ipv6_addr_t;

const bit<16> ETHERTYPE_IPV4 = 0x0800;
const bit<16> ETHERTYPE_IPV6 = 0x86DD;
const bit<16> ETHERTYPE_VLAN = 0x8100;
const bit<16> ETHERTYPE_QINQ = 0x88A8; /* 802.1ad */
const bit<8> IPPROTO_TCP = 6;
const bit<8> IPPROTO_HOPOPTS = 0;
const bit<8> IPPROTO_ROUTING = 43;
const bit<8> IPPROTO_FRAGMENT = 44;
const bit<8> IPPROTO_DSTOPTS = 60;

const bit<32> ETH_HLEN = 14;
const bit<32> VLAN_HLEN = 4;
const bit<32> IPV4_MIN_HLEN = 20;
const bit<32> IPV6_HLEN = 40;
const bit<32> IPV6_EXT_UNIT = 8; /* extension header lengths count 8-byte units */
const bit<32> TCP_MIN_HLEN = 20;
const bit<4> IPV4_MIN_IHL = 5;
const bit<4> TCP_MIN_DOFF = 5;

const bit<8> TCPOPT_EOL = 0;
const bit<8> TCPOPT_NOP = 1;
const bit<8> TCPOPT_SACK = 5;
const bit<8> TCPOPT_TIMESTAMP = 8;
const bit<8> TCPOLEN_TIMESTAMP = 10;
#define TCP_OPT_MAX_LEN 40

/* The lookup key's address family: the IP version. */
const bit<8> FAMILY_IPV4 = 4;
const bit<8> FAMILY_IPV6 = 6;

/* Global counters: one constant per MOSTO_COUNTERS entry, CNT_<NAME> = index,
 * as enum mosto_counter in ebpf/splice_abi.h. */
typedef bit<32> mosto_counter_t;
#define MOSTO_COUNTER_CONST(NAME, name, index) const mosto_counter_t CNT_##NAME = index;
MOSTO_COUNTERS(MOSTO_COUNTER_CONST)
#undef MOSTO_COUNTER_CONST
const mosto_counter_t PARSE_OK = MOSTO_NUM_COUNTERS; /* any other value is the counter to count */

header ethernet_h {
    mac_addr_t dst_addr;
    mac_addr_t src_addr;
    bit<16> ether_type;
}

header vlan_tag_h {
    bit<3> pcp;
    bit<1> dei;
    bit<12> vid;
    bit<16> ether_type;
}

header ipv4_h {
    bit<4> version;
    bit<4> ihl;
    bit<8> diffserv;
    bit<16> total_len;
    bit<16> identification;
    bit<3> flags;
    bit<13> frag_offset;
    bit<8> ttl;
    bit<8> protocol;
    bit<16> hdr_checksum;
    ipv4_addr_t src_addr;
    ipv4_addr_t dst_addr;
}

/* IHL 6..15: up to 40 bytes of options, carried through untouched. */
header ipv4_options_h {
    varbit<320> data;
}

/* IPv6 extension headers, carried through in 8-byte units (their length
 * fields count those); the parser reads each header's first unit ahead. */
header ipv6_ext_unit_h {
    bit<64> data;
}

header ipv6_h {
    bit<4> version;
    bit<8> traffic_class;
    bit<20> flow_label;
    bit<16> payload_len;
    bit<8> next_hdr;
    bit<8> hop_limit;
    ipv6_addr_t src_addr;
    ipv6_addr_t dst_addr;
}

header tcp_h {
    bit<16> src_port;
    bit<16> dst_port;
    bit<32> seq_no;
    bit<32> ack_no;
    bit<4> data_offset;
    bit<4> res;
    bit<8> flags; /* CWR ECE URG ACK PSH RST SYN FIN: byte 13 */
    bit<16> window;
    bit<16> checksum;
    bit<16> urgent_ptr;
}

/*
 * TCP options. Only SACK and timestamps are rewritten, and each may appear
 * once, so the option area is cut at those two into at most five pieces that
 * the deparser puts back in order:
 *
 *   fill0 | ts_a | fill_a | sack | fill_b | ts_b | fill_c
 *
 * ts_a is a timestamp option before the SACK option (or without one), ts_b
 * one after it; every other option (NOP, MSS, window scale, ...) is copied
 * byte by byte into the filler stack of the stretch it lies in.
 */
header tcp_opt_byte_h {
    bit<8> value;
}

header tcp_opt_ts_h {
    bit<8> kind;
    bit<8> length;
    bit<32> tsval;
    bit<32> tsecr;
}

header tcp_opt_sack_h {
    bit<8> kind;
    bit<8> length; /* 2 + 8 * blocks */
}

header tcp_sack_block_h {
    bit<32> left_edge;
    bit<32> right_edge;
}

struct headers_t {
    ethernet_h ethernet;
    vlan_tag_h[MOSTO_VLAN_MAX] vlan;
    ipv4_h ipv4;
    ipv4_options_h ipv4_options;
    ipv6_h ipv6;
    ipv6_ext_unit_h[MOSTO_IPV6_EXT_UNITS] ipv6_ext;
    tcp_h tcp;
    tcp_opt_byte_h[TCP_OPT_MAX_LEN] fill0;
    tcp_opt_ts_h ts_a;
    tcp_opt_byte_h[TCP_OPT_MAX_LEN - 10] fill_a;
    tcp_opt_sack_h sack;
    tcp_sack_block_h[4] sack_blocks;
    tcp_opt_byte_h[TCP_OPT_MAX_LEN - 10] fill_b;
    tcp_opt_ts_h ts_b;
    tcp_opt_byte_h[TCP_OPT_MAX_LEN - 20] fill_c;
}

/* Which filler stack the option walk copies into. */
const bit<2> OPT_STRETCH_FIRST = 0;     /* fill0 */
const bit<2> OPT_STRETCH_AFTER_TS = 1;  /* fill_a */
const bit<2> OPT_STRETCH_AFTER_SACK = 2; /* fill_b */
const bit<2> OPT_STRETCH_LAST = 3;      /* fill_c */

/* What a splice entry says (the action parameters), for the rewrite. */
struct splice_params_t {
    bit<32> seq_delta;
    bit<32> ack_delta; /* also moves SACK blocks */
    bool timestamps;   /* shift TSval and TSecr */
    bit<32> tsval_delta;
    bit<32> tsecr_delta;
    bit<4> window_shl; /* window <<= shl (saturating), or */
    bit<4> window_shr; /* window >>= shr; at most one of them is not 0 */
    bool nat;          /* rewrite addresses and ports */
    bit<128> new_src_addr; /* IPv4: the low 32 bits */
    bit<128> new_dst_addr;
    bit<16> new_src_port;
    bit<16> new_dst_port;
    mac_addr_t smac;
    mac_addr_t dmac;
    bit<9> egress_port;
    bool any_ingress;   /* frames may come in by any port, or only by */
    bit<9> ingress_port;
    /* The FIN/RST window check (track.p4): the entry's id (its slot), the
     * sender's state at install and the generation that tags the slot (0:
     * not tracked, every FIN/RST is reported), the other direction's entry. */
    bit<32> id;
    bit<32> track_gen;
    bit<32> track_snd_nxt;
    bit<32> track_ack;
    bit<32> peer_id;    /* MOSTO_NO_PEER: not installed */
    bit<32> peer_gen;   /* its track_gen when it was linked */
}

/* Reported to the control plane for a FIN or RST of a spliced flow that
 * passed the window check (every one, for an entry not tracked), and
 * for every frame of a learning entry's flow (with the TSval, if it has one,
 * and the segment's seq and ack: the control plane records them as the XDP
 * program's learn_tsval() does, mosto.dataplane.learning). */
struct splice_event_t {
    bit<8> family;
    bit<128> src_addr;
    bit<128> dst_addr;
    bit<16> src_port;
    bit<16> dst_port;
    bit<8> tcp_flags;
    bit<1> learning; /* the entry is a learning entry */
    bit<1> has_tsval; /* learning: a well-formed header with a timestamp option */
    bit<32> tsval;
    bit<32> seq_no;
    bit<32> ack_no;
}

struct local_metadata_t {
    mosto_counter_t parse_result; /* PARSE_OK, or the pass counter */
    mosto_counter_t counter;      /* the one this frame lands in */
    bool to_host;                 /* not translated: follow the forwarding table */
    bool learning;                /* the entry hit is a learning entry */
    bit<32> frame_left;           /* bytes of the frame after what is parsed */
    bit<16> ether_type;           /* after the VLAN tags, if any */
    bit<8> vlan_tags;             /* tags parsed */
    bool first_fragment;          /* offset 0, more fragments follow */
    bool ipv6_ext;                /* TCP sits behind IPv6 extension headers */
    bool track_report;            /* the frame's FIN/RST passed the window check */
    bool out_of_window;           /* ... it did not: count event_out_of_window too */

    /* IPv6 extension-header walk */
    bit<8> ext_next;   /* the next header */
    bit<8> ext_walked; /* headers walked */
    bit<16> ext_units; /* their units */
    bit<16> ext_span;  /* units of the current one */
    bit<16> ext_left;  /* units of it still to copy */
    bit<16> frag_word; /* a fragment header's offset and M */

    /* TCP option walk */
    bool tcp_bad;     /* the header cannot be translated (drop on a hit) */
    bit<8> opt_left;  /* option bytes not walked yet */
    bit<8> opt_off;   /* offset of the next option in the option area */
    bit<8> opt_kind;
    bit<8> opt_len;
    bit<8> fill_left; /* bytes of the current option still to copy */
    bit<8> sack_blocks_left;
    bit<2> stretch;   /* OPT_STRETCH_* */
    bool seen_sack;
    bool seen_ts;
    bit<1> sack_odd;  /* the option sits at an odd offset from the TCP header */
    bit<1> ts_odd;

    /* lookup key */
    bit<8> family;
    bit<128> src_addr;
    bit<128> dst_addr;

    splice_params_t splice;
}

#endif /* _MOSTO_HEADERS_P4_ */
