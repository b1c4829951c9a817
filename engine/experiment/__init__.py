"""The experiment layer: what a run is asked to do, before anything runs.

Presets and their validation (`config`), the method registry (`methods`), task data (`data`,
`catalog`, `databuild`), the paper's settings (`paper`), metrics as CrossFit computes them
(`metrics`), the similarity maths (`similarity`), the plan and its grid cells (`plan`) and the
units of work a backbone computes (`units`). It may import the base layer only; no torch.
"""

from engine.experiment.catalog import setting_tasks, task_catalog
from engine.experiment.config import (DATA_DIR_ENV, Preset, PresetError, builtin_presets_dir, find_preset,
                                      list_builtin_presets, load_preset, override, save_preset)
from engine.experiment.data import PAPER_SEEDS, TaskData, TaskDataError
from engine.experiment.databuild import DataBuildError, build_splits
from engine.experiment.methods import METHODS, PT, in_display_order, label
from engine.experiment.paper import annotated_toml
from engine.experiment.plan import Cell, Plan, grid_cells, make_plan, parse_cell_id, select_and_aggregate
from engine.experiment.similarity import set_similarity, sources_of

__all__ = ["DATA_DIR_ENV", "METHODS", "PAPER_SEEDS", "PT", "Cell", "DataBuildError", "Plan", "Preset", "PresetError",
           "TaskData", "TaskDataError", "annotated_toml", "build_splits", "builtin_presets_dir", "find_preset",
           "grid_cells", "in_display_order", "label", "list_builtin_presets", "load_preset", "make_plan", "override", "parse_cell_id",
           "save_preset", "select_and_aggregate", "set_similarity", "setting_tasks", "sources_of", "task_catalog"]
