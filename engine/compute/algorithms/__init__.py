"""Upstream algorithms, one file each; `engine.experiment.methods` registers them by name."""
