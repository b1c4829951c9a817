"""A run directory written before schemas existed (tests/fixtures/old-run-v0, main at 380d2eb) still reads:
its records through the typed record, `mpt-tui show` (the overview), the report and the export give the
numbers its results.json holds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.experiment.plan import Plan, grid_cells, select_and_aggregate
from engine.experiment.records import SCHEMA, CellRecord
from engine.results.export import export_document, split_rows, table_rows
from engine.results.overview import overview
from engine.results.report import build_report
from engine.store.index import summarize
from engine.store.run_dir import Run, list_runs

FIXTURE = Path(__file__).parent / "fixtures" / "old-run-v0"
RUN_ID = "20261203-185047-old-run-v0"


@pytest.fixture
def old_run(tmp_path) -> Run:
    shutil.copytree(FIXTURE, tmp_path / "runs", ignore=shutil.ignore_patterns("*.md"))
    return Run(tmp_path / "runs" / RUN_ID)


def _stored(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_fixture_is_an_old_run(old_run):
    assert [r.id for r in list_runs(old_run.path.parent)] == [RUN_ID]
    assert old_run.schema() == 0 and "schema" not in _stored(old_run.config_path)
    assert old_run.status()["state"] == "finished"
    assert all("schema" not in _stored(p) for p in old_run.cells_dir.glob("*.json"))


def test_its_records_read_through_the_type_and_aggregate_to_its_results(old_run):
    config = old_run.config()
    cells = grid_cells(Plan(**config["plan"]), config["preset"]["downstream"]["learning_rates"])
    records = old_run.finished_cell_records([c.id for c in cells])
    assert len(records) == len(cells) == 16
    for cell in cells:
        record, stored = records[cell.id], _stored(old_run.cell_path(cell.id))
        assert isinstance(record, CellRecord) and (record.method, record.task, record.seed, record.lr) == \
            (cell.method, cell.task, cell.seed, cell.lr)
        assert (record.dev, record.test, record.metric, record.best_step) == \
            (stored["dev"], stored["test"], stored["metric"], stored["best_step"])
        assert record.to_dict() == {**stored, "schema": SCHEMA}  # written again: the same keys, plus the schema
    results = _stored(old_run.results_path)
    again = select_and_aggregate([records[c.id] for c in cells])
    assert again["tasks"] == results["tasks"] and again["mean"] == results["mean"]
    assert [{k: v for k, v in s.items() if k != "schema"} for s in again["splits"]] == results["splits"]


def test_show_report_and_export_give_its_results_numbers(old_run):
    results = _stored(old_run.results_path)
    view, partial, report = overview(old_run)
    assert view["state"] == "finished" and partial.complete
    assert view["results"]["tasks"] == results["tasks"] and view["results"]["mean"] == results["mean"]
    for method, tasks in results["tasks"].items():
        column = next(c for c in report.columns if c.method == method)
        for task, agg in tasks.items():
            assert report.scores[(task, column)]["mean"] == agg["mean"]
        assert report.means[column] == pytest.approx(results["mean"][method], abs=0)

    summary = summarize(old_run)
    assert build_report([summary]).means == report.means
    rows = split_rows([summary])
    assert [(r["method"], r["task"], r["seed"], r["learning_rate"], r["dev"], r["test"]) for r in rows] == \
        [(s["method"], s["task"], s["seed"], s["lr"], s["dev"], s["test"]) for s in results["splits"]]
    table = {(r["method"], r["task"]): r for r in table_rows([summary])}
    for method, tasks in results["tasks"].items():
        for task, agg in tasks.items():
            assert (table[(method, task)]["mean"], table[(method, task)]["std"], table[(method, task)]["n"]) == \
                (agg["mean"], agg["std"], agg["n"])
        assert table[(method, "MEAN")]["mean"] == results["mean"][method]
    exported = json.loads(export_document([summary], fmt="json", table="splits"))["rows"]
    assert [(r["method"], r["task"], r["seed"], r["dev"], r["test"]) for r in exported] == \
        [(s["method"], s["task"], s["seed"], s["dev"], s["test"]) for s in results["splits"]]


def test_mpt_tui_show_prints_it(old_run, tmp_path):
    results = _stored(old_run.results_path)
    shown = subprocess.run([sys.executable, "-m", "mpt_tui.cli", "--runs-dir", str(old_run.path.parent), "show",
                            RUN_ID, "--json"], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["results"]["tasks"] == results["tasks"] and view["results"]["mean"] == results["mean"]


def test_an_old_run_stopped_mid_grid_resumes_through_the_old_worker_command(old_run, tiny_llama):
    """A run that an older version detached (`python -m engine.worker RUN_DIR`, the command its launcher
    wrote) and that died mid-grid resumes through that same command: the missing cells train, the
    records it had are kept byte for byte, and the results cover every cell."""
    from conftest import REPO

    config = _stored(old_run.config_path)
    config["preset"]["model"]["name"] = str(tiny_llama)  # the fixture keeps relative paths
    config["preset"]["data"]["dir"] = str(REPO / config["preset"]["data"]["dir"])
    config["plan"]["data_dir"] = str(REPO / config["plan"]["data_dir"])
    config["plan"]["config_dir"] = str(REPO / config["plan"]["config_dir"])
    old_run.config_path.write_text(json.dumps(config, indent=1))
    lost = sorted(old_run.cells_dir.glob("pt__*.json"))[:2] + sorted(old_run.cells_dir.glob("mtl__*.json"))[:1]
    for path in lost:
        path.unlink()
    old_run.results_path.unlink()
    status = _stored(old_run.status_path)
    status.update(state="running", stage="downstream", pid=2 ** 22 + 7, progress=0.8, finished=None)  # a dead pid
    old_run.status_path.write_text(json.dumps(status))
    kept = {p.name: p.read_bytes() for p in old_run.cells_dir.glob("*.json")}
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "engine.worker", str(old_run.path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, old_run.log_path.read_text()[-3000:]
    assert old_run.status()["state"] == "finished"
    records = {p.name: p.read_bytes() for p in old_run.cells_dir.glob("*.json")}
    assert set(records) == set(kept) | {p.name for p in lost} and len(records) == 16
    assert {name: records[name] for name in kept} == kept  # never recomputed
    results = _stored(old_run.results_path)
    assert len(results["splits"]) == 2 * 2 * 2  # methods x targets x splits, each from its chosen lr
