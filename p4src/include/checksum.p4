/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Incremental Internet checksum update (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')),
 * the same arithmetic as ebpf/csum.h, so a frame comes out bit for bit as the
 * XDP program makes it, also when its checksum was wrong on arrival.
 *
 * Every changed 32-bit field adds ~old + new to an accumulator. A field at an
 * odd offset from the start of the checksummed data (a TCP option) pairs its
 * bytes with its neighbours: it goes to a second accumulator that is
 * byte-swapped once, at the end.
 */
#ifndef _MOSTO_CHECKSUM_P4_
#define _MOSTO_CHECKSUM_P4_

struct csum_delta_t {
    bit<32> even; /* fields at even offsets */
    bit<32> odd;  /* fields at odd offsets (TCP options only) */
}

bit<16> csum_fold(in bit<32> sum) {
    bit<32> s = (sum & 0xffff) + (sum >> 16);
    s = (s & 0xffff) + (s >> 16);
    return s[15:0];
}

bit<32> csum_diff16(in bit<16> from, in bit<16> to) {
    return (bit<32>)(~from) + (bit<32>)to;
}

bit<32> csum_diff32(in bit<32> from, in bit<32> to) {
    return csum_diff16(from[31:16], to[31:16]) + csum_diff16(from[15:0], to[15:0]);
}

bit<32> csum_diff128(in bit<128> from, in bit<128> to) {
    return csum_diff32(from[127:96], to[127:96]) + csum_diff32(from[95:64], to[95:64]) +
           csum_diff32(from[63:32], to[63:32]) + csum_diff32(from[31:0], to[31:0]);
}

/* Each add stays below 2^20; a packet makes a few dozen. */
void csum_delta_add(inout csum_delta_t d, in bit<1> odd_offset, in bit<32> diff) {
    if (odd_offset == 1) {
        d.odd = d.odd + diff;
    } else {
        d.even = d.even + diff;
    }
}

bit<16> csum_delta_fold(in csum_delta_t d) {
    bit<16> odd = csum_fold(d.odd);
    return csum_fold((bit<32>)csum_fold(d.even) + (bit<32>)(odd[7:0] ++ odd[15:8]));
}

/* Applies a folded delta to a checksum field. */
bit<16> csum_apply(in bit<16> check, in bit<16> delta) {
    return ~csum_fold((bit<32>)(~check) + (bit<32>)delta);
}

/* The P4 checksum blocks of v1model: nothing is verified (a frame with a bad
 * checksum is translated like any other) and nothing is recomputed (the
 * splice control fixes the sums up incrementally). */
control MostoVerifyChecksum(inout headers_t hdr, inout local_metadata_t meta) {
    apply { }
}

control MostoComputeChecksum(inout headers_t hdr, inout local_metadata_t meta) {
    apply { }
}

#endif /* _MOSTO_CHECKSUM_P4_ */
