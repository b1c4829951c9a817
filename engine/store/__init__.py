"""The store layer: what is on disk, and the only code that knows its layout.

A run directory (`run_dir`: config.json, status.json, metrics.jsonl, records, prompts), checkpoints
(`checkpoint`), the TinyDB index of summaries (`index`, rebuilt from the run directories), the one
reader of metrics.jsonl (`metrics_log`: whole files, or from a byte offset as the app tails them) and
the model store (`models`: embedded models in the user cache). It may import the base and experiment
layers; no torch.
"""

from engine.store.index import RunIndex, summarize
from engine.store.metrics_log import CellEvents, EventIndex, MetricsTail
from engine.store.models import EMBEDDED_MODELS, ModelNotFoundError, embedded_model_dir, is_pulled
from engine.store.run_dir import (ACTIVE_STATES, STATES, Curve, Run, RunsDirError, cell_curves, default_runs_root,
                                  ensure_writable_root, find_run, list_runs, pid_alive, read_json, upstream_curves)

__all__ = ["ACTIVE_STATES", "EMBEDDED_MODELS", "STATES", "CellEvents", "Curve", "EventIndex", "MetricsTail", "ModelNotFoundError", "Run", "RunIndex",
           "RunsDirError", "cell_curves", "default_runs_root", "embedded_model_dir", "ensure_writable_root",
           "find_run", "is_pulled", "list_runs", "pid_alive", "read_json", "summarize", "upstream_curves"]
