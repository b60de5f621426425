"""One PTF suite, two targets: the fixture corpus on a real data plane.

Run through tools/run_ptf.py (`make xdp-test`, `make bmv2-test`): it builds
the veth topology in a fresh network namespace and passes the target in the
test parameters. Every test removes the entries it installed.
"""

from __future__ import annotations

import ptf
import ptf.testutils as tu
from ptf.base_tests import BaseTest
from scapy.layers.inet import TCP

from mosto.dataplane import model
from mosto.dataplane.entry import parse_entry
from mosto.testing.corpus import CASES, DATA_AND_ACK, Case, by_name, entry, install_docs, tcp4
from targets import PASS_PORT, open_target

_target = None


def target():
    """One target for the whole run: attaching and pipeline pushes are slow."""
    global _target
    if _target is None:
        _target = open_target(tu.test_params_get())
        import atexit

        atexit.register(_target.close)
    return _target


class SpliceTest(BaseTest):
    """Installs entries through mosto and removes them afterwards (autocleanup)."""

    def setUp(self):
        BaseTest.setUp(self)
        self.dataplane = ptf.dataplane_instance
        self.dataplane.flush()
        self.target = target()
        self._installed = []

    def tearDown(self):
        for match in self._installed:
            self.target.dp.delete(match)
        self.target.events(0)
        BaseTest.tearDown(self)

    def install(self, docs):
        for doc in docs:
            e = parse_entry(doc)
            self.target.dp.add(e)
            self._installed.append(e.match)
        return [parse_entry(d) for d in docs]


class CorpusCase(SpliceTest):
    """Sends a corpus frame into port 0 and checks what comes out, and where.
    One subclass per corpus record (below); this base runs nothing itself."""

    case: Case

    def check_case(self):
        case = self.case
        egress = {p: self.target.egress(p) for p in (0, 1)}
        entries = self.install(install_docs(case, egress))
        before = self.target.dp.counters()
        # What the priors of a forward case come out as: the model's word (it
        # is held to the corpus on its own), with the state they build.
        logical = [parse_entry(d) for d in install_docs(case, {0: 0, 1: 1})]
        table, state = {e.match: e for e in logical}, {}
        for prior in case.prior:
            tu.send_packet(self, case.ingress_port, bytes(prior))
            if case.verdict == "pass":
                tu.verify_packet(self, bytes(prior), PASS_PORT)
            elif case.verdict == "forward":
                out = model.splice(bytes(prior), table, case.ingress_port, state=state)
                tu.verify_packet(self, out.frame, out.entry.egress)
        tu.send_packet(self, case.ingress_port, bytes(case.packet))
        if case.verdict == "forward":
            tu.verify_packet(self, bytes(case.expected), case.egress_port)
        elif case.verdict == "pass":
            tu.verify_packet(self, bytes(case.packet), PASS_PORT)
        tu.verify_no_other_packets(self)

        st = self.target.dp.stats(entries[0].match)
        packets, nbytes = st.packets, st.bytes
        mine = case.entry_frames
        sizes = sum(len(bytes(f)) for f in mine)
        self.assertEqual((packets, nbytes), (len(mine), sizes) if case.hit else (0, 0))
        # The record is per CPU on XDP: the expected one is kept, and any other
        # is one a frame made on a CPU of its own (the agent checks each).
        records, want = self.target.learned(entries[0].match), case.learned()
        if want is None:
            self.assertEqual(records, [])
        else:
            self.assertIn(want, records)
            self.assertTrue(set(records) <= _recorded(case), records)
        events = self.target.events(1.0 if case.event else 0.1)
        self.assertEqual(len(events), int(case.event), events)
        if case.event:
            self.assertEqual(events[0][0], entries[0].match)
            self.assertEqual(events[0][1], case.packet[TCP].flags.value)
        after = self.target.dp.counters()
        moved = {k for k in after if after[k] != before.get(k)}
        refused = {"event_out_of_window"} if case.event_refused else set()
        self.assertEqual(moved, {case.target_counter} | refused)


for _case in CASES:
    _name = "Corpus_" + _case.name.replace("-", "_")
    globals()[_name] = type(
        _name,
        (CorpusCase,),
        {"case": _case, "__doc__": _case.description, "runTest": CorpusCase.check_case},
    )
del _case, _name


class BothDirections(SpliceTest):
    """A whole splice: client->server out of port 1, server->client out of port 0."""

    def runTest(self):
        egress = {p: self.target.egress(p) for p in (0, 1)}
        to_server = entry(seq=7000, ack=-3000, egress=egress[1])
        to_client = entry(
            src="10.0.1.2",
            dst="10.0.0.1",
            sport=80,
            dport=40000,
            seq=3000,
            ack=-7000,
            egress=egress[0],
        )
        to_client.update(smac="02:00:00:00:00:10", dmac="02:00:00:00:00:01")
        self.install([to_server, to_client])
        out = {"smac": "02:00:00:00:00:11", "dmac": "02:00:00:00:00:02"}
        back = {"smac": "02:00:00:00:00:10", "dmac": "02:00:00:00:00:01"}
        for i in range(3):
            tu.send_packet(self, 0, bytes(tcp4(seq=100 + i, ack=900)))
            tu.verify_packet(self, bytes(tcp4(seq=7100 + i, ack=900 - 3000 + 2**32, **out)), 1)
            reply = tcp4(
                src="10.0.1.2",
                dst="10.0.0.1",
                sport=80,
                dport=40000,
                seq=3900,
                ack=7101 + i,
                smac="02:00:00:00:00:02",
                dmac="02:00:00:00:00:11",
            )
            tu.send_packet(self, 1, bytes(reply))
            tu.verify_packet(
                self,
                bytes(
                    tcp4(
                        src="10.0.1.2",
                        dst="10.0.0.1",
                        sport=80,
                        dport=40000,
                        seq=6900,
                        ack=101 + i,
                        **back,
                    )
                ),
                0,
            )
        tu.verify_no_other_packets(self)


class TrackLinkLifecycle(SpliceTest):
    """The two directions of a tracked splice are linked when the second is
    added, relinked when it is replaced (its state starts over) and unlinked
    when it goes, and the survivor's stats go on through all of it (on BMv2
    each is a MODIFY of the survivor's row: the switch's registers cannot be
    cleared from the control plane)."""

    def runTest(self):
        case = by_name("track-rst-after-data")
        egress = {p: self.target.egress(p) for p in (0, 1)}
        docs = install_docs(case, egress)
        to_server, to_client = (parse_entry(d) for d in install_docs(case, {0: 0, 1: 1}))
        table, state, sent = {}, {}, []
        before = self.target.dp.counters()

        def send(frame, reported=None):
            out = model.splice(bytes(frame), table, 0, state=state)
            tu.send_packet(self, 0, bytes(frame))
            tu.verify_packet(self, out.frame, out.entry.egress)
            sent.append(frame)
            if reported is not None:
                model_says = (bool(out.event_flags), out.event_refused)
                self.assertEqual(model_says, (reported, not reported))
                events = self.target.events(1.0 if reported else 0.1)
                self.assertEqual(len(events), int(reported), events)

        def rst(seq: int):
            return tcp4(flags="R", seq=seq, ack=0, payload=b"")

        self.install(docs[:1])
        table[to_server.match] = to_server
        send(DATA_AND_ACK[0])  # the client's 16 bytes: to_server's sender at 1016
        self.install(docs[1:])
        table[to_client.match] = to_client
        send(DATA_AND_ACK[1])  # acceptable only against to_server's moved state
        send(rst(1016), reported=True)  # ... which moved the exact RST seq
        self.assertTrue(self.target.dp.delete(to_client.match))
        del table[to_client.match]
        send(rst(1016), reported=False)  # a quiet flow's state again
        send(rst(1000), reported=True)
        self.install(docs[1:])  # back, and linked again
        table[to_client.match] = to_client
        send(DATA_AND_ACK[1])
        send(rst(1016), reported=True)
        self.install(docs[1:])  # replaced: a new generation, its state as installed
        state.pop(to_client.match)
        send(rst(1016), reported=False)
        send(rst(1000), reported=True)
        send(DATA_AND_ACK[1])  # the state moves again ...
        untracked = {k: v for k, v in docs[1].items() if k != "track"}
        self.install([untracked])  # ... and goes with an entry replaced by one not tracked
        table[to_client.match] = parse_entry({**untracked, "egress": 1})
        state.pop(to_client.match)
        send(rst(1016), reported=False)
        send(rst(1000), reported=True)

        mine = [f for f in sent if model.flow_of(bytes(f)) == to_server.match]
        st = self.target.dp.stats(to_server.match)
        self.assertEqual((st.packets, st.bytes), (len(mine), sum(len(bytes(f)) for f in mine)))
        after = self.target.dp.counters()
        self.assertEqual(after["event_out_of_window"] - before["event_out_of_window"], 3)
        self.assertEqual(after["hit_redirect"] - before["hit_redirect"], len(sent))


def _recorded(case: Case) -> set[tuple[int, int, int]]:
    """What each frame of the case would record on a CPU of its own."""
    out = set()
    for frame in case.frames:
        ts = dict((k, v) for k, v in frame[TCP].options if isinstance(k, str)).get("Timestamp")
        if ts is not None:
            out.add((ts[0], frame[TCP].seq, frame[TCP].ack))
    return out
