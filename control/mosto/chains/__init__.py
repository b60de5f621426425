"""Proxy chains: Pareto-optimal chains between proxy locations and the best one per transfer.

Python API for proxies: `mosto.chains.table.ChainTable.load(path).lookup(src, dst, rounds)`,
with `mosto.chains.lookup.rounds_for_size(size)`; see docs/chains.md.
"""
