"""The execution layer: in which order a run's work happens, and where.

The schedule and its backends (`schedule`), the one path a stage submits its groups through
(`stage`), the grid stage (`grid`), the analysis stage (`analysis`), the stage list (`stages`) and
the Ray backend (`cluster`). It may import the base, experiment, store and results layers at module
level, and the compute layer only inside functions (this layer must import without torch: the dry
run plans with it). The app never imports it.
"""
