"""Upstream algorithms, one file each; `engine.methods` registers them by name."""
