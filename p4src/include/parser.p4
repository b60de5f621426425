/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The parser: Ethernet, up to MOSTO_VLAN_MAX VLAN tags (802.1Q or 802.1ad),
 * IPv4 (with options) or IPv6 (with up to MOSTO_IPV6_EXT_MAX extension
 * headers), TCP and its options, exactly as ebpf/parsing.h and
 * ebpf/tcp_opts.h do it.
 *
 * Every length is checked against standard_metadata.packet_length before a
 * header is extracted, so a short frame never raises PacketTooShort: the
 * parser stops where the XDP program stops and records why in
 * meta.parse_result (a pass counter) or meta.tcp_bad. What was not extracted
 * stays payload, so a frame that passes leaves byte for byte as it came.
 */
#ifndef _MOSTO_PARSER_P4_
#define _MOSTO_PARSER_P4_

#include "headers.p4"

parser MostoParser(packet_in packet,
                   out headers_t hdr,
                   inout local_metadata_t meta,
                   inout standard_metadata_t standard_metadata) {

    state start {
        meta.parse_result = PARSE_OK;
        meta.frame_left = standard_metadata.packet_length;
        meta.tcp_bad = false;
        meta.vlan_tags = 0;
        meta.first_fragment = false;
        meta.ipv6_ext = false;
        transition select(meta.frame_left < ETH_HLEN) {
            true: truncated;
            false: parse_ethernet;
        }
    }

    state parse_ethernet {
        packet.extract(hdr.ethernet);
        meta.frame_left = meta.frame_left - ETH_HLEN;
        meta.ether_type = hdr.ethernet.ether_type;
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_VLAN: check_vlan;
            ETHERTYPE_QINQ: check_vlan;
            default: dispatch_l3;
        }
    }

    /* A tag past MOSTO_VLAN_MAX may hide a spliced flow (the stack strips
     * any number of priority tags): drop_deep_headers, as parse_eth(). */
    state check_vlan {
        transition select(meta.vlan_tags == MOSTO_VLAN_MAX, meta.frame_left < VLAN_HLEN) {
            (true, _): deep_headers;
            (false, true): truncated;
            (false, false): parse_vlan;
        }
    }

    state parse_vlan {
        packet.extract(hdr.vlan.next);
        meta.vlan_tags = meta.vlan_tags + 1;
        meta.frame_left = meta.frame_left - VLAN_HLEN;
        meta.ether_type = hdr.vlan.last.ether_type;
        transition select(meta.ether_type) {
            ETHERTYPE_VLAN: check_vlan;
            ETHERTYPE_QINQ: check_vlan;
            default: dispatch_l3;
        }
    }

    state dispatch_l3 {
        transition select(meta.ether_type) {
            ETHERTYPE_IPV4: check_ipv4;
            ETHERTYPE_IPV6: check_ipv6;
            default: not_ip;
        }
    }

    /* ---- IPv4: the order of the checks is parse_ipv4()'s -------------- */

    state check_ipv4 {
        transition select(meta.frame_left < IPV4_MIN_HLEN) {
            true: truncated;
            false: parse_ipv4;
        }
    }

    state parse_ipv4 {
        packet.extract(hdr.ipv4);
        meta.frame_left = meta.frame_left - IPV4_MIN_HLEN;
        transition select(hdr.ipv4.version != 4 || hdr.ipv4.ihl < IPV4_MIN_IHL) {
            true: bad_ip;
            false: check_ipv4_fragment;
        }
    }

    state check_ipv4_fragment {
        meta.first_fragment = hdr.ipv4.flags[0:0] == 1; /* MF */
        transition select(hdr.ipv4.frag_offset) {
            0: check_ipv4_protocol;
            default: fragment;
        }
    }

    state check_ipv4_protocol {
        transition select(hdr.ipv4.protocol) {
            IPPROTO_TCP: check_ipv4_options;
            default: not_tcp;
        }
    }

    state check_ipv4_options {
        bit<32> options_len = ((bit<32>)(hdr.ipv4.ihl - IPV4_MIN_IHL)) << 2;
        transition select(meta.frame_left < options_len, hdr.ipv4.ihl) {
            (true, _): truncated;
            (false, IPV4_MIN_IHL): check_tcp;
            (false, _): parse_ipv4_options;
        }
    }

    state parse_ipv4_options {
        bit<32> options_len = ((bit<32>)(hdr.ipv4.ihl - IPV4_MIN_IHL)) << 2;
        packet.extract(hdr.ipv4_options, options_len << 3);
        meta.frame_left = meta.frame_left - options_len;
        transition check_tcp;
    }

    /* ---- IPv6 and its extension headers: parse_ipv6_ext()'s walk ------- */

    state check_ipv6 {
        transition select(meta.frame_left < IPV6_HLEN) {
            true: truncated;
            false: parse_ipv6;
        }
    }

    state parse_ipv6 {
        packet.extract(hdr.ipv6);
        meta.frame_left = meta.frame_left - IPV6_HLEN;
        meta.ext_next = hdr.ipv6.next_hdr;
        meta.ext_walked = 0;
        meta.ext_units = 0;
        transition select(hdr.ipv6.version) {
            6: walk_ipv6_ext;
            default: bad_ip;
        }
    }

    state walk_ipv6_ext {
        transition select(meta.ext_next) {
            IPPROTO_TCP: check_tcp;
            IPPROTO_HOPOPTS: check_ipv6_ext;
            IPPROTO_ROUTING: check_ipv6_ext;
            IPPROTO_FRAGMENT: check_ipv6_ext;
            IPPROTO_DSTOPTS: check_ipv6_ext;
            default: not_tcp; /* AH, ESP, no next header, ... */
        }
    }

    state check_ipv6_ext {
        transition select(meta.ext_walked == MOSTO_IPV6_EXT_MAX, meta.frame_left < IPV6_EXT_UNIT) {
            (true, _): deep_headers;
            (false, true): truncated;
            (false, false): size_ipv6_ext;
        }
    }

    state size_ipv6_ext {
        transition select(meta.ext_next) {
            IPPROTO_FRAGMENT: size_ipv6_frag;
            default: size_ipv6_opts;
        }
    }

    /* A fragment header is one unit; its second byte is reserved. */
    state size_ipv6_frag {
        bit<32> head = packet.lookahead<bit<32>>();
        meta.ext_span = 1;
        meta.frag_word = head[15:0];
        transition check_ipv6_ext_room;
    }

    state size_ipv6_opts {
        bit<16> head = packet.lookahead<bit<16>>();
        meta.ext_span = (bit<16>)head[7:0] + 1;
        transition check_ipv6_ext_room;
    }

    state check_ipv6_ext_room {
        transition select(meta.ext_units + meta.ext_span > MOSTO_IPV6_EXT_UNITS,
                          meta.frame_left < ((bit<32>)meta.ext_span << 3)) {
            (true, _): deep_headers;
            (false, true): truncated;
            (false, false): check_ipv6_frag;
        }
    }

    /* Offset 0 with M is a first fragment; M = 0 an atomic one (RFC 6946):
     * a whole segment behind a header. */
    state check_ipv6_frag {
        transition select(meta.ext_next, meta.frag_word[15:3], meta.frag_word[0:0]) {
            (IPPROTO_FRAGMENT, 0, 1): first_ipv6_fragment;
            (IPPROTO_FRAGMENT, 0, 0): copy_ipv6_ext;
            (IPPROTO_FRAGMENT, _, _): fragment;
            default: copy_ipv6_ext;
        }
    }

    state first_ipv6_fragment {
        meta.first_fragment = true;
        transition copy_ipv6_ext;
    }

    state copy_ipv6_ext {
        bit<16> head = packet.lookahead<bit<16>>();
        meta.ext_next = head[15:8];
        meta.ext_walked = meta.ext_walked + 1;
        meta.ext_units = meta.ext_units + meta.ext_span;
        meta.ext_left = meta.ext_span;
        meta.frame_left = meta.frame_left - ((bit<32>)meta.ext_span << 3);
        meta.ipv6_ext = true;
        transition copy_ipv6_ext_unit;
    }

    /* At most MOSTO_IPV6_EXT_UNITS in all: check_ipv6_ext_room saw to it. */
    state copy_ipv6_ext_unit {
        packet.extract(hdr.ipv6_ext.next);
        meta.ext_left = meta.ext_left - 1;
        transition select(meta.ext_left) {
            0: walk_ipv6_ext;
            default: copy_ipv6_ext_unit;
        }
    }

    /* ---- TCP ---------------------------------------------------------- */

    /* A first fragment splitting the fixed TCP header (RFC 1858's tiny
     * fragment) is dropped unmatched: the stack would reassemble it. */
    state check_tcp {
        transition select(meta.frame_left < TCP_MIN_HLEN, meta.first_fragment) {
            (true, true): tiny_fragment;
            (true, false): truncated;
            (false, _): parse_tcp;
        }
    }

    /* From here on the frame has a key. What follows only decides whether
     * a hit can be translated (translate() in splice.bpf.c). */
    state parse_tcp {
        packet.extract(hdr.tcp);
        meta.frame_left = meta.frame_left - TCP_MIN_HLEN;
        meta.opt_left = ((bit<8>)hdr.tcp.data_offset << 2) - (bit<8>)TCP_MIN_HLEN;
        transition select(hdr.tcp.data_offset < TCP_MIN_DOFF) {
            true: tcp_bad;
            false: check_tcp_options;
        }
    }

    state check_tcp_options {
        meta.opt_off = 0;
        meta.stretch = OPT_STRETCH_FIRST;
        meta.seen_sack = false;
        meta.seen_ts = false;
        transition select(meta.frame_left < (bit<32>)meta.opt_left) {
            true: tcp_bad; /* the data offset points past the frame */
            false: parse_tcp_options;
        }
    }

    /* One option per pass, like opt_walk_step(). */
    state parse_tcp_options {
        transition select(meta.opt_left) {
            0: accept;
            default: parse_tcp_option;
        }
    }

    state parse_tcp_option {
        transition select(packet.lookahead<bit<8>>()) {
            TCPOPT_EOL: accept; /* the rest of the area stays payload */
            TCPOPT_NOP: parse_tcp_opt_nop;
            default: check_tcp_opt_len;
        }
    }

    state parse_tcp_opt_nop {
        meta.fill_left = 1;
        transition copy_tcp_opt;
    }

    state check_tcp_opt_len {
        transition select(meta.opt_left) {
            1: tcp_bad; /* no room for the length byte */
            default: parse_tcp_opt_len;
        }
    }

    state parse_tcp_opt_len {
        bit<16> kind_len = packet.lookahead<bit<16>>();
        meta.opt_kind = kind_len[15:8];
        meta.opt_len = kind_len[7:0];
        transition select(meta.opt_len < 2 || meta.opt_len > meta.opt_left) {
            true: tcp_bad;
            false: dispatch_tcp_opt;
        }
    }

    state dispatch_tcp_opt {
        transition select(meta.opt_kind) {
            TCPOPT_SACK: check_tcp_opt_sack;
            TCPOPT_TIMESTAMP: check_tcp_opt_ts;
            default: parse_tcp_opt_other;
        }
    }

    state parse_tcp_opt_other {
        meta.fill_left = meta.opt_len;
        transition copy_tcp_opt;
    }

    /* Copies the meta.fill_left bytes of one option into the filler stack of
     * the current stretch, a byte per pass. */
    state copy_tcp_opt {
        transition select(meta.stretch) {
            OPT_STRETCH_FIRST: copy_tcp_opt_fill0;
            OPT_STRETCH_AFTER_TS: copy_tcp_opt_fill_a;
            OPT_STRETCH_AFTER_SACK: copy_tcp_opt_fill_b;
            OPT_STRETCH_LAST: copy_tcp_opt_fill_c;
        }
    }

    state copy_tcp_opt_fill0 {
        packet.extract(hdr.fill0.next);
        transition copied_tcp_opt_byte;
    }

    state copy_tcp_opt_fill_a {
        packet.extract(hdr.fill_a.next);
        transition copied_tcp_opt_byte;
    }

    state copy_tcp_opt_fill_b {
        packet.extract(hdr.fill_b.next);
        transition copied_tcp_opt_byte;
    }

    state copy_tcp_opt_fill_c {
        packet.extract(hdr.fill_c.next);
        transition copied_tcp_opt_byte;
    }

    state copied_tcp_opt_byte {
        meta.fill_left = meta.fill_left - 1;
        meta.opt_left = meta.opt_left - 1;
        meta.opt_off = meta.opt_off + 1;
        transition select(meta.fill_left) {
            0: parse_tcp_options;
            default: copy_tcp_opt;
        }
    }

    /* SACK: 2 + 8n bytes, n = 1..4, once. */
    state check_tcp_opt_sack {
        transition select(meta.seen_sack, meta.opt_len) {
            (false, 10): parse_tcp_opt_sack;
            (false, 18): parse_tcp_opt_sack;
            (false, 26): parse_tcp_opt_sack;
            (false, 34): parse_tcp_opt_sack;
            default: tcp_bad;
        }
    }

    state parse_tcp_opt_sack {
        packet.extract(hdr.sack);
        meta.seen_sack = true;
        meta.sack_odd = meta.opt_off[0:0];
        meta.sack_blocks_left = (meta.opt_len - 2) >> 3;
        meta.opt_left = meta.opt_left - meta.opt_len;
        meta.opt_off = meta.opt_off + meta.opt_len;
        meta.stretch = OPT_STRETCH_AFTER_SACK;
        transition parse_tcp_sack_block;
    }

    state parse_tcp_sack_block {
        packet.extract(hdr.sack_blocks.next);
        meta.sack_blocks_left = meta.sack_blocks_left - 1;
        transition select(meta.sack_blocks_left) {
            0: parse_tcp_options;
            default: parse_tcp_sack_block;
        }
    }

    /* Timestamps: 10 bytes, once; before or after the SACK option. */
    state check_tcp_opt_ts {
        transition select(meta.seen_ts, meta.opt_len, meta.seen_sack) {
            (false, TCPOLEN_TIMESTAMP, false): parse_tcp_opt_ts_a;
            (false, TCPOLEN_TIMESTAMP, true): parse_tcp_opt_ts_b;
            default: tcp_bad;
        }
    }

    state parse_tcp_opt_ts_a {
        packet.extract(hdr.ts_a);
        meta.stretch = OPT_STRETCH_AFTER_TS;
        transition parsed_tcp_opt_ts;
    }

    state parse_tcp_opt_ts_b {
        packet.extract(hdr.ts_b);
        meta.stretch = OPT_STRETCH_LAST;
        transition parsed_tcp_opt_ts;
    }

    state parsed_tcp_opt_ts {
        meta.seen_ts = true;
        meta.ts_odd = meta.opt_off[0:0];
        meta.opt_left = meta.opt_left - TCPOLEN_TIMESTAMP;
        meta.opt_off = meta.opt_off + TCPOLEN_TIMESTAMP;
        transition parse_tcp_options;
    }

    /* ---- where parsing stops early ------------------------------------ */

    state tcp_bad {
        meta.tcp_bad = true;
        transition accept;
    }

    state truncated {
        meta.parse_result = CNT_PASS_TRUNCATED;
        transition accept;
    }

    state not_ip {
        meta.parse_result = CNT_PASS_NOT_IP;
        transition accept;
    }

    state not_tcp {
        meta.parse_result = CNT_PASS_NOT_TCP;
        transition accept;
    }

    state bad_ip {
        meta.parse_result = CNT_PASS_BAD_IP;
        transition accept;
    }

    state fragment {
        meta.parse_result = CNT_PASS_FRAGMENT;
        transition accept;
    }

    state tiny_fragment {
        meta.parse_result = CNT_DROP_FRAGMENT;
        transition accept;
    }

    state deep_headers {
        meta.parse_result = CNT_DROP_DEEP_HEADERS;
        transition accept;
    }
}

control MostoDeparser(packet_out packet, in headers_t hdr) {
    apply {
        packet.emit(hdr.ethernet);
        packet.emit(hdr.vlan);
        packet.emit(hdr.ipv4);
        packet.emit(hdr.ipv4_options);
        packet.emit(hdr.ipv6);
        packet.emit(hdr.ipv6_ext);
        packet.emit(hdr.tcp);
        packet.emit(hdr.fill0);
        packet.emit(hdr.ts_a);
        packet.emit(hdr.fill_a);
        packet.emit(hdr.sack);
        packet.emit(hdr.sack_blocks);
        packet.emit(hdr.fill_b);
        packet.emit(hdr.ts_b);
        packet.emit(hdr.fill_c);
    }
}

#endif /* _MOSTO_PARSER_P4_ */
