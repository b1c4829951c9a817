"""bench/scaling.py's paper-scale estimate (its Ray runs are the Ray tests' code path: tests/test_cluster.py)."""

from __future__ import annotations

import importlib.util

from conftest import REPO


def _scaling():
    spec = importlib.util.spec_from_file_location("scaling", REPO / "bench" / "scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_paper_estimate_follows_the_measured_gpu_grid_and_evens_out_the_groups():
    scaling = _scaling()
    report = scaling.paper_estimate(0.01, scaling.GPU_RESULTS)
    rows = {r["gpus"]: r for r in report["rows"]}
    paper = scaling.PAPER
    # one GPU: the setting's training sequences at the measured grouped speed (whichever group size)
    one_gpu_h = paper["jobs"] * paper["steps"] * paper["batch"] / report["measured_seq_per_s"] / 3600
    assert abs(rows[1]["balanced"]["hours"] - one_gpu_h) / one_gpu_h < 0.02
    for gpus, row in rows.items():
        assert row["balanced"]["hours"] <= row["probe"]["hours"]
        assert row["balanced"]["efficiency"] >= 0.9  # the goal, per GPU count
        assert row["balanced"]["group_size"] <= row["probe"]["group_size"]
    assert rows[8]["probe"]["efficiency"] < 0.9  # 34 groups on 8 GPUs: the last round leaves 6 idle
    table = scaling.table({"runs": [{"workers": 1, "grid_s": 2.0, "sequences_per_s": 10.0, "setup_s": 1.0,
                                     "overhead_per_unit_s": 0.01}], "paper": report})
    balanced = rows[8]["balanced"]
    assert "balanced groups" in table and f"{balanced['groups']} x {balanced['group_size']}" in table
