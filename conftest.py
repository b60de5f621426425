"""Test tiers, by folder: each says what it needs, and a test that cannot run
here is skipped with its reason printed (pytest -ra).

    unit    control/tests/unit   pure Python: no root, no kernel
    kernel  control/tests/kernel, ebpf/tests, tools/tests
                                 BPF_PROG_TEST_RUN, veth, sockets in repair mode: root
    e2e     control/tests/e2e    whole deployments in network namespaces: root
The PTF suite (ptf_tests/) runs through tools/run_ptf.py, not pytest.
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))  # the topology and process helpers are scripts

TIERS = {"unit": "pure Python", "kernel": "needs root", "e2e": "needs root"}


def tier_of(path: Path) -> str:
    rel = path.resolve().relative_to(ROOT).parts
    if rel[:2] == ("control", "tests") and len(rel) > 2 and rel[2] in TIERS:
        return rel[2]
    return "kernel"


def pytest_configure(config):
    for name, what in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {what} (set from the test's folder)")
    config.addinivalue_line("markers", "needs_root: needs root, whatever the tier")


def pytest_collection_modifyitems(config, items):
    root = os.geteuid() == 0
    for item in items:
        tier = tier_of(Path(item.fspath))
        item.add_marker(getattr(pytest.mark, tier))
        if (tier != "unit" or "needs_root" in item.keywords) and not root:
            item.add_marker(pytest.mark.skip(reason=f"{tier} tier: needs root (BPF, netns, veth)"))


# -- nothing left behind (tools/leftovers.py) -----------------------------------


def _opened_for_others() -> dict[Path, int]:
    """Tests run proxies and attackers as other uids, from this checkout: each
    folder above it must let others through (a checkout under a 0700 folder,
    mktemp's, say, would not). Grants search permission where it is missing,
    for the session only; returns the modes to restore."""
    changed = {}
    for d in [ROOT, *ROOT.parents]:
        mode = d.stat().st_mode
        if not mode & 0o001:
            d.chmod(mode | 0o001)
            changed[d] = mode
    if changed:
        print(f"mosto: let other users through {', '.join(map(str, changed))} for the tests")
    return changed


def pytest_sessionstart(session):
    if os.geteuid() == 0:
        from leftovers import snapshot

        session.config._mosto_modes = _opened_for_others()
        session.config._mosto_before = snapshot(ROOT)


def pytest_sessionfinish(session, exitstatus):
    from leftovers import left_behind, snapshot

    for d, mode in getattr(session.config, "_mosto_modes", {}).items():
        d.chmod(mode)

    before = getattr(session.config, "_mosto_before", None)
    if before is None:
        return
    left = left_behind(before, snapshot(ROOT))
    if left:
        print(f"\nmosto: the tests left things behind: {left}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
