// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* Benchmark baseline: the splice program's parser and pass-path counting,
 * without the table lookup and the translation. Compiled for both hooks,
 * like splice.bpf.c. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parsing.h"
#include "ctx/ctx.h"
#include "parse_ctx.h"

SEC(CTX_SEC)
int mosto_parse_only(struct ctx_buff *ctx)
{
	struct packet p = {};
	int ret;

	ret = parse_ctx(ctx, &p);
	count(ret == PARSE_OK ? CNT_PASS_MISS : ret);
	return parse_drops(ret) ? CTX_DROP : CTX_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
