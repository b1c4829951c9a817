"""Figures for papers from run directories: `write_figure(runs, out)` (the `mpt-tui plot` command).

One figure, its panels in this order, each drawn only where some run has data for it (a panel
without data is left out, never drawn empty; the letters follow the panels drawn):

    upstream   meta-training loss per upstream method by meta-update (metrics.jsonl upstream
               events), smoothed by a centred moving mean when a curve is long (the axis label
               says over how many meta-updates)
    train      downstream train loss per method by step: the mean over that method's grid cells
               (every target task, split and learning rate) with a band of ±1 std across them,
               smoothed like the upstream panel
    dev        downstream dev score (x100) per method by step: mean over cells ± 1 std
    test       the comparison: grouped bars per target task, one bar per method, the mean test
               score (x100) over splits with the std over splits as error bar (results.json
               "tasks"; a partial run without results.json: its finished cells through the
               protocol's own selection, `engine.experiment.plan.select_and_aggregate`), then a "mean"
               group, the mean over each column's own target tasks (no error bar)

Several runs are overlaid in the same panels: colour is the method (the same colour in every
panel), line style the run (solid, dashed, dotted, dash-dot, ...), bars of later runs hatched,
and every label reads "method (run id tail)", the last 12 characters of the run id as the
Results table's headers (longer where two runs' tails would read the same). The curve panels sit
side by side in the top row; the bar panel, which grows with the number of target tasks, spans the
row below with its legend on the right.

`write_figure(runs, out, kind=...)` draws other figures from a run's stored similarity analysis
(analysis.json, `mpt-tui analyse`; the first run given):

    similarity          one heatmap per embedding kind (prompt, text): targets x sources, the cosine
                        written in each cell, each target's nearest source outlined
    gain-vs-similarity  one panel per (embedding kind, max / mean similarity to the run's sources):
                        each method's gain over PT (x100) per target against that similarity, points
                        labelled with the target, Spearman's rho, n and permutation p in the legend

The format comes from `out`'s suffix (.pdf, .png, .svg). matplotlib is imported only here and
drawn with the non-interactive Agg canvas directly (no pyplot, so no global backend state);
without it a `PlotError` names the extra to install. Every problem is a one-line `PlotError`
(a ValueError) the command line can print as is.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.experiment import in_display_order, label
from engine.results import Column, build_report
from engine.store import Run, RunsDirError, cell_curves, read_json, upstream_curves

FORMATS = ("pdf", "png", "svg")
PANELS = ("upstream", "train", "dev", "test")
KINDS = ("runs", "similarity", "gain-vs-similarity")
INSTALL_HINT = "pip install 'mpt-tui[plots]'"
RUN_TAIL = 12  # characters of a run id in labels, as engine.results.report's column headers
SMOOTH_POINTS = 25  # a curve longer than this is smoothed over about 1/SMOOTH_POINTS of its length
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
HATCHES = ("", "//", "..", "xx", "\\\\", "++")


class PlotError(ValueError):
    """A figure that cannot be written: one line, printable as is."""


@dataclass
class WrittenFigure:
    """What `write_figure` wrote: the file, the panels drawn (names from PANELS, in order), notes
    on what was left out or taken from partial data, and the matplotlib Figure (already saved;
    `figure.axes` has one Axes per panel)."""

    path: Path
    panels: list[str]
    notes: list[str] = field(default_factory=list)
    figure: object = None


# ---- data: plain Python from the run directories, no matplotlib -------------------------

Series = tuple[list[float], list[float], list[float]]  # steps, mean, std


@dataclass
class RunData:
    run: Run
    upstream: dict[str, tuple[list[int], list[float]]]  # method -> curve
    train: dict[str, Series]  # method -> mean ± std over its cells
    dev: dict[str, Series]
    tasks: dict[str, dict[str, dict]] | None  # method -> task -> {"mean", "std", "n", "metric"}
    partial: str = ""  # why `tasks` comes from finished cells ("" for results.json)


def _grid(run: Run) -> list | None:
    """The run's grid cells in grid order (None when its config cannot be read)."""
    from engine.experiment import Plan, grid_cells

    try:
        config = run.config()
        return grid_cells(Plan(**config["plan"]), list(config["preset"]["downstream"]["learning_rates"]))
    except (RunsDirError, KeyError, TypeError):
        return None


def _method_of(cell_id: str, grid_methods: dict[str, str]) -> str:
    return grid_methods.get(cell_id) or cell_id.split("__", 1)[0]


def _mean_std(curves: list[tuple[list[int], list[float]]]) -> Series:
    """Per step, mean and population std over the curves that have that step (non-finite values skipped)."""
    by_step: dict[int, list[float]] = {}
    for steps, values in curves:
        for s, v in zip(steps, values):
            if isinstance(v, (int, float)) and math.isfinite(v):
                by_step.setdefault(s, []).append(float(v))
    steps = sorted(by_step)
    means, stds = [], []
    for s in steps:
        vals = by_step[s]
        m = sum(vals) / len(vals)
        means.append(m)
        stds.append(math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals)))
    return steps, means, stds


def load_run_data(run: Run) -> RunData:
    from engine.experiment import select_and_aggregate

    events = run.events()
    upstream = upstream_curves(events)
    grid = _grid(run)
    grid_methods = {c.id: c.method for c in grid or []}
    # One pass to bucket events by cell, then the run's own reader per cell (cell_curves scans
    # the events it is given, so handing it the whole log per cell would be quadratic).
    by_cell: dict[str, list[dict]] = {}
    for e in events:
        if e.get("stage") == "downstream" and e.get("cell"):
            by_cell.setdefault(e["cell"], []).append(e)
    losses: dict[str, list] = {}
    devs: dict[str, list] = {}
    for cell_id, cell_events in by_cell.items():
        loss, dev = cell_curves(cell_events, cell_id)
        method = _method_of(cell_id, grid_methods)
        if loss[0]:
            losses.setdefault(method, []).append(loss)
        if dev[0]:
            devs.setdefault(method, []).append(dev)
    train = {m: _mean_std(c) for m, c in losses.items()}
    dev = {m: _mean_std(c) for m, c in devs.items()}

    results = read_json(run.results_path)
    tasks, partial = None, ""
    if isinstance(results, dict) and isinstance(results.get("tasks"), dict) and results["tasks"]:
        tasks = results["tasks"]
    elif grid:
        records = run.finished_cell_records([c.id for c in grid])  # grid order: ties keep the first lr
        records = [records[c.id] for c in grid if c.id in records]
        if records:
            tasks = select_and_aggregate(records)["tasks"]
            partial = f"{len(records)} of {len(grid)} cells finished"
    return RunData(run, upstream, {m: s for m, s in train.items() if s[0]}, {m: s for m, s in dev.items() if s[0]},
                   tasks, partial)


# ---- drawing ------------------------------------------------------------------------------

def _check_out(out: Path) -> str:
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        got = f"'{out.suffix}'" if out.suffix else "no suffix"
        raise PlotError(f"{out}: unknown figure format {got} (use .pdf, .png or .svg)")
    parent = out.parent
    if not parent.is_dir():
        raise PlotError(f"{out}: directory {parent} does not exist")
    if out.is_dir():
        raise PlotError(f"{out}: is a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise PlotError(f"{out}: not writable")
    return fmt


def _import_matplotlib():
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(f"figures need matplotlib, which is not installed: {INSTALL_HINT}") from None
    return matplotlib, Figure, FigureCanvasAgg


def _window(length: int) -> int:
    """The moving-mean window for a curve of `length` points (1: none); odd, so it is centred."""
    w = length // SMOOTH_POINTS
    return w + 1 if w % 2 == 0 and w > 1 else max(w, 1)


def _smooth(values: list[float], window: int) -> list[float]:
    """Centred moving mean; the window shrinks at the ends (no padding)."""
    if window <= 1:
        return list(values)
    half = window // 2
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    n = len(values)
    return [(prefix[min(n, i + half + 1)] - prefix[max(0, i - half)]) / (min(n, i + half + 1) - max(0, i - half))
            for i in range(n)]


def _run_tails(run_ids: list[str]) -> list[str]:
    """The last RUN_TAIL characters of each run id, longer where two distinct ids would read the same."""
    distinct = set(run_ids)
    for n in range(RUN_TAIL, max(map(len, run_ids), default=0) + 1):
        if len({i[-n:] for i in distinct}) == len(distinct):
            return [i[-n:] for i in run_ids]
    return list(run_ids)


def _smoothing_label(base: str, window: int, unit: str) -> str:
    return f"{base}\n(moving mean over {window} {unit})" if window > 1 else base


def write_figure(runs: list[Run], out: Path | str, kind: str = "runs") -> WrittenFigure:
    """Write one figure of `runs` to `out` (format from the suffix: .pdf, .png, .svg).

    Panels, each only where some run has data (see the module docstring): "upstream" (meta-training
    loss per method), "train" (downstream train loss, mean over cells ± 1 std), "dev" (downstream dev
    score, mean over cells ± 1 std), "test" (grouped bars of the mean test score per target task per
    method with the std over splits, plus the mean over tasks). Several runs are overlaid in the same
    panels, labelled "method (run id tail)"; colour is the method, line style (bars: hatching) the run.

    Returns a `WrittenFigure` (path, panels drawn, notes, the Figure). Raises `PlotError` (a
    ValueError, one line) for no runs, nothing to plot, an unknown suffix, an unwritable `out`, or a
    missing matplotlib (the message names `pip install 'mpt-tui[plots]'`).
    """
    out = Path(out).expanduser()
    fmt = _check_out(out)
    if not runs:
        raise PlotError("no runs to plot")
    if kind not in KINDS:
        raise PlotError(f"unknown figure kind '{kind}' (known: {', '.join(KINDS)})")
    if kind != "runs":
        return _write_analysis_figure(runs, out, fmt, kind)
    matplotlib, Figure, FigureCanvasAgg = _import_matplotlib()
    from matplotlib.ticker import MaxNLocator

    data = [load_run_data(r) for r in runs]
    several = len(runs) > 1
    notes: list[str] = []
    for d in data:
        if d.partial:
            notes.append(f"run {d.run.id}: test scores from its finished cells ({d.partial}), no results.json yet")
        elif d.tasks is None:
            notes.append(f"run {d.run.id}: no test scores yet (no results.json, no finished cells)")

    tails = _run_tails([r.id for r in runs])

    def name(method: str, run_index: int) -> str:
        text = label(method)
        return f"{text} ({tails[run_index]})" if several else text

    all_methods = in_display_order({m for d in data
                                    for part in (d.upstream, d.train, d.dev, d.tasks or {}) for m in part})
    palette = matplotlib.colormaps["tab10"].colors
    colour = {m: palette[i % len(palette)] for i, m in enumerate(all_methods)}

    curve_panels = [p for p, present in (("upstream", any(d.upstream for d in data)),
                                         ("train", any(d.train for d in data)),
                                         ("dev", any(d.dev for d in data))) if present]
    has_test = any(d.tasks for d in data)
    panels = curve_panels + (["test"] if has_test else [])
    if not panels:
        raise PlotError(f"nothing to plot yet: {', '.join(r.id for r in runs)} "
                        f"{'have' if several else 'has'} no metrics")
    for p in PANELS:
        if p not in panels:
            notes.append(f"panel '{p}' left out: no data")

    n_curves = len(curve_panels)
    width = max(5.0, 4.2 * n_curves)
    if has_test:  # room for every bar: (target tasks + the mean group) x (run, method) columns
        n_groups = len({t for d in data for tasks in (d.tasks or {}).values() for t in tasks}) + 1
        n_columns = sum(len(d.tasks or {}) for d in data)
        width = max(width, min(18.0, 2.5 + 0.2 * n_groups * n_columns))
    rows = (1 if n_curves else 0) + (1 if has_test else 0)
    fig = Figure(figsize=(width, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, max(n_curves, 1))
    letters = iter("abcdefgh")

    for col, panel in enumerate(curve_panels):
        ax = fig.add_subplot(grid[0, col])
        if panel == "upstream":
            longest = max(len(c[0]) for d in data for c in d.upstream.values())
            window = _window(longest)
            for i, d in enumerate(data):
                for m in in_display_order(d.upstream):
                    steps, values = d.upstream[m]
                    ax.plot(steps, _smooth(values, window), color=colour[m], linestyle=LINESTYLES[i % len(LINESTYLES)],
                            label=name(m, i))
            ax.set_title(f"({next(letters)}) upstream meta-training")
            ax.set_xlabel("meta-update")
            ax.set_ylabel(_smoothing_label("loss", window, "meta-updates"))
        else:
            series_of = (lambda d: d.train) if panel == "train" else (lambda d: d.dev)
            scale = 1.0 if panel == "train" else 100.0
            window = 1
            if panel == "train":
                window = _window(max(len(s[0]) for d in data for s in d.train.values()))
            for i, d in enumerate(data):
                series = series_of(d)
                for m in in_display_order(series):
                    steps, mean, std = series[m]
                    mean_s, std_s = _smooth(mean, window), _smooth(std, window)
                    lo = [scale * (a - b) for a, b in zip(mean_s, std_s)]
                    hi = [scale * (a + b) for a, b in zip(mean_s, std_s)]
                    style = LINESTYLES[i % len(LINESTYLES)]
                    ax.plot(steps, [scale * v for v in mean_s], color=colour[m], linestyle=style, label=name(m, i))
                    ax.fill_between(steps, lo, hi, color=colour[m], alpha=0.15, linewidth=0)
            if panel == "train":
                ax.set_title(f"({next(letters)}) downstream training")
                ax.set_ylabel(_smoothing_label("train loss\nmean ± 1 std over cells", window, "steps"))
            else:
                ax.set_title(f"({next(letters)}) downstream dev")
                ax.set_ylabel("dev score x100\nmean ± 1 std over cells")
            ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")

    if has_test:
        ax = fig.add_subplot(grid[rows - 1, :])
        _draw_bars(ax, data, name, colour)
        partial = " (partial runs: from finished cells)" if any(d.partial for d in data) else ""
        ax.set_title(f"({next(letters)}) test score per target task{partial}")

    try:
        fig.savefig(out, format=fmt)
    except OSError as exc:
        raise PlotError(f"{out}: cannot be written: {exc.strerror or exc}") from None
    return WrittenFigure(out, panels, notes, fig)


def _draw_bars(ax, data: list[RunData], name, colour) -> None:
    summaries = [{"run_id": f"{i}", "tasks": d.tasks} for i, d in enumerate(data) if d.tasks]
    report = build_report(summaries)  # columns in display order, means over each column's own tasks
    groups = report.tasks + ["mean"]
    columns: list[Column] = report.columns
    width = 0.8 / max(len(columns), 1)
    for j, column in enumerate(columns):
        run_index = int(column.run_id)
        xs, heights, errors = [], [], []
        for g, task in enumerate(groups):
            if task == "mean":
                value, err = report.means[column], 0.0
            else:
                agg = report.score(task, column)
                if not agg:
                    continue
                value, err = agg["mean"], agg["std"]
            if value is None or value != value:
                continue
            xs.append(g - 0.4 + width * (j + 0.5))
            heights.append(100 * value)
            errors.append(100 * err)
        ax.bar(xs, heights, width, yerr=errors, capsize=2, color=colour[column.method],
               hatch=HATCHES[run_index % len(HATCHES)], edgecolor="white" if run_index == 0 else "black",
               linewidth=0.5, label=name(column.method, run_index), error_kw={"linewidth": 0.8})
    ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 4 else 0,
                  ha="right" if len(groups) > 4 else "center")
    ax.set_ylabel("test score x100\nmean ± std over splits")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))


# ---- the similarity analysis (analysis.json) --------------------------------------------------

def _analysis_of(runs: list[Run]) -> tuple[dict, list[str]]:
    from engine.results import read_analysis

    notes = [f"run {r.id}: not drawn (the figure shows the analysis stored in the first run {runs[0].id})"
             for r in runs[1:]]
    doc = read_analysis(runs[0])
    if doc is None or not doc.get("kinds"):
        raise PlotError(f"run {runs[0].id} has no similarity analysis yet: run `mpt-tui analyse {runs[0].id}` first")
    return doc, notes


def _save(fig, out: Path, fmt: str) -> None:
    try:
        fig.savefig(out, format=fmt)
    except OSError as exc:
        raise PlotError(f"{out}: cannot be written: {exc.strerror or exc}") from None


def _write_analysis_figure(runs: list[Run], out: Path, fmt: str, kind: str) -> WrittenFigure:
    matplotlib, Figure, FigureCanvasAgg = _import_matplotlib()
    doc, notes = _analysis_of(runs)
    kinds = list(doc["kinds"])
    if kind == "similarity":
        sources, targets = doc["sources"], doc["targets"]
        fig = Figure(figsize=(max(4.5, 1.0 + 0.9 * len(sources)) * len(kinds), 1.6 + 0.5 * len(targets)),
                     layout="constrained")
        FigureCanvasAgg(fig)
        for i, name in enumerate(kinds):
            ax = fig.add_subplot(1, len(kinds), i + 1)
            matrix = doc["kinds"][name]["matrix"]
            image = ax.imshow(matrix, cmap="viridis", aspect="auto")
            for r, row in enumerate(matrix):
                best = max(range(len(row)), key=lambda j: (sources[j] != targets[r], row[j]))
                for c, sim in enumerate(row):
                    ax.text(c, r, f"{sim:.2f}", ha="center", va="center", fontsize="small",
                            color="black" if sim > (max(row) + min(row)) / 2 else "white",
                            fontweight="bold" if c == best else "normal")
            ax.set_xticks(range(len(sources)), sources, rotation=30, ha="right", fontsize="small")
            ax.set_yticks(range(len(targets)), targets, fontsize="small")
            ax.set_title(f"({'abcdefgh'[i]}) {name} embeddings: cosine similarity")
            ax.set_xlabel("source task")
            fig.colorbar(image, ax=ax, shrink=0.8)
        _save(fig, out, fmt)
        return WrittenFigure(out, [f"similarity:{k}" for k in kinds], notes, fig)
    return _gain_vs_similarity(doc, out, fmt, notes, Figure, FigureCanvasAgg, matplotlib)


def _gain_vs_similarity(doc, out, fmt, notes, Figure, FigureCanvasAgg, matplotlib) -> WrittenFigure:
    from engine.experiment import set_similarity, sources_of

    methods = in_display_order(doc["gains"])
    if not methods:
        raise PlotError("the analysis has no gains over PT to plot (the runs have no method besides PT)")
    palette = matplotlib.colormaps["tab10"].colors
    own = sources_of(doc)
    kinds = list(doc["kinds"])
    fig = Figure(figsize=(9.0, 3.6 * len(kinds)), layout="constrained")
    FigureCanvasAgg(fig)
    letters = iter("abcdefgh")
    panels = []
    for r, name in enumerate(kinds):
        sims = {t: set_similarity(row, doc["sources"], own.get(t, doc["sources"]), t)
                for t, row in zip(doc["targets"], doc["kinds"][name]["matrix"])}
        for c, aggregate in enumerate(("max", "mean")):
            ax = fig.add_subplot(len(kinds), 2, 2 * r + c + 1)
            for m_index, method in enumerate(methods):
                stat = next((x for x in doc["correlations"] if x["similarity"] == name and x["method"] == method
                             and x["aggregate"] == aggregate and x["level"] == "task"), None)
                points = [(sims[t][aggregate], 100 * g, t) for t, g in doc["gains"][method].items()
                          if aggregate in sims.get(t, {})]
                rho = "-" if not stat or stat["rho"] is None else f"{stat['rho']:+.2f}"
                p = "-" if not stat or stat["p"] is None else f"{stat['p']:.2f}"
                ax.scatter([x for x, _, _ in points], [y for _, y, _ in points], color=palette[m_index % 10],
                           label=f"{label(method)}: rho {rho}, n {len(points)}, p {p}")
                for x, y, target in points:
                    ax.annotate(target, (x, y), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.set_xlabel(f"{aggregate} {name} similarity to the run's sources")
            ax.set_ylabel("gain over PT x100\n(mean over splits)")
            ax.set_title(f"({next(letters)}) gain vs {aggregate} {name} similarity")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="x-small")
            panels.append(f"{name}:{aggregate}")
    fig.suptitle(doc.get("note", ""), fontsize="x-small", wrap=True)
    _save(fig, out, fmt)
    return WrittenFigure(out, panels, notes, fig)
