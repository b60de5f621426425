"""Reproductions of the paper's figures (mosto repro)."""
