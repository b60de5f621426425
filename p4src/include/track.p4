/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The FIN/RST window check of a spliced flow (RFC 5961), the P4 twin of
 * ebpf/track.h (which says why): a tracked entry reports an RST only at the
 * receiver's exact next seq, a FIN only with an acceptable ACK, and a
 * segment with an unacceptable ACK does not move its sender's state.
 *
 * The state sits in registers by entry id, tagged with the entry's
 * generation. PI cannot write (or read) registers from the control plane,
 * so no slot is ever set up or cleared from there: an entry's own slot
 * counts only once this entry wrote it (gen == track_gen), until then the
 * action's install values stand in; the linked peer's slot likewise
 * (gen == peer_gen), else a quiet flow's state mirrored from this entry's.
 */
#ifndef _MOSTO_TRACK_P4_
#define _MOSTO_TRACK_P4_

#include "headers.p4"

/* a <= b in sequence space (RFC 1982 serial arithmetic) */
bool seq_le(in bit<32> a, in bit<32> b) {
    return (int<32>)(b - a) >= 0;
}

/* Runs on a splice entry's frame that will be translated, before the
 * rewrite. Sets meta.track_report: whether its FIN/RST (if any) is
 * reported; every one for an entry without track state (track_gen 0). */
control Track(in headers_t hdr, inout local_metadata_t meta) {

    /* struct splice_track of ebpf/splice_abi.h, one register per field. */
    register<bit<32>>(MOSTO_MAX_ENTRIES) mosto_track_gen;
    register<bit<32>>(MOSTO_MAX_ENTRIES) mosto_track_snd_nxt;
    register<bit<32>>(MOSTO_MAX_ENTRIES) mosto_track_ack;

    apply {
        bit<8> flags = hdr.tcp.flags;
        meta.track_report = (flags & (MOSTO_TCP_FIN | MOSTO_TCP_RST)) != 0;
        if (meta.splice.track_gen == 0) {
            return;
        }
        bit<32> id = meta.splice.id;
        bit<32> peer_id = meta.splice.peer_id;

        /* The entry's sender: its slot, if this entry wrote it; else as installed. */
        bit<32> gen;
        bit<32> own_snd_nxt = meta.splice.track_snd_nxt;
        bit<32> own_ack = meta.splice.track_ack;
        mosto_track_gen.read(gen, id);
        if (gen == meta.splice.track_gen) {
            mosto_track_snd_nxt.read(own_snd_nxt, id);
            mosto_track_ack.read(own_ack, id);
        }

        /* The other direction's sender: its slot, if the linked peer wrote
         * it; else a quiet flow's (each side acknowledged all the other sent). */
        bit<32> peer_snd_nxt = meta.splice.track_ack;
        bit<32> peer_ack = meta.splice.track_snd_nxt;
        if (peer_id != MOSTO_NO_PEER) {
            mosto_track_gen.read(gen, peer_id);
            if (gen == meta.splice.peer_gen) {
                mosto_track_snd_nxt.read(peer_snd_nxt, peer_id);
                mosto_track_ack.read(peer_ack, peer_id);
            }
        }

        /* Payload bytes as the IP header gives them (a frame behind IPv6
         * extension headers is dropped before this point). */
        bit<32> hdrs = (bit<32>)hdr.tcp.data_offset * 4;
        bit<32> ip_len;
        if (hdr.ipv4.isValid()) {
            ip_len = (bit<32>)hdr.ipv4.total_len;
            hdrs = hdrs + (bit<32>)hdr.ipv4.ihl * 4;
        } else {
            ip_len = (bit<32>)hdr.ipv6.payload_len;
        }
        bit<32> payload = 0;
        if (ip_len > hdrs) {
            payload = ip_len - hdrs;
        }

        bit<32> seq = hdr.tcp.seq_no;
        bit<32> ack_out = hdr.tcp.ack_no + meta.splice.ack_delta;
        bool ack_ok = (flags & MOSTO_TCP_ACK) != 0 && seq_le(own_ack, ack_out) &&
                      seq_le(ack_out, peer_snd_nxt);
        bool seq_ok = seq_le(seq, own_snd_nxt + MOSTO_TRACK_SEQ_AHEAD);
        if ((flags & MOSTO_TCP_RST) != 0) {
            meta.track_report = seq == peer_ack;
        } else {
            if ((flags & MOSTO_TCP_FIN) != 0) {
                meta.track_report = ack_ok && seq_ok;
            }
            if (ack_ok && seq_ok) {
                bit<32> end = seq + payload;
                if ((flags & MOSTO_TCP_FIN) != 0) {
                    end = end + 1;
                }
                own_ack = ack_out;
                if (seq_le(own_snd_nxt, end)) {
                    own_snd_nxt = end;
                }
            }
        }
        /* Nothing after this point drops the frame untranslated. */
        mosto_track_gen.write(id, meta.splice.track_gen);
        mosto_track_snd_nxt.write(id, own_snd_nxt);
        mosto_track_ack.write(id, own_ack);
    }
}

#endif /* _MOSTO_TRACK_P4_ */
