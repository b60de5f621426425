/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Parsing the packet of a context, for both hooks and both programs. */
#ifndef MOSTO_PARSE_CTX_H
#define MOSTO_PARSE_CTX_H

#include "ctx/ctx.h"
#include "parsing.h"

/* The headers of ctx's packet parsed into p: PARSE_OK, or the counter that says
 * why not (CNT_PASS_TRUNCATED when they cannot be made direct-accessible). */
static __always_inline int parse_ctx(struct ctx_buff *ctx, struct packet *p)
{
	if (ctx_pull_headers(ctx))
		return CNT_PASS_TRUNCATED;
	p->data = ctx_data(ctx);
	p->data_end = ctx_data_end(ctx);
	p->vlan_meta = ctx_vlan_meta(ctx);
	return parse_packet(p);
}

#endif /* MOSTO_PARSE_CTX_H */
