/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Parsing the packet of a context, for both hooks and both programs. */
#ifndef MOSTO_PARSE_CTX_H
#define MOSTO_PARSE_CTX_H

#include "ctx/ctx.h"
#include "parsing.h"

/* p from scratch: a pull invalidates every pointer a first parse left in it. */
static __always_inline int parse_view(struct ctx_buff *ctx, struct packet *p)
{
	*p = (struct packet){};
	p->data = ctx_data(ctx);
	p->data_end = ctx_data_end(ctx);
	p->meta_tags = ctx_vlan_tags(ctx);
	return parse_packet(p);
}

/* The headers of ctx's packet parsed into p: PARSE_OK, or the counter that says
 * why not (CNT_PASS_TRUNCATED when they cannot be made direct-accessible).
 * The linear part first: a local sender's GSO frame has all its headers, TCP
 * options included, there, and pulling anyway would copy payload into the
 * head (unclone it first: TCP sends clones) on every frame, some 500 ns per
 * super-frame measured on veth. Only headers cut short there are pulled. */
static __always_inline int parse_ctx(struct ctx_buff *ctx, struct packet *p)
{
	int ret = parse_view(ctx, p);

	if (!ctx_nonlinear(ctx))
		return ret; /* all of the frame was there: the verdict stands */
	if (ret == PARSE_OK && (void *)p->tcp + p->tcp->doff * 4 <= p->data_end)
		return ret;
	/* A first fragment whose TCP header looks split may only be cut short
	 * in the linear part: the tiny-fragment verdict needs the whole frame. */
	if (ret != PARSE_OK && ret != CNT_PASS_TRUNCATED && ret != CNT_DROP_FRAGMENT)
		return ret; /* decided by headers that were there */
	if (ctx_pull_headers(ctx))
		return CNT_PASS_TRUNCATED;
	return parse_view(ctx, p);
}

#endif /* MOSTO_PARSE_CTX_H */
