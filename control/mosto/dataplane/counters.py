"""The data plane's global counters by index (MOSTO_COUNTERS in
shared/contract.h, enum mosto_counter in C, CNT_* in P4)."""

from mosto.dataplane.contract import COUNTERS

__all__ = ["COUNTERS"]
