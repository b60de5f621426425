"""mosto: offload spliced TCP proxy flows to an XDP or P4 data plane."""

__version__ = "0.1.0"
