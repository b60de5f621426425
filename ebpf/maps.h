/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* The maps, pinned by name (default pin directory /sys/fs/bpf/mosto) so the
 * agent, the CLI and every attached interface share one set. */
#ifndef MOSTO_MAPS_H
#define MOSTO_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "splice_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOSTO_MAX_ENTRIES);
	__type(key, struct splice_key);
	__type(value, struct splice_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mosto_splice SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MOSTO_MAX_ENTRIES);
	__type(key, __u32);
	__type(value, struct splice_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mosto_stats SEC(".maps");

/* The FIN/RST window check's state (track.h), by entry id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MOSTO_MAX_ENTRIES);
	__type(key, __u32);
	__type(value, struct splice_track);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mosto_track SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mosto_counters SEC(".maps");

/* Redirect targets, keyed by ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, MOSTO_MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mosto_tx_ports SEC(".maps");

/* Redirect targets that are veths with their peer in another network
 * namespace (tc only: bpf_redirect_peer() hands a frame to the peer's
 * ingress at once, skipping this side's transmit and the peer's backlog
 * queue). Keyed by ifindex; user space keeps it beside mosto_tx_ports. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOSTO_MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mosto_peer_ports SEC(".maps");

/* FIN and RST of spliced flows. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MOSTO_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mosto_events SEC(".maps");

static __always_inline void count(__u32 counter)
{
	__u64 *value = bpf_map_lookup_elem(&mosto_counters, &counter);

	if (value)
		*value += 1;
}

#endif /* MOSTO_MAPS_H */
