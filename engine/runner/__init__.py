"""The runner layer: a run as a process, from preflight to finish.

Preflight checks and run creation (`prepare`), starting, cancelling and deleting detached workers
(`launch`), the dry run's estimate (`estimate`), device locks (`devices`) and the worker's lifecycle
(`lifecycle`: status, heartbeat, signals, the stages). It may import every layer below it; compute
only inside functions. The app imports its torch-free face below; the lifecycle itself only the
CLI's foreground commands (a run, `analyse`), which run the worker in their own process.
"""

from engine.runner.estimate import dry_run, format_duration_estimate, render
from engine.runner.launch import cancel, delete_run, launch, resume_refusal
from engine.runner.prepare import check_preset, plan_run, prepare_run

__all__ = ["cancel", "check_preset", "delete_run", "dry_run", "format_duration_estimate", "launch", "plan_run",
           "prepare_run", "render", "resume_refusal"]
