"""A run's stages, in order, in one place: the grid, then the task similarity analysis.

Every stage takes (run, preset, plan, backend, events) and submits its units to the backend through
the shared submission path (engine.execution.stage). The worker (engine.runner.lifecycle) runs them
all, or the ones asked for (`mpt-tui analyse RUN` runs the analysis of a finished run).
"""

from __future__ import annotations

from engine.execution import analysis, grid
from engine.execution.schedule import as_backend
from engine.store.run_dir import Run, read_json

STAGES = {
    "grid": grid.run_grid,  # upstream initialisations, then the grid cells; results.json
    "analysis": analysis.run_stage,  # [analysis] (or `mpt-tui analyse`): analysis.json; a no-op without one
}


def run_stages(run: Run, preset, plan, backend, events, names: list[str] | None = None) -> dict | None:
    """Run (or resume) the named stages (all by default) in order on one backend; the run's results."""
    unknown = [n for n in names or [] if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)} (known: {', '.join(STAGES)})")
    backend = as_backend(backend)
    for name in STAGES:
        if names is None or name in names:
            STAGES[name](run, preset, plan, backend, events)
    results = read_json(run.results_path)
    return results if isinstance(results, dict) else None
