"""The records a run writes, typed, and the schema version of every file that holds them. Torch-free.

    CellRecord      one trained (and tested) grid cell: cells/<cell>.json, each entry of results.json's
                    "splits", and an embedding job of the analysis stage (method "embed", untested:
                    analysis/.../embeddings/<cell>.json)
    UpstreamRecord  a learned initialisation (what engine.compute.executor.Executor.learn_init returns)

Every record is written through `to_dict` and read through `from_dict`, here only: `from_dict` keeps keys
it does not know (`extra`, written back unchanged) and defaults the optional ones a file lacks (and does
not write them back either), so an old file read and written again is the same JSON.

`SCHEMA` is written as "schema" in config.json and in every record from now on; a file without it is an
old one (schema 0, read as it is); a file with a newer schema than this code knows is refused with a
one-line `SchemaError` naming the file (`check_schema`).

The type lives in the experiment layer, not the store: `engine.experiment.plan.select_and_aggregate` (the
paper's protocol: best dev per split, mean and std over splits) reads records, and the experiment layer may
not import the store; the store, results, execution and compute layers import it from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SCHEMA = 1
SCHEMA_KEY = "schema"

# results.json (engine.experiment.plan.select_and_aggregate): {"splits": [CellRecord], "tasks": {method:
# {task: {"mean", "std", "n", "metric"}}}, "mean": {method: float}}
SPLITS, TASKS, MEAN = "splits", "tasks", "mean"
AGG_MEAN, AGG_STD, AGG_N, AGG_METRIC = "mean", "std", "n", "metric"


class SchemaError(ValueError):
    """A file written by a newer version of this program (its "schema" is above `SCHEMA`)."""


def schema_of(doc) -> int:
    """The schema a stored object says it has; 0 when it says none (written before schemas existed)."""
    value = doc.get(SCHEMA_KEY, 0) if isinstance(doc, dict) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def check_schema(doc, file) -> None:
    """Refuse (one line, naming `file`) an object with a newer schema than this code knows."""
    if schema_of(doc) > SCHEMA:
        raise SchemaError(f"{file}: schema {schema_of(doc)} is newer than this mpt-tui knows ({SCHEMA}): "
                          f"upgrade mpt-tui to read it")


def _from_dict(cls, doc: dict, file=None):
    if not isinstance(doc, dict):
        raise SchemaError(f"{file or 'record'}: not a JSON object")
    check_schema(doc, file or "record")
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "missing")]
    known = {k: doc[k] for k in names if k in doc}
    extra = {k: v for k, v in doc.items() if k not in names and k != SCHEMA_KEY}
    missing = frozenset(n for n in names if n not in doc)
    try:
        return cls(**known, extra=extra, missing=missing)
    except TypeError as exc:  # a required key absent
        raise SchemaError(f"{file or 'record'}: not a {cls.__name__} ({exc})") from None


def _to_dict(record) -> dict:
    out = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)
           if f.name not in ("extra", "missing") and not (f.name in record.missing and getattr(record, f.name) == f.default)}
    out.update(record.extra)
    out[SCHEMA_KEY] = SCHEMA
    return out


@dataclass
class CellRecord:
    """One finished grid cell (or embedding job). `dev`/`test` are scores in [0, 1] (nan: no prediction scored);
    an untested cell (an embedding job) has `test` and `metric` None."""

    method: str = "?"
    task: str = "?"
    seed: int = 0
    lr: float = 0.0
    metric: str | None = None
    dev: float | None = None
    test: float | None = None
    best_step: int | None = None
    tested: str | None = None  # "best" or "last": which prompt was tested (downstream.test_prompt)
    steps: int | None = None
    dev_history: list | None = None  # [[step, dev score], ...]
    final_loss: float | None = None
    stopped: bool | None = None  # early stopping ended it
    seconds: float | None = None  # its group's wall time
    group_size: int | None = None
    prompt: str | None = None  # its best-dev prompt, relative to the run directory
    extra: dict = field(default_factory=dict, repr=False, compare=False)  # keys this code does not know
    missing: frozenset = field(default=frozenset(), repr=False, compare=False)  # keys the file lacked

    @property
    def split_key(self) -> tuple[str, str, int]:
        return self.method, self.task, self.seed

    @classmethod
    def from_dict(cls, doc: dict, file=None) -> "CellRecord":
        return _from_dict(cls, doc, file)

    def to_dict(self) -> dict:
        return _to_dict(self)


@dataclass
class UpstreamRecord:
    """A learned initialisation: its method, outer updates made, last meta-loss and prompt file."""

    method: str = "?"
    steps: int | None = None
    last_loss: float | None = None
    prompt: str | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)
    missing: frozenset = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, doc: dict, file=None) -> "UpstreamRecord":
        return _from_dict(cls, doc, file)

    def to_dict(self) -> dict:
        return _to_dict(self)


def as_record(record) -> CellRecord:
    """A CellRecord as it is, or read from its dict (callers and tests that build records as dicts)."""
    return record if isinstance(record, CellRecord) else CellRecord.from_dict(record)
