"""Figures for papers (mpt_tui/plots.py): real small runs drawn to PDF, PNG and SVG."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")  # the [plots] extra; the [test] extra installs it

from conftest import REPO, small_run  # noqa: E402
from engine.store.run_dir import Run  # noqa: E402
from engine.runner.lifecycle import execute  # noqa: E402
from mpt_tui.plots import PANELS, PlotError, write_figure  # noqa: E402

MAGIC = {"pdf": (b"%PDF",), "png": (b"\x89PNG\r\n\x1a\n",), "svg": (b"<?xml", b"<svg")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama):
    """Two finished runs: one with an upstream method (MTL), one with PT only."""
    root = tmp_path_factory.mktemp("plots") / "runs"
    with_mtl = small_run(root, tiny_llama, name="with-mtl", downstream="steps = 4\neval_every = 2",
                         upstream='methods = ["mtl"]\nsteps = 3\nlog_every = 1')
    pt_only = small_run(root, tiny_llama, name="pt-only", downstream="steps = 4\neval_every = 2")
    for run in (with_mtl, pt_only):
        execute(run)
        assert run.status()["state"] == "finished"
    return with_mtl, pt_only


def _copy(run: Run, dest) -> Run:
    shutil.copytree(run.path, dest / run.id)
    return Run(dest / run.id)


def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


@pytest.mark.parametrize("fmt", ["pdf", "png", "svg"])
def test_each_format_writes_a_file_of_that_format(runs, tmp_path, fmt):
    out = tmp_path / f"figure.{fmt}"
    written = write_figure([runs[0]], out)
    assert written.path == out and out.stat().st_size > 1000
    head = out.read_bytes()[:200]
    assert head.startswith(MAGIC[fmt]), head[:20]
    if fmt == "svg":
        assert b"<svg" in out.read_bytes()


def test_the_png_has_one_axes_per_panel_all_four_for_a_run_with_upstream(runs, tmp_path):
    from matplotlib.image import imread

    written = write_figure([runs[0]], tmp_path / "fig.PNG")  # the suffix in any case
    assert written.panels == list(PANELS) and written.notes == []
    fig = written.figure
    assert len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("(a) upstream") and titles[3].startswith("(d) test score")
    assert _legend_texts(fig.axes[0]) == ["MTL"]  # upstream: the learned methods only
    assert _legend_texts(fig.axes[1]) == ["PT", "MTL"]
    bars = fig.axes[3]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["demo-emotion", "demo-formality", "mean"]
    # 2 methods x (2 target tasks + the mean), each bar the results.json mean test score x100
    results = json.loads(runs[0].results_path.read_text())
    heights = sorted(round(p.get_height(), 6) for p in bars.patches)
    expected = [100 * agg["mean"] for tasks in results["tasks"].values() for agg in tasks.values()]
    expected += [100 * m for m in results["mean"].values()]
    assert heights == sorted(round(v, 6) for v in expected)
    image = imread(written.path)
    width, height = fig.get_size_inches() * fig.dpi
    assert image.shape[:2] == (round(height), round(width))


def test_a_run_without_upstream_methods_leaves_panel_a_out(runs, tmp_path):
    written = write_figure([runs[1]], tmp_path / "pt.png")
    assert written.panels == ["train", "dev", "test"]
    assert len(written.figure.axes) == 3
    assert written.figure.axes[0].get_title().startswith("(a) downstream training")  # letters follow the panels
    assert any("upstream" in note for note in written.notes)


def test_several_runs_are_overlaid_with_the_run_id_tail_in_each_label(runs, tmp_path):
    with_mtl, pt_only = runs
    written = write_figure([with_mtl, pt_only], tmp_path / "both.svg")
    assert written.panels == list(PANELS)  # the upstream panel from the run that has one
    fig = written.figure
    tail_a, tail_b = with_mtl.id[-12:], pt_only.id[-12:]
    assert _legend_texts(fig.axes[0]) == [f"MTL ({tail_a})"]
    assert _legend_texts(fig.axes[1]) == [f"PT ({tail_a})", f"MTL ({tail_a})", f"PT ({tail_b})"]
    assert _legend_texts(fig.axes[3]) == [f"PT ({tail_a})", f"MTL ({tail_a})", f"PT ({tail_b})"]
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[1].get_lines()}
    assert styles[f"PT ({tail_a})"] != styles[f"PT ({tail_b})"]


def test_a_partial_run_takes_its_test_scores_from_finished_cells_or_leaves_the_panel_out(runs, tmp_path):
    partial = _copy(runs[0], tmp_path)
    partial.results_path.unlink()
    kept = sorted(partial.cells_dir.glob("pt__*.json"))
    for cell in partial.cells_dir.glob("mtl__*.json"):
        cell.unlink()
    written = write_figure([partial], tmp_path / "partial.png")
    assert written.panels == list(PANELS)
    assert _legend_texts(written.figure.axes[3]) == ["PT"]  # only PT's cells are finished
    assert any(f"{len(kept)} of 8 cells finished" in note for note in written.notes)
    shutil.rmtree(partial.cells_dir)
    written = write_figure([partial], tmp_path / "no-cells.png")
    assert written.panels == ["upstream", "train", "dev"]
    assert any("no test scores yet" in note for note in written.notes)


def test_long_curves_are_smoothed_and_the_axis_label_says_so(runs, tmp_path):
    run = _copy(runs[0], tmp_path)
    for step in range(4, 300):
        run.log_upstream_loss("mtl", step, 1.0 + (step % 2))
    written = write_figure([run], tmp_path / "long.png")
    upstream = written.figure.axes[0]
    assert "moving mean over 11 meta-updates" in upstream.get_ylabel()  # 299 points // 25
    values = upstream.get_lines()[0].get_ydata()
    assert max(values[20:-20]) - min(values[20:-20]) < 0.2  # the 1/2/1/2 zigzag is flattened
    assert "moving mean" not in write_figure([runs[0]], tmp_path / "short.png").figure.axes[0].get_ylabel()


@pytest.mark.parametrize("name", ["figure.jpg", "figure", "figure.pdf.txt"])
def test_an_unknown_suffix_is_a_one_line_value_error(runs, tmp_path, name):
    with pytest.raises(ValueError, match="unknown figure format") as err:
        write_figure([runs[0]], tmp_path / name)
    assert isinstance(err.value, PlotError) and "\n" not in str(err.value)
    assert "use .pdf, .png or .svg" in str(err.value)
    assert not (tmp_path / name).exists()


def test_an_unwritable_out_is_a_one_line_value_error(runs, tmp_path):
    missing = tmp_path / "no-such-dir" / "fig.pdf"
    with pytest.raises(PlotError, match="does not exist") as err:
        write_figure([runs[0]], missing)
    assert str(missing.parent) in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        write_figure([runs[0]], tmp_path / "taken.png")


def test_nothing_to_plot_is_a_one_line_value_error(tmp_path, runs):
    with pytest.raises(PlotError, match="no runs"):
        write_figure([], tmp_path / "x.pdf")
    empty = _copy(runs[1], tmp_path)
    empty.metrics_path.unlink()
    empty.results_path.unlink()
    shutil.rmtree(empty.cells_dir)
    with pytest.raises(PlotError, match="nothing to plot yet") as err:
        write_figure([empty], tmp_path / "x.pdf")
    assert empty.id in str(err.value) and not (tmp_path / "x.pdf").exists()


def test_without_matplotlib_the_error_names_the_extra(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(PlotError) as err:
        write_figure([runs[0]], tmp_path / "fig.pdf")
    assert "pip install 'mpt-tui[plots]'" in str(err.value) and "\n" not in str(err.value)


def test_importing_the_module_loads_neither_matplotlib_nor_torch():
    """The CLI can import it at no cost: matplotlib only when a figure is drawn."""
    code = ("import sys, mpt_tui.plots\n"
            "print(sorted(m for m in ('matplotlib', 'torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_plot_command_writes_the_figure_and_refuses_bad_input_in_one_line(runs, tmp_path):
    with_mtl, pt_only = runs
    root = with_mtl.path.parent
    out = tmp_path / "fig.svg"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mpt_tui.cli", "plot", *args, "--runs-dir", str(root)],
                              capture_output=True, text=True, cwd=REPO, timeout=120)

    done = cli(with_mtl.id, pt_only.id[:-3], "--out", str(out))  # an id and a unique prefix
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().lstrip().startswith((b"<?xml", b"<svg")) and str(out) in done.stdout
    for args, needle in [((with_mtl.id, "--out", str(tmp_path / "fig.jpg")), "unknown figure format"),
                         (("no-such-run", "--out", str(out)), "no run 'no-such-run'")]:
        bad = cli(*args)
        lines = [line for line in bad.stderr.splitlines() if line.strip()]
        assert bad.returncode == 2 and len(lines) == 1 and needle in lines[0], bad.stderr
