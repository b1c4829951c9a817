"""The authors' reported numbers (presets/reference/qin2023.json, written by scripts/reference_numbers.py from
github.com/qcwthu/transferfile@0b4d2a1), `mpt-tui reference`, and a qin2023: run shown beside them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from engine.store import list_runs

from engine.results import export_document, reference_names, reference_table
from engine.results.reference import CSV_DIFF_TASK, load_reference
from mpt_tui.cli import main

from conftest import DEMO_DATA

COMMIT = "0b4d2a161577305b5cf98dcbfbd9148661072061"


# ---- the data against their CSVs, read by hand -------------------------------------------------


@pytest.mark.parametrize("setting, method, task, mean_row, std_row", [
    # allres_cls2cls/allres_pt/res-pt-cls2cls.csv, rows "superglue-cb,mean" and "superglue-cb,std"
    ("class_to_class", "pt", "superglue-cb", 0.5428571428571429, 0.07791937224739798),
    # same file, rows "emo,mean" / "emo,std"
    ("class_to_class", "pt", "emo", 0.25562134376015855, 0.13582391305809538),
    # allres_cls2cls/allres_maml/res-maml-cls2cls.csv, rows "anli,mean" / "anli,std"
    ("class_to_class", "maml", "anli", 0.2920127937537598, 0.030533690504302723),
    # allres_0531/allres_reptile_nopara2para.csv, rows "glue-mrpc,mean" / "glue-mrpc,std"
    ("non_paraphrase_to_paraphrase", "reptile", "glue-mrpc", 0.5235294117647059, 0.05022058225437532),
    # allres_0512/allres_maml_noqa2qa.csv, dream_32_{100,13,21,42,87}: .299 .307 .326 .309 .338
    ("non_qa_to_qa", "maml", "dream", 0.3158, 0.014161920773680396),
])
def test_reference_numbers_are_their_csv_rows_x100(setting, method, task, mean_row, std_row):
    cell = reference_table(setting).score(task, method)
    assert cell["mean"] == pytest.approx(100 * mean_row, abs=1e-4)
    assert cell["std"] == pytest.approx(100 * std_row, abs=1e-4)  # population std, as their std rows
    assert cell["n"] == 5


def test_reference_means_over_targets_and_what_is_left_out():
    cls = reference_table("class_to_class")
    assert {m: round(v, 2) for m, v in cls.means.items()} == {
        "pt": 55.19, "mtl": 52.10, "maml": 59.47, "fomaml": 58.81, "reptile": 48.15, "ft": 55.55}
    assert cls.files["pt"] == {"file": "allres_cls2cls/allres_pt/res-pt-cls2cls.csv", "commit": COMMIT}
    (left,) = cls.left_out  # the backup group that would count yelp_polarity twice (52.66 with it)
    assert left["task"] == "yelp_polarity_onlybs8_0318bak" and len(left["rows"]) == 5
    para = reference_table("qin2023:non_paraphrase_to_paraphrase")
    assert {m: round(para.means[m], 2) for m in ("pt", "maml", "reptile")} == {"pt": 46.98, "maml": 49.66,
                                                                                "reptile": 50.20}
    noqa = reference_table("non_qa_to_qa")  # their MAML file has 13 of the 16 targets
    assert noqa.counts["maml"] == 13 and noqa.counts["pt"] == 16
    assert len(noqa.common_tasks) == 13 and "quarel" not in noqa.common_tasks
    assert any("13 of 16" in n for n in noqa.notes)
    assert reference_table("non_class_to_class").files["pt"]["shared_with"] == "class_to_class"
    cnc = reference_table("class_to_non_class")  # their files hold 15 tasks; the setting's 6 are the table
    assert cnc.tasks == ["quoref", "wiki_split", "ai2_arc", "break-QDMR", "crawl_domain", "samsum"]
    assert cnc.n_file_tasks["pt"] == 15
    assert sorted(reference_names()) == sorted(load_reference()["settings"].keys() & set(reference_names()))
    assert len(reference_names()) == 7


# ---- mpt-tui reference ----------------------------------------------------------------------


def test_cli_reference_prints_the_authors_table(capsys):
    assert main(["reference", "class_to_class"]) == 0
    out = capsys.readouterr().out
    for text in ("qin2023:class_to_class", "PT", "MTL", "MAML", "FoMAML", "Reptile", "full FT",
                 "54.3 ± 7.8", "55.2", "52.1", "59.5", "58.8", "48.1",
                 "allres_cls2cls/allres_pt/res-pt-cls2cls.csv", "yelp_polarity_onlybs8_0318bak", "0b4d2a1615",
                 "train_classification_test_classification.json"):
        assert text in out, text
    assert main(["reference", "qin2023:non_qa_to_qa", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["setting"] == "qin2023:non_qa_to_qa" and doc["counts"]["maml"] == 13
    assert doc["scores"]["maml"]["dream"]["mean"] == pytest.approx(31.58)


def test_cli_reference_unknown_name_is_one_line_exit_2(capsys):
    assert main(["reference", "class2class"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "class2class" in err
    for name in reference_names():
        assert name in err


# ---- beside a run: exports from summaries, and a tiny headless run --------------------------------


def _summary(setting="qin2023:class_to_class"):
    agg = {"metric": "ACC", "n": 2}
    return {"run_id": "20250101-000000-abc", "name": "tiny", "model": "/tmp/tiny-llama", "setting": setting,
            "seeds": [1, 2], "splits": [],
            "tasks": {"pt": {"emo": {**agg, "mean": 0.30, "std": 0.01}, "amazon_polarity": {**agg, "mean": 0.80, "std": 0.02}},
                      "mtl": {"emo": {**agg, "mean": 0.20, "std": 0.01}}}}


def test_exports_carry_the_reported_block_and_the_difference():
    # PT: ours (30 + 80) / 2 = 55.0; reported over emo, amazon_polarity (25.5621 + 85.2427) / 2 = 55.4024
    md = export_document([_summary()], "markdown", table="tasks", metric_scale=100)
    assert "reported: emo" in md and "reported mean" in md and "ours − reported" in md
    assert "| 25.6 ± 13.6 |" in md and "-0.4 (2)" in md  # PT's reported emo; PT ours − reported
    assert "+4.4 (1)" not in md and "-4.4 (1)" in md  # MTL: 20.0 - 24.4 (their MTL emo) over 1 target
    assert "compared, not reproduced" in md and "T5-Large LM-adapted" in md
    tex = export_document([_summary()], "latex", table="tasks", metric_scale=100)
    assert "reported: emo" in tex and r"$\pm$" in tex
    rows = list(csv.DictReader(io.StringIO(export_document([_summary()], "csv", table="tasks"))))
    reported = {(r["method"], r["task"]): float(r["mean"]) for r in rows if r["run_id"] == "reported"}
    assert reported[("pt", "emo")] == pytest.approx(0.255621, abs=1e-6)  # csv keeps scale 1
    assert reported[("maml", "MEAN")] == pytest.approx(0.5947, abs=1e-4)
    diff = {r["method"]: float(r["mean"]) for r in rows if r["task"] == CSV_DIFF_TASK}
    assert diff["pt"] == pytest.approx(0.55 - 0.554024, abs=1e-5)
    doc = json.loads(export_document([_summary()], "json", table="tasks"))
    assert doc["reported"][0]["reference"]["setting"] == "qin2023:class_to_class"
    plain = export_document([_summary(setting="")], "markdown", table="tasks", metric_scale=100)
    assert "reported" not in plain and json.loads(export_document([_summary("")], "json"))


def _paper_data(root: Path, tasks: dict[str, str]) -> Path:
    """Demo tasks under the paper's names (as tests/test_protocol.py's paper_data)."""
    for old, new in tasks.items():
        folder = root / "tasks" / new
        folder.mkdir(parents=True)
        for path in (DEMO_DATA / "tasks" / old).glob("*.jsonl"):
            seed, split = path.stem.split("_")[-2:]
            (folder / f"{new}_16_{seed}_{split}.jsonl").write_text(path.read_text().replace(old, new))
        (root / "config" / "tasks").mkdir(parents=True, exist_ok=True)
        (root / "config" / "tasks" / f"{new}.json").write_text(
            (DEMO_DATA / "config" / "tasks" / f"{old}.json").read_text())
    return root


def test_a_qin2023_run_shows_the_reported_block(tmp_path, tiny_llama, capsys):
    data = _paper_data(tmp_path / "data", {"demo-emotion": "emo", "demo-product_sentiment": "amazon_polarity",
                                            "demo-spam": "sms_spam", "demo-movie_sentiment": "rotten_tomatoes"})
    preset = tmp_path / "ref.toml"
    preset.write_text(f"""
name = "ref"
[data]
dir = "{data}"
setting = "qin2023:class_to_class"
seeds = [1, 2]
[model]
name = "{tiny_llama}"
device = "cpu"
max_input_length = 40
[prompt]
length = 4
[downstream]
learning_rates = [0.3]
steps = 2
batch_size = 4
eval_every = 2
max_test_examples = 10
[upstream]
methods = ["mtl"]
steps = 2
""")
    runs = tmp_path / "runs"
    assert main(["--preset", str(preset), "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "reported: Qin et al. 2023, qin2023:class_to_class" in out
    assert "25.6 ± 13.6" in out and "85.2 ± 13.1" in out  # their PT on emo and amazon_polarity
    assert "ours − reported" in out and "compared, not reproduced" in out
    md = tmp_path / "t.md"
    assert main(["export", "--format", "markdown", "--runs-dir", str(runs), "--out", str(md)]) == 0
    text = md.read_text()
    assert "reported: amazon_polarity" in text and "ours − reported" in text
    (run_id,) = [r.id for r in list_runs(runs)]  # the runs root also holds .devices/
    capsys.readouterr()
    assert main(["show", run_id, "--runs-dir", str(runs), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["reported"]
    assert shown["setting"] == "qin2023:class_to_class"
    assert {d["method"] for d in shown["differences"]} == {"pt", "mtl"}
    assert all(sorted(d["tasks"]) == ["amazon_polarity", "emo"] for d in shown["differences"])
    assert main(["show", run_id, "--runs-dir", str(runs)]) == 0
    assert "reported: Qin et al. 2023" in capsys.readouterr().out
