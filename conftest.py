"""Shared pytest set-up: the corpus lives in ptf_tests/, importable everywhere."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "ptf_tests"))


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (BPF, netns, veth)")
        for item in items:
            if "needs_root" in item.keywords:
                item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_root: needs root for BPF, netns and veth")
