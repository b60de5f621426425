/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The splice control: look the flow direction up, check and report FIN/RST
 * (track.p4), translate (seq/ack, SACK, timestamps, window, addresses and
 * ports, MACs) and pick the way out. The P4 twin of mosto_splice_prog() in ebpf/splice.bpf.c.
 */
#ifndef _MOSTO_SPLICE_P4_
#define _MOSTO_SPLICE_P4_

#include "headers.p4"
#include "checksum.p4"
#include "track.p4"

const bit<32> TCP_WINDOW_MAX = 0xffff;

/* Adds delta to a 32-bit field; the checksum change goes to sum. */
void shift_u32(inout bit<32> field, in bit<32> delta, inout bit<32> sum) {
    bit<32> old = field;
    field = old + delta;
    sum = sum + csum_diff32(old, field);
}

void shift_sack_block(inout tcp_sack_block_h block, in bit<32> delta,
                               inout bit<32> sum) {
    if (block.isValid()) {
        shift_u32(block.left_edge, delta, sum);
        shift_u32(block.right_edge, delta, sum);
    }
}

void shift_timestamps(inout tcp_opt_ts_h ts, in splice_params_t e, inout bit<32> sum) {
    if (ts.isValid()) {
        shift_u32(ts.tsval, e.tsval_delta, sum);
        shift_u32(ts.tsecr, e.tsecr_delta, sum);
    }
}

/* The rewrite of translate(): every field it changes, and both checksums. */
control SpliceTranslate(inout headers_t hdr, in local_metadata_t meta) {
    apply {
        splice_params_t e = meta.splice;
        csum_delta_t tcp_csum = { 0, 0 };
        csum_delta_t ip_csum = { 0, 0 };

        /* SACK blocks carry sequence numbers of the other direction. All
         * edges of one option share its offset parity. */
        bit<32> sack_sum = 0;
        shift_sack_block(hdr.sack_blocks[0], e.ack_delta, sack_sum);
        shift_sack_block(hdr.sack_blocks[1], e.ack_delta, sack_sum);
        shift_sack_block(hdr.sack_blocks[2], e.ack_delta, sack_sum);
        shift_sack_block(hdr.sack_blocks[3], e.ack_delta, sack_sum);
        if (hdr.sack.isValid()) {
            csum_delta_add(tcp_csum, meta.sack_odd, sack_sum);
        }
        if (e.timestamps) {
            bit<32> ts_sum = 0;
            shift_timestamps(hdr.ts_a, e, ts_sum);
            shift_timestamps(hdr.ts_b, e, ts_sum);
            if (hdr.ts_a.isValid() || hdr.ts_b.isValid()) {
                csum_delta_add(tcp_csum, meta.ts_odd, ts_sum);
            }
        }

        shift_u32(hdr.tcp.seq_no, e.seq_delta, tcp_csum.even);
        shift_u32(hdr.tcp.ack_no, e.ack_delta, tcp_csum.even);

        if (e.window_shl != 0 || e.window_shr != 0) {
            bit<32> wide = (bit<32>)hdr.tcp.window << e.window_shl;
            bit<16> window;
            if (e.window_shr != 0) {
                window = hdr.tcp.window >> e.window_shr;
            } else if (wide > TCP_WINDOW_MAX) {
                window = (bit<16>)TCP_WINDOW_MAX;
            } else {
                window = wide[15:0];
            }
            /* window and checksum share one 32-bit word; the checksum itself is excluded */
            tcp_csum.even = tcp_csum.even + csum_diff16(hdr.tcp.window, window);
            hdr.tcp.window = window;
        }

        if (e.nat) {
            if (hdr.ipv4.isValid()) {
                ip_csum.even = csum_diff32(hdr.ipv4.src_addr, e.new_src_addr[31:0]) +
                               csum_diff32(hdr.ipv4.dst_addr, e.new_dst_addr[31:0]);
                hdr.ipv4.src_addr = e.new_src_addr[31:0];
                hdr.ipv4.dst_addr = e.new_dst_addr[31:0];
                /* The pseudo-header makes the same change to the TCP sum. */
                tcp_csum.even = tcp_csum.even + ip_csum.even;
            } else {
                tcp_csum.even = tcp_csum.even + csum_diff128(hdr.ipv6.src_addr, e.new_src_addr) +
                                csum_diff128(hdr.ipv6.dst_addr, e.new_dst_addr);
                hdr.ipv6.src_addr = e.new_src_addr;
                hdr.ipv6.dst_addr = e.new_dst_addr;
            }
            /* Both ports form one 32-bit word at offset 0 of the TCP header. */
            tcp_csum.even = tcp_csum.even +
                            csum_diff32(hdr.tcp.src_port ++ hdr.tcp.dst_port,
                                        e.new_src_port ++ e.new_dst_port);
            hdr.tcp.src_port = e.new_src_port;
            hdr.tcp.dst_port = e.new_dst_port;
        }

        hdr.tcp.checksum = csum_apply(hdr.tcp.checksum, csum_delta_fold(tcp_csum));
        if (e.nat && hdr.ipv4.isValid()) {
            hdr.ipv4.hdr_checksum = csum_apply(hdr.ipv4.hdr_checksum, csum_delta_fold(ip_csum));
        }

        hdr.ethernet.src_addr = e.smac;
        hdr.ethernet.dst_addr = e.dmac;
    }
}

/* Runs on frames that parsed up to the fixed TCP header. Sets meta.counter,
 * and for a translated frame the egress port (or drops it); meta.to_host
 * stays true for a frame that passes. */
control Splice(inout headers_t hdr,
               inout local_metadata_t meta,
               inout standard_metadata_t standard_metadata) {

    /* Per entry: packets, and bytes of the frames as received. */
    direct_counter(CounterType.packets_and_bytes) mosto_stats;

    action splice(bit<32> seq_delta,
                  bit<32> ack_delta,
                  bit<1> timestamps,
                  bit<32> tsval_delta,
                  bit<32> tsecr_delta,
                  bit<4> window_shl,
                  bit<4> window_shr,
                  bit<1> nat,
                  bit<128> new_src_addr,
                  bit<128> new_dst_addr,
                  bit<16> new_src_port,
                  bit<16> new_dst_port,
                  mac_addr_t smac,
                  mac_addr_t dmac,
                  bit<9> egress_port,
                  bit<1> any_ingress,
                  bit<9> ingress_port,
                  bit<32> id,
                  bit<32> track_gen,
                  bit<32> track_snd_nxt,
                  bit<32> track_ack,
                  bit<32> peer_id,
                  bit<32> peer_gen) {
        meta.splice.seq_delta = seq_delta;
        meta.splice.ack_delta = ack_delta;
        meta.splice.timestamps = timestamps == 1;
        meta.splice.tsval_delta = tsval_delta;
        meta.splice.tsecr_delta = tsecr_delta;
        meta.splice.window_shl = window_shl;
        meta.splice.window_shr = window_shr;
        meta.splice.nat = nat == 1;
        meta.splice.new_src_addr = new_src_addr;
        meta.splice.new_dst_addr = new_dst_addr;
        meta.splice.new_src_port = new_src_port;
        meta.splice.new_dst_port = new_dst_port;
        meta.splice.smac = smac;
        meta.splice.dmac = dmac;
        meta.splice.egress_port = egress_port;
        meta.splice.any_ingress = any_ingress == 1;
        meta.splice.ingress_port = ingress_port;
        meta.splice.id = id;
        meta.splice.track_gen = track_gen;
        meta.splice.track_snd_nxt = track_snd_nxt;
        meta.splice.track_ack = track_ack;
        meta.splice.peer_id = peer_id;
        meta.splice.peer_gen = peer_gen;
    }

    /* The proxy still owns the flow: report the sender's TSval, pass. */
    action learn() {
        meta.learning = true;
    }

    /* One direction of a spliced flow, as the packet arrives. IPv4
     * addresses sit in the low 32 bits of the address keys. */
    table mosto_splice {
        key = {
            meta.family: exact @name("family");
            meta.src_addr: exact @name("src_addr");
            meta.dst_addr: exact @name("dst_addr");
            hdr.tcp.src_port: exact @name("src_port");
            hdr.tcp.dst_port: exact @name("dst_port");
        }
        actions = {
            splice;
            learn;
            @defaultonly NoAction;
        }
        const default_action = NoAction();
        counters = mosto_stats;
        support_timeout = true;
        size = MOSTO_MAX_ENTRIES;
    }

    /* Ports a hit may be sent out of, other than its ingress port (the
     * mosto_tx_ports devmap of the XDP program). */
    table mosto_tx_ports {
        key = {
            meta.splice.egress_port: exact @name("port");
        }
        actions = {
            NoAction;
        }
        const default_action = NoAction();
        size = MOSTO_MAX_PORTS;
    }

    SpliceTranslate() translate;
    Track() track;

    apply {
        if (hdr.ipv4.isValid()) {
            meta.family = FAMILY_IPV4;
            meta.src_addr = (bit<128>)hdr.ipv4.src_addr;
            meta.dst_addr = (bit<128>)hdr.ipv4.dst_addr;
        } else {
            meta.family = FAMILY_IPV6;
            meta.src_addr = hdr.ipv6.src_addr;
            meta.dst_addr = hdr.ipv6.dst_addr;
        }
        meta.learning = false;
        if (!mosto_splice.apply().hit) {
            meta.counter = CNT_PASS_MISS;
            return;
        }

        /* Not by the port that faces the flow's sender: a spoofer. Passed, the
         * frame would reach the agent's reservation socket for the tuple
         * (ingress_ok() in ebpf/splice.bpf.c). No FIN or RST is reported. */
        if (!meta.learning && !meta.splice.any_ingress &&
            meta.splice.ingress_port != standard_metadata.ingress_port) {
            meta.to_host = false;
            meta.counter = CNT_DROP_WRONG_INGRESS;
            mark_to_drop(standard_metadata);
            return;
        }

        /* A learning entry reports every frame by digest: its TSval (of a
         * well-formed header), and a FIN or RST unchecked (the proxy's stack
         * still checks those itself). One digest per frame at most: BMv2
         * keeps the last one. */
        if (meta.learning) {
            bit<1> has_tsval = 0;
            bit<32> tsval = 0;
            if (!meta.tcp_bad && !meta.ipv6_ext) {
                if (hdr.ts_a.isValid()) {
                    has_tsval = 1;
                    tsval = hdr.ts_a.tsval;
                } else if (hdr.ts_b.isValid()) {
                    has_tsval = 1;
                    tsval = hdr.ts_b.tsval;
                }
            }
            digest<splice_event_t>(1, { meta.family, meta.src_addr, meta.dst_addr,
                                        hdr.tcp.src_port, hdr.tcp.dst_port, hdr.tcp.flags,
                                        1w1, has_tsval, tsval,
                                        hdr.tcp.seq_no, hdr.tcp.ack_no });
            meta.counter = CNT_PASS_LEARN;
            return;
        }

        meta.to_host = false;
        /* The proxy's socket is gone: if this frame reached the host it
         * would be answered. Drop what cannot be translated: first fragments
         * and segments behind IPv6 extension headers (untranslatable_encap()
         * in ebpf/splice.bpf.c says why), malformed TCP headers. The
         * receiver never sees them, so they report nothing. */
        if (meta.first_fragment) {
            meta.counter = CNT_DROP_FRAGMENT;
            mark_to_drop(standard_metadata);
            return;
        }
        if (meta.ipv6_ext) {
            meta.counter = CNT_DROP_IPV6_EXT;
            mark_to_drop(standard_metadata);
            return;
        }
        if (meta.tcp_bad) {
            meta.counter = CNT_DROP_BAD_TCP;
            mark_to_drop(standard_metadata);
            return;
        }
        /* The window check sees the segment as it arrived (before the
         * rewrite), and so does the digest. */
        track.apply(hdr, meta);
        if (meta.track_report) {
            digest<splice_event_t>(1, { meta.family, meta.src_addr, meta.dst_addr,
                                        hdr.tcp.src_port, hdr.tcp.dst_port, hdr.tcp.flags,
                                        1w0, 1w0, 32w0,
                                        hdr.tcp.seq_no, hdr.tcp.ack_no });
        } else if ((hdr.tcp.flags & (MOSTO_TCP_FIN | MOSTO_TCP_RST)) != 0) {
            meta.out_of_window = true;
        }
        translate.apply(hdr, meta);
        if (meta.splice.egress_port == standard_metadata.ingress_port) {
            meta.counter = CNT_HIT_TX;
            standard_metadata.egress_spec = meta.splice.egress_port;
        } else if (mosto_tx_ports.apply().hit) {
            meta.counter = CNT_HIT_REDIRECT;
            standard_metadata.egress_spec = meta.splice.egress_port;
        } else {
            meta.counter = CNT_DROP_NO_EGRESS;
            mark_to_drop(standard_metadata);
        }
    }
}

#endif /* _MOSTO_SPLICE_P4_ */
