// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* Benchmark baseline: the splice program's parser and pass-path counting,
 * without the table lookup and the translation. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parsing.h"

SEC("xdp")
int mosto_parse_only(struct xdp_md *ctx)
{
	struct packet p = {
		.data = (void *)(long)ctx->data,
		.data_end = (void *)(long)ctx->data_end,
	};
	int ret = parse_packet(&p);

	count(ret == PARSE_OK ? CNT_PASS_MISS : ret);
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
