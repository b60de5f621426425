"""shared/contract.h as the Python package reads it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from mosto.dataplane import contract
from mosto.dataplane.contract import ContractError, parse

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO / "shared" / "contract.h"


def test_package_data_is_the_shared_header():
    shipped = resources.files("mosto.dataplane").joinpath(contract.HEADER).read_text()
    assert shipped == SHARED.read_text()


def test_values():
    assert contract.COUNTERS[0] == "hit_tx" and contract.COUNTERS[-1] == "event_out_of_window"
    assert contract.NUM_COUNTERS == len(contract.COUNTERS) == 17
    assert (contract.VLAN_MAX, contract.IPV6_EXT_MAX, contract.IPV6_EXT_UNITS) == (2, 6, 32)
    assert contract.EVENTS_BYTES == 4 * 1024 * 1024
    assert contract.MAX_PORTS == 512
    assert (contract.SPLICE_F_TS, contract.SPLICE_F_NAT, contract.SPLICE_F_LEARN) == (1, 2, 4)
    assert (contract.TCP_FIN, contract.TCP_RST) == (0x01, 0x04)


def _mutated(old: str, new: str) -> str:
    text = SHARED.read_text()
    assert old in text
    return text.replace(old, new)


def test_a_repeated_counter_index_is_refused():
    with pytest.raises(ContractError, match="0..n-1"):
        parse(_mutated("X(PASS_LEARN, pass_learn, 11)", "X(PASS_LEARN, pass_learn, 10)"))


def test_a_gap_in_the_counter_indices_is_refused():
    with pytest.raises(ContractError, match="0..n-1"):
        parse(_mutated("X(PASS_LEARN, pass_learn, 11)", "X(PASS_LEARN, pass_learn, 12)"))


def test_an_override_of_a_size_is_read():
    values, _ = parse(_mutated("#define MOSTO_MAX_PORTS 512", "#define MOSTO_MAX_PORTS (1 << 6)"))
    assert values["MOSTO_MAX_PORTS"] == 64


def test_anything_outside_the_grammar_is_refused():
    with pytest.raises(ContractError, match="not a preprocessor line"):
        parse(SHARED.read_text() + "\nstruct nope { int x; };\n")
    with pytest.raises(ContractError, match="unexpected directive"):
        parse(SHARED.read_text() + "\n#include <linux/types.h>\n")
    with pytest.raises(ContractError, match="not an integer expression"):
        parse(SHARED.read_text() + "\n#define MOSTO_BAD sizeof(int)\n")
