"""Write presets/reference/qin2023.json: the authors' own numbers, read from their released result files.

Qin et al., "Learning to Initialize: Can Meta Learning Improve Cross-task Generalization in Prompt
Tuning?" (ACL 2023); repository github.com/qcwthu/transferfile, branch master. Their result CSVs have the
header `,task,entry,dev_performance,test_performance`: one row per few-shot split (`<task>_<k>_<seed>`),
then a `mean` and a `std` row per task, then a blank line. This script recomputes mean and population std
of test_performance over each task's split rows (x100), checks them against the files' own mean/std rows,
and records where every number came from.

    python scripts/reference_numbers.py PATH [--commit REV] [--out presets/reference/qin2023.json]

PATH is a checkout or a bare git directory of their repository; REV (default: master) is read with
`git show REV:FILE`, so a checkout's working tree is never read and the commit is always recorded.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

REPOSITORY = "qcwthu/transferfile"
PAPER = ("Qin, Joty, Li, Zhao, \"Learning to Initialize: Can Meta Learning Improve Cross-task Generalization "
         "in Prompt Tuning?\", ACL 2023")
MODEL = "T5-Large, LM-adapted (google/t5-large-lm-adapt), frozen, 100 prompt tokens"
DATA = ("CrossFit few-shot splits, seeds 13, 21, 42, 87, 100; 16 shots for classification, NLI and paraphrase "
        "targets, 32 for QA and most non-classification targets (each target's `k`, read from its split names)")
METHODS = ("pt", "mtl", "maml", "fomaml", "reptile")  # this project's method names
FULL_FINETUNING = "ft"

# setting -> method -> file in their repository. PT does not depend on the source tasks, so a setting
# whose targets match another's shares its PT (and full fine-tuning) file: said in `shared`.
SETTINGS: dict[str, dict] = {
    "class_to_class": {
        "files": {"pt": "allres_cls2cls/allres_pt/res-pt-cls2cls.csv",
                  "mtl": "allres_cls2cls/allres_mul/pt_res-multi-cls2cls.csv",
                  "maml": "allres_cls2cls/allres_maml/res-maml-cls2cls.csv",
                  "fomaml": "allres_cls2cls/allres_fomaml/pt_res-fomaml-cls2cls.csv",
                  "reptile": "allres_cls2cls/allres_rep/res-reptile-cls2cls.csv",
                  "ft": "allres_cls2cls/allres_ft/pt_res_ft-cls2cls.csv"},
    },
    "non_class_to_class": {
        "files": {"pt": "allres_cls2cls/allres_pt/res-pt-cls2cls.csv",
                  "mtl": "allres_nocls2cls/res_multi/pt_res-multi-nocls2cls.csv",
                  "maml": "allres_nocls2cls/res_maml/res-maml-nocls2cls.csv",
                  "fomaml": "allres_nocls2cls/res_fomaml/pt_res-fomaml-nocls2cls.csv",
                  "reptile": "allres_nocls2cls/res_reptile/res-reptile-nocls2cls.csv",
                  "ft": "allres_cls2cls/allres_ft/pt_res_ft-cls2cls.csv"},
        "shared": {"pt": "class_to_class", "ft": "class_to_class"},
    },
    "class_to_non_class": {
        "files": {"pt": "allres_0512/allres_pt_nocls.csv",
                  "mtl": "allres_0512/allres_multi_cls2nocls.csv",
                  "maml": "allres_0512/allres_maml_cls2nocls.csv",
                  "fomaml": "allres_0512/allres_fomaml_cls2nocls.csv",
                  "reptile": "allres_0512/allres_reptile_cls2nocls.csv",
                  "ft": "allres_0512/allres_ft_nocls.csv"},
    },
    "qa_to_qa": {
        "files": {"pt": "allres_0512/allres_pt_qa.csv",
                  "mtl": "allres_0512/allres_multi_qa2qa.csv",
                  "maml": "allres_0512/allres_maml_qa2qa.csv",
                  "fomaml": "allres_0512/allres_fomaml_qa2qa.csv",
                  "reptile": "allres_0512/allres_reptile_qa2qa.csv",
                  "ft": "allres_0512/allres_ft_qa.csv"},
    },
    "non_qa_to_qa": {
        "files": {"pt": "allres_0512/allres_pt_qa.csv",
                  "mtl": "allres_0512/allres_multi_noqa2qa.csv",
                  "maml": "allres_0512/allres_maml_noqa2qa.csv",
                  "fomaml": "allres_0512/allres_fomaml_noqa2qa.csv",
                  "reptile": "allres_0512/allres_reptile_noqa2qa.csv",
                  "ft": "allres_0512/allres_ft_qa.csv"},
        "shared": {"pt": "qa_to_qa", "ft": "qa_to_qa"},
    },
    "non_nli_to_nli": {
        "files": {"pt": "allres_0512/allres_pt_nli.csv",
                  "mtl": "allres_0512/allres_multi_nonli2nli.csv",
                  "maml": "allres_0512/allres_maml_nonli2nli.csv",
                  "fomaml": "allres_0512/allres_fomaml_nonli2nli.csv",
                  "reptile": "allres_0512/allres_reptile_nonli2nli.csv",
                  "ft": "allres_0512/allres_ft_nli.csv"},
    },
    "non_paraphrase_to_paraphrase": {
        "files": {"pt": "allres_0531/allres_pt_para.csv",
                  "mtl": "allres_0531/allres_multi_nopara2para.csv",
                  "maml": "allres_0531/allres_maml_nopara2para.csv",
                  "fomaml": "allres_0531/allres_fomaml_nopara2para.csv",
                  "reptile": "allres_0531/allres_reptile_nopara2para.csv",
                  "ft": "allres_0531/allres_ft_para.csv"},
    },
    # Settings in their result files that this project has no paper-settings file for (no task lists
    # to run them); kept so the numbers are all in one place.
    "both_to_class": {
        "files": {"pt": "allres_cls2cls/allres_pt/res-pt-cls2cls.csv",
                  "mtl": "allres_both2cls/pt_res-multi-both2cls.csv",
                  "maml": "allres_both2cls/res-maml-both2cls.csv",
                  "fomaml": "allres_both2cls/pt_res-fomaml-both2cls.csv",
                  "reptile": "allres_both2cls/res-reptile-both2cls.csv",
                  "ft": "allres_cls2cls/allres_ft/pt_res_ft-cls2cls.csv"},
        "shared": {"pt": "class_to_class", "ft": "class_to_class"},
    },
    "non_class_to_non_class": {
        "files": {"pt": "allres_0512/allres_pt_nocls.csv",
                  "mtl": "allres_0512/allres_multi_nocls2nocls.csv",
                  "maml": "allres_0512/allres_maml_nocls2nocls.csv",
                  "fomaml": "allres_0512/allres_fomaml_nocls2nocls.csv",
                  "reptile": "allres_0512/allres_reptile_nocls2nocls.csv",
                  "ft": "allres_0512/allres_ft_nocls.csv"},
        "shared": {"pt": "class_to_non_class", "ft": "class_to_non_class"},
    },
    "both_to_non_class": {
        "files": {"pt": "allres_0512/allres_pt_nocls.csv",
                  "mtl": "allres_0512/allres_multi_both2nocls.csv",
                  "maml": "allres_0512/allres_maml_both2nocls.csv",
                  "fomaml": "allres_0512/allres_fomaml_both2nocls.csv",
                  "reptile": "allres_0512/allres_reptile_both2nocls.csv",
                  "ft": "allres_0512/allres_ft_nocls.csv"},
        "shared": {"pt": "class_to_non_class", "ft": "class_to_non_class"},
    },
}

# file -> task group -> why it is left out. Everything else in a listed file is taken.
LEAVE_OUT = {
    "allres_cls2cls/allres_pt/res-pt-cls2cls.csv": {
        "yelp_polarity_onlybs8_0318bak": "a backup run of yelp_polarity (batch size 8 only, 18 March) kept "
                                         "beside the real yelp_polarity group; its split rows are named "
                                         "yelp_polarity_16_* too, so it would count yelp_polarity twice",
    },
}


def git_show(repo: Path, rev: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", str(git_dir(repo)), "show", f"{rev}:{path}"],
                          check=True, capture_output=True, text=True).stdout


def git_dir(repo: Path) -> Path:
    return repo / ".git" if (repo / ".git").exists() else repo


def resolve(repo: Path, rev: str) -> str:
    return subprocess.run(["git", "--git-dir", str(git_dir(repo)), "rev-parse", f"{rev}^{{commit}}"],
                          check=True, capture_output=True, text=True).stdout.strip()


def read_groups(text: str) -> dict[str, dict]:
    """task group -> {"splits": {entry: test}, "mean": file's mean row, "std": file's std row}."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0] != ["", "task", "entry", "dev_performance", "test_performance"]:
        raise ValueError(f"unexpected header {rows[:1]}")
    groups: dict[str, dict] = {}
    for row in rows[1:]:
        if len(row) < 5 or not row[1]:
            continue
        group = groups.setdefault(row[1], {"splits": {}, "mean": None, "std": None})
        if row[2] in ("mean", "std"):
            group[row[2]] = float(row[4])
        else:
            group["splits"][row[2]] = float(row[4])
    return groups


def stats(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def build(repo: Path, rev: str) -> dict:
    commit = resolve(repo, rev)
    left_out: list[dict] = []
    checks: list[str] = []
    parsed: dict[str, dict] = {}

    def targets_of(path: str) -> dict[str, dict]:
        if path in parsed:
            return parsed[path]
        out: dict[str, dict] = {}
        for task, group in read_groups(git_show(repo, commit, path)).items():
            why = LEAVE_OUT.get(path, {}).get(task)
            if why:
                left_out.append({"file": path, "task": task, "rows": sorted(group["splits"]),
                                 "why": why})
                continue
            values = list(group["splits"].values())
            mean, std = stats(values)
            if group["mean"] is not None and abs(group["mean"] - mean) > 1e-9:
                checks.append(f"{path} {task}: file's mean row {group['mean']} != mean of its splits {mean}")
            if group["std"] is not None and abs(group["std"] - std) > 1e-9:
                checks.append(f"{path} {task}: file's std row {group['std']} != population std {std}")
            ks = sorted({int(m.group(1)) for m in (re.search(r"_(\d+)_(\d+)$", e) for e in group["splits"]) if m})
            out[task] = {"mean": round(100 * mean, 4), "std": round(100 * std, 4), "n": len(values),
                         "k": ks[0] if len(ks) == 1 else ks}
        parsed[path] = out
        return out

    settings = {}
    for name, spec in SETTINGS.items():
        methods = {}
        for method, path in spec["files"].items():
            entry = {"file": path, "commit": commit, "targets": targets_of(path)}
            if method in spec.get("shared", {}):
                entry["shared_with"] = spec["shared"][method]
            methods[method] = entry
        settings[name] = {"methods": {m: methods[m] for m in METHODS if m in methods},
                          "full_finetuning": methods.get(FULL_FINETUNING)}
    return {
        "paper": PAPER, "repository": REPOSITORY, "commit": commit, "model": MODEL, "data": DATA,
        "metric": "test_performance of their CSVs x 100 (CrossFit's per-task metric); mean and population "
                  "std over a task's splits",
        "made_by": "scripts/reference_numbers.py",
        "settings": settings, "left_out": left_out, "file_checks": checks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="a checkout or bare git directory of qcwthu/transferfile")
    parser.add_argument("--commit", default="master")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent.parent / "presets" / "reference" / "qin2023.json")
    args = parser.parse_args(argv)
    doc = build(args.repo, args.commit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out} from {REPOSITORY}@{doc['commit'][:10]}: {len(doc['settings'])} settings, "
          f"{len(doc['left_out'])} groups left out, {len(doc['file_checks'])} file-row mismatches")
    for line in doc["file_checks"]:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
