/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * The context layer: one program source, two hooks. Everything that differs
 * between XDP (struct xdp_md, a linear frame before the stack) and tc
 * (struct __sk_buff at clsact ingress: possibly non-linear, GSO, offloaded
 * checksums, a VLAN tag in metadata) sits behind the same small set of
 * names. The Makefile compiles each program twice: without MOSTO_HOOK_TC
 * for XDP, with it for tc.
 *
 *   struct ctx_buff          the program's context
 *   CTX_SEC                  its ELF section
 *   CTX_PASS, CTX_DROP       verdicts; ctx_tx() / ctx_redirect() forward
 *   ctx_nonlinear()          part of the frame is not direct-accessible
 *   ctx_pull_headers()       make the headers direct-accessible
 *   ctx_data(), ctx_data_end(), ctx_len(), ctx_ingress_ifindex()
 *   ctx_vlan_tags()          VLAN tags outside the data (tc: the outer one)
 *   ctx_l4_csum_update()     apply the TCP checksum deltas
 */
#ifndef MOSTO_CTX_H
#define MOSTO_CTX_H

#ifdef MOSTO_HOOK_TC
#include "skb.h"
#else
#include "xdp.h"
#endif

#endif /* MOSTO_CTX_H */
