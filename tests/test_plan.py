"""The protocol (engine.experiment.plan): plans checked against the data, per-split selection on dev, aggregation."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from engine.experiment.config import Preset, PresetError, load_preset
from engine.experiment.plan import (PAPER_SETTING_PREFIX, Cell, Plan, load_paper_setting, make_plan, paper_setting_names,
                             paper_settings_dir, select_and_aggregate)

from conftest import EXPECTED_CHOICE, REPO, cell, require_shared_data, synthetic_cells

PRESETS_DIR = REPO / "presets"


def test_select_and_aggregate_picks_best_dev_per_split():
    results = select_and_aggregate(synthetic_cells())
    chosen = {(s["method"], s["task"], s["seed"]): (s["lr"], s["test"]) for s in results["splits"]}
    assert chosen == EXPECTED_CHOICE


def test_select_ties_keep_first_listed():
    a = cell("pt", "t", 13, 0.3, 0.5, 0.1)
    b = cell("pt", "t", 13, 0.1, 0.5, 0.9)
    assert select_and_aggregate([a, b])["splits"][0]["lr"] == 0.3
    assert select_and_aggregate([b, a])["splits"][0]["lr"] == 0.1


def test_select_all_nan_dev_keeps_a_split():
    results = select_and_aggregate([cell("pt", "t", 13, 0.3, float("nan"), 0.4),
                                    cell("pt", "t", 13, 0.1, float("nan"), 0.6)])
    assert len(results["splits"]) == 1 and results["splits"][0]["lr"] == 0.3


def test_aggregate_mean_population_std_and_task_mean():
    results = select_and_aggregate(synthetic_cells())
    pt = results["tasks"]["pt"]
    assert sorted(pt) == ["task-a", "task-b", "task-c"]
    assert pt["task-a"]["mean"] == pytest.approx(0.8)
    assert pt["task-a"]["std"] == pytest.approx(math.sqrt(((0.0) ** 2 + 0.1 ** 2 + 0.1 ** 2) / 3))
    assert pt["task-a"]["std"] == pytest.approx(statistics.pstdev([0.8, 0.7, 0.9]))
    assert pt["task-a"]["std"] != pytest.approx(statistics.stdev([0.8, 0.7, 0.9]))  # population, not sample
    assert (pt["task-a"]["n"], pt["task-a"]["metric"]) == (3, "accuracy")
    assert pt["task-b"]["mean"] == pytest.approx(0.4)
    assert pt["task-b"]["std"] == pytest.approx(math.sqrt(0.08 / 3))
    assert pt["task-b"]["metric"] == "f1"
    assert pt["task-c"] == {"mean": pytest.approx(0.3), "std": 0.0, "n": 1, "metric": "accuracy"}
    assert results["mean"]["pt"] == pytest.approx((0.8 + 0.4 + 0.3) / 3)
    assert results["tasks"]["mpt"] == {"task-a": {"mean": pytest.approx(0.2), "std": 0.0, "n": 1,
                                                  "metric": "accuracy"}}
    assert results["mean"]["mpt"] == pytest.approx(0.2)
    # results.json round trip (NaN dev scores survive as JSON NaN)
    assert json.loads(json.dumps(results, allow_nan=True))["mean"]["pt"] == pytest.approx(0.5)


DEMO_DATA = PRESETS_DIR / "demo-data"


def write_preset(tmp_path: Path, body: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def shared_preset(tmp_path: Path, data_lines: str, overrides=()) -> Preset:
    root = require_shared_data()
    path = write_preset(tmp_path, f'name = "plan-test"\n[data]\ndir = "{root}"\n{data_lines}\n')
    preset, _ = load_preset(str(path), list(overrides))
    return preset


def plan_error(preset: Preset) -> str:
    with pytest.raises(PresetError) as info:
        make_plan(preset)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_make_plan_with_setting(tmp_path):
    preset = shared_preset(tmp_path, 'setting = "class_to_class"')
    plan = make_plan(preset)
    raw = json.loads((require_shared_data() / "metaicl-config" / "class_to_class.json").read_text())
    assert plan.setting == "class_to_class"
    assert plan.sources == raw["train"] and plan.targets == raw["test"]
    assert plan.seeds == [100, 13, 21, 42, 87]
    assert Path(plan.data_dir) == (require_shared_data() / "metaicl").resolve()
    assert plan.warnings == []


def test_make_plan_explicit_targets_override_setting(tmp_path):
    preset = shared_preset(tmp_path, 'setting = "class_to_class"\ntargets = ["glue-sst2"]\nseeds = [13, 42]')
    plan = make_plan(preset)
    assert plan.targets == ["glue-sst2"] and plan.seeds == [13, 42]
    assert plan.sources  # from the setting


def test_make_plan_unknown_target(tmp_path):
    message = plan_error(shared_preset(tmp_path, 'targets = ["glue-sst2", "no-such-task"]'))
    assert "data.targets" in message and "no-such-task" in message


def test_make_plan_unknown_source(tmp_path):
    message = plan_error(shared_preset(tmp_path, 'sources = ["no-such-source"]\ntargets = ["glue-sst2"]'))
    assert "data.sources" in message and "no-such-source" in message


def test_make_plan_unknown_setting(tmp_path):
    message = plan_error(shared_preset(tmp_path, 'setting = "no_such_setting"'))
    assert "data.setting" in message and "no_such_setting" in message


def test_make_plan_missing_data_dir(tmp_path):
    path = write_preset(tmp_path, f'name = "x"\n[data]\ndir = "{tmp_path / "missing"}"\ntargets = ["a"]\n')
    preset, _ = load_preset(str(path))
    message = plan_error(preset)
    assert "data.dir" in message and str(tmp_path / "missing") in message


def test_make_plan_target_without_test_file(tmp_path):
    tasks = require_shared_data() / "metaicl"
    no_test = sorted(d.name for d in tasks.iterdir() if d.is_dir() and not list(d.glob("*_test.jsonl")))
    assert no_test, "expected source-only tasks in the shared data"
    task = no_test[0]
    message = plan_error(shared_preset(tmp_path, f'targets = ["{task}"]'))
    assert "data.targets" in message and task in message and "test" in message
    # the same task is fine as a source
    plan = make_plan(shared_preset(tmp_path, f'sources = ["{task}"]\ntargets = ["glue-sst2"]'))
    assert plan.sources == [task]


def test_make_plan_seeds_a_task_lacks(tmp_path):
    message = plan_error(shared_preset(tmp_path, 'targets = ["glue-sst2"]\nseeds = [13, 7]'))
    assert "data.seeds" in message and "glue-sst2" in message and "7" in message


def test_make_plan_empty_targets(tmp_path):
    message = plan_error(shared_preset(tmp_path, 'sources = ["glue-rte"]\ntargets = []'))
    assert "data.targets" in message


def test_make_plan_overlap_is_a_warning(tmp_path):
    preset = shared_preset(tmp_path, 'sources = ["glue-sst2", "glue-rte"]\ntargets = ["glue-sst2"]\nseeds = [13]')
    plan = make_plan(preset)
    assert plan.targets == ["glue-sst2"]
    assert len(plan.warnings) == 1 and "glue-sst2" in plan.warnings[0] and "overlap" in plan.warnings[0]
    disjoint = make_plan(shared_preset(tmp_path, 'sources = ["glue-rte"]\ntargets = ["glue-sst2"]\nseeds = [13]'))
    assert disjoint.warnings == []


# ---- the paper's settings (data.setting = "qin2023:<name>") -----------------------------

PAPER_COUNTS = {  # name -> (sources, targets), as in the authors' code
    "class_to_class": (45, 10), "non_class_to_class": (45, 10), "qa_to_qa": (22, 16), "non_qa_to_qa": (33, 16),
    "non_nli_to_nli": (56, 9), "non_paraphrase_to_paraphrase": (60, 4), "class_to_non_class": (45, 6),
}


def paper_data(root: Path, tasks: dict[str, str], seeds=(1, 2, 3), drop_test=()) -> Path:
    """A data directory (tasks/, config/) holding demo tasks under new names: {demo task: new name}."""
    for old, new in tasks.items():
        folder = root / "tasks" / new
        folder.mkdir(parents=True)
        for path in (DEMO_DATA / "tasks" / old).glob("*.jsonl"):
            seed, split = path.stem.split("_")[-2:]
            if int(seed) in seeds and not (split == "test" and new in drop_test):
                (folder / f"{new}_16_{seed}_{split}.jsonl").write_text(path.read_text().replace(old, new))
        (root / "config" / "tasks").mkdir(parents=True, exist_ok=True)
        (root / "config" / "tasks" / f"{new}.json").write_text((DEMO_DATA / "config" / "tasks" / f"{old}.json").read_text())
    return root


def paper_preset(tmp_path: Path, data: Path, setting: str, extra: str = "", upstream: str = "methods = []") -> Preset:
    path = write_preset(tmp_path, f'name = "paper"\n[data]\ndir = "{data}"\nsetting = "{setting}"\n{extra}\n'
                                  f'[upstream]\n{upstream}\n')
    return load_preset(str(path))[0]


def test_paper_settings_are_packaged_with_the_authors_lists():
    assert paper_setting_names() == sorted(PAPER_COUNTS)
    for name, (n_sources, n_targets) in PAPER_COUNTS.items():
        raw = json.loads((paper_settings_dir() / f"{name}.json").read_text())
        setting = load_paper_setting(PAPER_SETTING_PREFIX + name)
        assert (setting.sources, setting.targets) == (raw["train"], raw["test"])
        assert (len(setting.sources), len(setting.targets)) == (n_sources, n_targets)
        assert len(set(setting.sources)) == n_sources and len(set(setting.targets)) == n_targets
        assert "allcode_0628" in setting.source
        overlap = set(setting.sources) & set(setting.targets)
        assert overlap == ({"sick"} if name == "non_nli_to_nli" else set()), name
    cls = load_paper_setting("class_to_class")
    assert cls.sources[:3] == ["superglue-rte", "tweet_eval-sentiment", "discovery"]  # the authors' order
    assert cls.targets == ["superglue-cb", "dbpedia_14", "wiki_qa", "emo", "yelp_polarity", "ethos-religion",
                           "amazon_polarity", "tab_fact", "anli", "ethos-race"]
    assert load_paper_setting("non_class_to_class").targets == cls.targets
    assert load_paper_setting("class_to_non_class").sources == cls.sources
    assert "not verified" in load_paper_setting("class_to_non_class").source
    assert load_paper_setting("non_qa_to_qa").targets == load_paper_setting("qa_to_qa").targets


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_setting_resolves_on_the_shared_data(tmp_path, name):
    from engine.experiment.data import PAPER_SEEDS, TaskData

    root = require_shared_data()
    paper = load_paper_setting(name)
    data = TaskData(root)
    usable = [t for t in paper.targets if data.has_task(t) and data.has_test(t, 16)
              and set(PAPER_SEEDS) <= set(data.seeds(t, 16))]
    preset = shared_preset(tmp_path, f'setting = "qin2023:{name}"')
    if not usable:  # e.g. non_paraphrase_to_paraphrase: none of its four targets is in ../shared/data
        message = plan_error(preset)
        assert "data.setting" in message and name in message and "none of the" in message
        return
    plan = make_plan(preset)
    assert plan.setting == f"qin2023:{name}"
    assert plan.targets == usable
    assert plan.missing_targets == [t for t in paper.targets if t not in usable]
    assert plan.sources == [t for t in paper.sources if data.has_task(t)]
    assert plan.missing_sources == [t for t in paper.sources if not data.has_task(t)]
    missing = [w for w in plan.warnings if w.startswith(f"paper setting {name}:")]
    assert len(missing) == (1 if plan.missing_targets or plan.missing_sources else 0)


def test_paper_setting_skips_missing_tasks_and_says_so_once(tmp_path):
    root = require_shared_data()
    assert not (root / "metaicl" / "dbpedia_14").exists() and not (root / "metaicl" / "yahoo_answers_topics").exists()
    plan = make_plan(shared_preset(tmp_path, 'setting = "qin2023:class_to_class"', ['upstream.methods=["maml"]']))
    assert "dbpedia_14" in plan.missing_targets and "dbpedia_14" not in plan.targets
    assert "yahoo_answers_topics" in plan.missing_sources and "yahoo_answers_topics" not in plan.sources
    assert len(plan.targets) + len(plan.missing_targets) == 10
    assert len(plan.sources) + len(plan.missing_sources) == 45
    (warning,) = plan.warnings
    assert "\n" not in warning
    assert warning.startswith("paper setting class_to_class:")
    assert f"{len(plan.missing_targets)} of 10 targets" in warning and f"{len(plan.missing_sources)} of 45 sources" in warning
    for task in plan.missing_targets + plan.missing_sources:
        assert task in warning
    assert "not comparable to the paper's table" in warning and "fewer sources" in warning
    stored = plan.to_dict()
    assert stored["missing_targets"] == plan.missing_targets and stored["missing_sources"] == plan.missing_sources
    assert Plan(**json.loads(json.dumps(stored))) == plan


def test_plans_stored_before_paper_settings_still_load():
    old = {"data_dir": "/d", "config_dir": None, "setting": "class_to_class", "sources": ["a"], "targets": ["b"],
           "seeds": [13], "methods": ["pt"], "warnings": []}
    plan = Plan(**old)
    assert plan.missing_sources == [] and plan.missing_targets == []


def test_paper_setting_skips_targets_without_test_or_seeds(tmp_path):
    data = paper_data(tmp_path / "data", {"demo-emotion": "emo", "demo-formality": "anli",
                                          "demo-product_sentiment": "wiki_qa", "demo-spam": "sms_spam"},
                      drop_test=("anli",))
    (data / "tasks" / "wiki_qa" / "wiki_qa_16_2_train.jsonl").unlink()
    plan = make_plan(paper_preset(tmp_path, data, "qin2023:class_to_class", "seeds = [1, 2]"))
    assert plan.targets == ["emo"] and plan.sources == ["sms_spam"]
    assert plan.missing_targets == [t for t in load_paper_setting("class_to_class").targets if t != "emo"]
    (warning,) = plan.warnings
    assert "9 of 10 targets" in warning and "44 of 45 sources" in warning
    assert "no k=16 test file: anli" in warning and "no k=16 split for seed(s) 2: wiki_qa" in warning
    assert "fewer sources" not in warning  # no upstream method learns on them


def test_paper_setting_user_lists_stay_strict(tmp_path):
    data = paper_data(tmp_path / "data", {"demo-emotion": "emo", "demo-spam": "sms_spam"})
    message = plan_error(paper_preset(tmp_path, data, "qin2023:class_to_class", 'targets = ["emo", "dbpedia_14"]'))
    assert "data.targets" in message and "dbpedia_14" in message
    message = plan_error(paper_preset(tmp_path, data, "qin2023:class_to_class",
                                      'sources = ["sms_spam", "imdb"]\nseeds = [1]'))
    assert "data.sources" in message and "imdb" in message
    # user-written targets replace the paper's: no word about its missing targets, only the sources
    plan = make_plan(paper_preset(tmp_path, data, "qin2023:class_to_class", 'targets = ["emo"]\nseeds = [1]'))
    assert plan.targets == ["emo"] and plan.missing_targets == [] and plan.sources == ["sms_spam"]
    (warning,) = plan.warnings
    assert "targets" not in warning and "44 of 45 sources" in warning


def test_paper_setting_without_any_target_is_refused(tmp_path):
    data = paper_data(tmp_path / "data", {"demo-spam": "sms_spam", "demo-emotion": "emotion"})
    message = plan_error(paper_preset(tmp_path, data, "qin2023:class_to_class"))
    assert "data.setting" in message and "none of the 10 target tasks" in message and "dbpedia_14" in message


def test_paper_setting_without_any_source_is_refused_for_upstream_methods(tmp_path):
    data = paper_data(tmp_path / "data", {"demo-emotion": "emo"})
    message = plan_error(paper_preset(tmp_path, data, "qin2023:class_to_class", "seeds = [1]",
                                      upstream='methods = ["maml"]'))
    assert "data.setting" in message and "none of the 45 source tasks" in message and "maml" in message
    plan = make_plan(paper_preset(tmp_path, data, "qin2023:class_to_class", "seeds = [1]"))  # PT alone: fine
    assert plan.sources == [] and len(plan.missing_sources) == 45


def test_unknown_paper_setting(tmp_path):
    data = paper_data(tmp_path / "data", {"demo-emotion": "emo"})
    message = plan_error(paper_preset(tmp_path, data, "qin2023:class2class"))
    assert "data.setting" in message and "qin2023:class2class" in message
    for name in PAPER_COUNTS:
        assert f"qin2023:{name}" in message


def test_paper_setting_overlap_says_it_is_the_authors_split(tmp_path):
    data = paper_data(tmp_path / "data", {"demo-formality": "sick", "demo-spam": "emo"})
    plan = make_plan(paper_preset(tmp_path, data, "qin2023:non_nli_to_nli", "seeds = [1]"))
    assert plan.sources == ["emo", "sick"] and plan.targets == ["sick"]
    (overlap,) = [w for w in plan.warnings if "overlap" in w]
    assert "sick" in overlap and "authors' own split" in overlap and "disjoint" not in overlap
    # the same overlap written by the user is still the paper-keeps-them-disjoint warning
    plan = make_plan(paper_preset(tmp_path, data, "", 'sources = ["sick"]\ntargets = ["sick"]\nseeds = [1]'))
    assert any("disjoint" in w for w in plan.warnings)


@pytest.mark.parametrize("task", ["rte", "super_glue-rte", "ag_news", "task-1_2", "t9", "glue__cola", "2x-y_z3"])
@pytest.mark.parametrize("lr", [3e-05, 0.3, 1.0, 8.0, 1e-4, 0.001, 5e-3])
def test_cell_id_round_trip(task, lr):
    """Cell ids are formatted (Cell.id) and parsed (Cell.from_id, parse_cell_id) in one place, for every method."""
    from engine.experiment.methods import method_names
    from engine.experiment.plan import parse_cell_id

    for method in method_names():
        for seed in (1, 13, 100):
            cell = Cell(method, task, seed, lr)
            assert Cell.from_id(cell.id) == cell
            assert parse_cell_id(cell.id) == (method, task, str(seed), f"{lr:g}")


def test_cell_id_not_a_cell():
    from engine.experiment.plan import parse_cell_id

    for text in ("upstream-maml", "pt__rte__sx__lr0.3", "pt__rte__s1", "__rte__s1__lr0.3", "pt____s1__lr0.3"):
        assert parse_cell_id(text) == ("?", text, "", "")
        with pytest.raises(ValueError):
            Cell.from_id(text)
