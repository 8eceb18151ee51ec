"""Staged opportunistic memory reclaim: one backend per kernel interface, one engine."""
