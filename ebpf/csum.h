/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * Incremental Internet checksum update (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
 * bpf_csum_diff() works in XDP too; the arithmetic is written out because it
 * is p4src/include/checksum.p4's, term for term and in the same order, so both
 * programs produce the same bits for every frame, also one whose checksum was
 * wrong on arrival.
 *
 * Every changed 32-bit field adds ~old + new to an accumulator. The sum is
 * byte-order independent except for alignment: a field at an odd offset from
 * the start of the checksummed data pairs its bytes with its neighbours, so
 * its contribution is byte-swapped. Such fields go to a separate accumulator
 * that is swapped once, at the end.
 */
#ifndef MOSTO_CSUM_H
#define MOSTO_CSUM_H

#include <linux/types.h>

struct csum_delta {
	__u32 even; /* fields at even offsets */
	__u32 odd;  /* fields at odd offsets (TCP options only) */
};

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Values are in host byte order, as read with bpf_ntohl/bpf_ntohs. */
static __always_inline __u32 csum_diff16(__u16 from, __u16 to)
{
	return (__u16)~from + (__u32)to;
}

static __always_inline __u32 csum_diff32(__u32 from, __u32 to)
{
	return csum_diff16(from >> 16, to >> 16) + csum_diff16(from & 0xffff, to & 0xffff);
}

static __always_inline void csum_delta_add32(struct csum_delta *d, __u32 offset, __u32 from,
					     __u32 to)
{
	/* Each add stays below 2^18; at most a few hundred adds per packet. */
	if (offset & 1)
		d->odd += csum_diff32(from, to);
	else
		d->even += csum_diff32(from, to);
}

static __always_inline __u16 csum_delta_fold(const struct csum_delta *d)
{
	__u16 odd = csum_fold(d->odd);

	return csum_fold((__u32)csum_fold(d->even) + (__u16)((odd << 8) | (odd >> 8)));
}

/* Applies a folded delta to a checksum field (host byte order in and out). */
static __always_inline __u16 csum_apply(__u16 check, __u16 delta)
{
	return ~csum_fold((__u32)(__u16)~check + delta);
}

#endif /* MOSTO_CSUM_H */
