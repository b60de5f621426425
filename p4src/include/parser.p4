/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The parser: Ethernet, one 802.1Q tag, IPv4 (with options) or IPv6, TCP and
 * its options, exactly as ebpf/parsing.h and ebpf/tcp_opts.h do it.
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
            default: dispatch_l3;
        }
    }

    state check_vlan {
        transition select(meta.frame_left < VLAN_HLEN) {
            true: truncated;
            false: parse_vlan;
        }
    }

    state parse_vlan {
        packet.extract(hdr.vlan);
        meta.frame_left = meta.frame_left - VLAN_HLEN;
        meta.ether_type = hdr.vlan.ether_type;
        transition dispatch_l3;
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

    /* ---- IPv6: extension headers are not walked ----------------------- */

    state check_ipv6 {
        transition select(meta.frame_left < IPV6_HLEN) {
            true: truncated;
            false: parse_ipv6;
        }
    }

    state parse_ipv6 {
        packet.extract(hdr.ipv6);
        meta.frame_left = meta.frame_left - IPV6_HLEN;
        transition select(hdr.ipv6.version, hdr.ipv6.next_hdr) {
            (6, IPPROTO_TCP): check_tcp;
            (6, _): not_tcp;
            default: bad_ip;
        }
    }

    /* ---- TCP ---------------------------------------------------------- */

    state check_tcp {
        transition select(meta.frame_left < TCP_MIN_HLEN) {
            true: truncated;
            false: parse_tcp;
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
}

control MostoDeparser(packet_out packet, in headers_t hdr) {
    apply {
        packet.emit(hdr.ethernet);
        packet.emit(hdr.vlan);
        packet.emit(hdr.ipv4);
        packet.emit(hdr.ipv4_options);
        packet.emit(hdr.ipv6);
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
