/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* The XDP side of the context layer: a linear frame, before the stack. */
#ifndef MOSTO_CTX_XDP_H
#define MOSTO_CTX_XDP_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "../csum.h"
#include "../maps.h"

#define ctx_buff xdp_md
#define CTX_SEC "xdp"
#define CTX_PASS XDP_PASS
#define CTX_DROP XDP_DROP

static __always_inline void *ctx_data(const struct xdp_md *ctx)
{
	return (void *)(long)ctx->data;
}

static __always_inline void *ctx_data_end(const struct xdp_md *ctx)
{
	return (void *)(long)ctx->data_end;
}

/* The program does not declare frags support: every frame is linear. */
static __always_inline bool ctx_nonlinear(const struct xdp_md *ctx)
{
	return false;
}

static __always_inline int ctx_pull_headers(struct xdp_md *ctx)
{
	return 0;
}

static __always_inline __u64 ctx_len(const struct xdp_md *ctx)
{
	return ctx_data_end(ctx) - ctx_data(ctx);
}

static __always_inline __u32 ctx_ingress_ifindex(const struct xdp_md *ctx)
{
	return ctx->ingress_ifindex;
}

/* XDP runs before the kernel takes a tag off: tags are in the data. */
static __always_inline int ctx_vlan_tags(const struct xdp_md *ctx)
{
	return 0;
}

/* Back out of the ingress port. */
static __always_inline int ctx_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

/* XDP_REDIRECT if ifindex is a redirect target, else XDP_DROP. */
static __always_inline int ctx_redirect(struct xdp_md *ctx, __u32 ifindex)
{
	return bpf_redirect_map(&mosto_tx_ports, ifindex, XDP_DROP);
}

static __always_inline bool ctx_redirected(int verdict)
{
	return verdict == XDP_REDIRECT;
}

/* The frame's checksum is complete (nothing is offloaded before XDP): both
 * deltas go into it at once, as in checksum.p4. */
static __always_inline int ctx_l4_csum_update(struct xdp_md *ctx, struct tcphdr *tcp, __u32 check_off,
					      bool ipv6, const struct csum_delta *hdr,
					      const struct csum_delta *pseudo)
{
	struct csum_delta all = {
		.even = hdr->even + pseudo->even,
		.odd = hdr->odd + pseudo->odd,
	};

	tcp->check = bpf_htons(csum_apply(bpf_ntohs(tcp->check), csum_delta_fold(&all)));
	return 0;
}

#endif /* MOSTO_CTX_XDP_H */
