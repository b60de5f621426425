"""Shared pytest set-up: the corpus lives in ptf_tests/, importable everywhere."""

import os
import sys

import pytest

for _dir in ("ptf_tests", "tools"):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), _dir))


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (BPF, netns, veth)")
        for item in items:
            if "needs_root" in item.keywords:
                item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_root: needs root for BPF, netns and veth")
