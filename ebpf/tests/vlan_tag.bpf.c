// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* Test end hosts of test_tc_path.py that talk 802.1Q without VLAN devices
 * (this kernel may have none): the tag is pushed into skb metadata on egress,
 * as a VLAN device on a veth does, and must be there on ingress. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef VLAN_ID
#error "build with -DVLAN_ID=..."
#endif
#define VLAN_VID_MASK 0x0fff

SEC("tc")
int vlan_push(struct __sk_buff *skb)
{
	if (bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), VLAN_ID))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* A frame that lost its tag on the way is dropped: the test then fails. */
SEC("tc")
int vlan_pop(struct __sk_buff *skb)
{
	if (!skb->vlan_present || (skb->vlan_tci & VLAN_VID_MASK) != VLAN_ID)
		return TC_ACT_SHOT;
	if (bpf_skb_vlan_pop(skb))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
