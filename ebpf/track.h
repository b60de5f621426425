/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * The FIN/RST window check of a spliced flow (RFC 5961). Once a flow is
 * spliced, the end points' stacks still check every segment they get, but
 * the agent ends a splice on the data plane's word that a FIN or RST went
 * by. A blind spoofer must not be able to say that word: a tracked entry
 * reports
 *   - an RST only if its seq is exactly the receiver's next expected one
 *     (RFC 5961 3.2: anything else in window gets a challenge ACK from the
 *     receiver, and a peer that really reset answers that with an exact RST);
 *   - a FIN only if its ACK is acceptable (RFC 5961 5.2): no older than the
 *     sender's last one and no newer than what the other side sent.
 * Each entry keeps its sender's next seq and latest acceptable ACK in
 * mosto_track; segments with an unacceptable ACK (a blind spoofer's) do not
 * move it. The slot is tagged with the entry's generation, so a new entry
 * in an old slot starts from its own install state, and a peer slot that is
 * not yet (or no longer) the linked peer's reads as a quiet flow's: each side
 * having acknowledged all the other sent (track_ack / track_snd_nxt mirrored).
 * p4src/include/track.p4 is the P4 twin.
 */
#ifndef MOSTO_TRACK_H
#define MOSTO_TRACK_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parsing.h"
#include "splice_abi.h"

/* What one segment does to its entry's state; decided before the rewrite,
 * applied once the frame is translated (track_commit()). */
struct track_verdict {
	struct splice_track next; /* the sender's state after this segment */
	__u8 flags;               /* the segment's TCP flags */
	bool tracked;
	bool report;              /* its FIN/RST is reported */
};

/* a <= b in sequence space (RFC 1982 serial arithmetic) */
static __always_inline bool seq_le(__u32 a, __u32 b)
{
	return (__s32)(b - a) >= 0;
}

/* Bytes of payload the IP header says the segment carries (a GSO frame's
 * header describes the whole of it). */
static __always_inline __u32 tcp_payload_len(const struct packet *p)
{
	__u32 ip_len, hdrs = p->l4_off - p->l3_off + p->tcp->doff * 4;

	if (p->ip4)
		ip_len = bpf_ntohs(p->ip4->tot_len);
	else if (p->ip6)
		ip_len = sizeof(struct ipv6hdr) + bpf_ntohs(p->ip6->payload_len);
	else
		return 0;
	return ip_len > hdrs ? ip_len - hdrs : 0;
}

static __always_inline struct splice_track *track_slot(__u32 id)
{
	return bpf_map_lookup_elem(&mosto_track, &id);
}

/* The entry's sender: its slot, if this entry wrote it; else as installed. */
static __always_inline struct splice_track own_state(const struct splice_entry *e)
{
	struct splice_track *slot = track_slot(e->id);

	if (slot && slot->gen == e->track_gen)
		return *slot;
	return (struct splice_track){ e->track_gen, e->track_snd_nxt, e->track_ack };
}

/* The other direction's sender: its slot, if the linked peer wrote it; else
 * a quiet flow's, mirrored from this entry's install state. */
static __always_inline struct splice_track peer_state(const struct splice_entry *e)
{
	struct splice_track *slot = NULL;

	if (e->peer_id != MOSTO_NO_PEER)
		slot = track_slot(e->peer_id);
	if (slot && slot->gen == e->peer_gen)
		return *slot;
	return (struct splice_track){ e->peer_gen, e->track_ack, e->track_snd_nxt };
}

static __always_inline void track_segment(const struct packet *p, const struct splice_entry *e,
					  struct track_verdict *v)
{
	const struct tcphdr *tcp = p->tcp;
	__u8 flags = ((__u8 *)tcp)[TCP_FLAGS_BYTE];
	__u32 seq = bpf_ntohl(tcp->seq), ack_out = bpf_ntohl(tcp->ack_seq) + e->ack_delta, end;
	struct splice_track own, peer;
	bool ack_ok, seq_ok;

	v->flags = flags;
	v->report = flags & (MOSTO_TCP_FIN | MOSTO_TCP_RST);
	v->tracked = e->track_gen != 0;
	if (!v->tracked)
		return;
	own = own_state(e);
	peer = peer_state(e);
	ack_ok = (flags & MOSTO_TCP_ACK) && seq_le(own.ack, ack_out) && seq_le(ack_out, peer.snd_nxt);
	seq_ok = seq_le(seq, own.snd_nxt + MOSTO_TRACK_SEQ_AHEAD);
	if (flags & MOSTO_TCP_RST) {
		v->report = seq == peer.ack;
	} else {
		if (flags & MOSTO_TCP_FIN)
			v->report = ack_ok && seq_ok;
		if (ack_ok && seq_ok) {
			end = seq + tcp_payload_len(p) + !!(flags & MOSTO_TCP_FIN);
			own.ack = ack_out;
			if (seq_le(own.snd_nxt, end))
				own.snd_nxt = end;
		}
	}
	v->next = own;
}

static __always_inline void track_commit(const struct splice_entry *e,
					 const struct track_verdict *v)
{
	struct splice_track *slot;

	if (!v->tracked)
		return;
	slot = track_slot(e->id);
	if (slot)
		*slot = v->next;
}

#endif /* MOSTO_TRACK_H */
