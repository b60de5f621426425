"""Proxy chains: Pareto-optimal chains between proxy locations and the best one per transfer."""
