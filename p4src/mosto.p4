/* SPDX-License-Identifier: Apache-2.0 */
/*
 * mosto splice, P4_16 for v1model (BMv2 simple_switch_grpc): packets of a TCP
 * flow that a proxy handed over are translated and sent straight out of the
 * other side; everything else follows a plain L2 forwarding table whose
 * default is the host port. Exactly the XDP program of ebpf/: same parsing,
 * match, rewrites, counters, verdicts and bytes (see p4src/README.md).
 */
#include <core.p4>
#include <v1model.p4>

#include "include/headers.p4"
#include "include/parser.p4"
#include "include/checksum.p4"
#include "include/splice.p4"

/* Where a frame that is not translated goes: the host (for XDP, XDP_PASS). */
const bit<9> HOST_PORT = 2;

control MostoIngress(inout headers_t hdr,
                     inout local_metadata_t meta,
                     inout standard_metadata_t standard_metadata) {

    /* Every frame lands in exactly one of them (enum mosto_counter); the
     * EVENT_ ones count events, not frames. */
    counter(MOSTO_NUM_COUNTERS, CounterType.packets) mosto_counters;

    action forward(bit<9> port) {
        standard_metadata.egress_spec = port;
    }

    action drop() {
        mark_to_drop(standard_metadata);
    }

    table l2_forward {
        key = {
            hdr.ethernet.dst_addr: exact @name("dst_addr");
        }
        actions = {
            forward;
            drop;
        }
        default_action = forward(HOST_PORT);
        size = MOSTO_L2_ENTRIES;
    }

    Splice() splice;

    apply {
        meta.to_host = true;
        meta.out_of_window = false;
        meta.counter = meta.parse_result;
        if (meta.parse_result == PARSE_OK) {
            splice.apply(hdr, meta, standard_metadata);
        } else if (meta.parse_result == CNT_DROP_FRAGMENT ||
                   meta.parse_result == CNT_DROP_DEEP_HEADERS) {
            /* May hide a spliced flow, whose socket the host no longer has. */
            meta.to_host = false;
            mark_to_drop(standard_metadata);
        }
        if (meta.to_host) {
            l2_forward.apply();
        }
        mosto_counters.count(meta.counter);
        if (meta.out_of_window) {
            mosto_counters.count(CNT_EVENT_OUT_OF_WINDOW);
        }
    }
}

control MostoEgress(inout headers_t hdr,
                    inout local_metadata_t meta,
                    inout standard_metadata_t standard_metadata) {
    apply { }
}

V1Switch(MostoParser(),
         MostoVerifyChecksum(),
         MostoIngress(),
         MostoEgress(),
         MostoComputeChecksum(),
         MostoDeparser()) main;
