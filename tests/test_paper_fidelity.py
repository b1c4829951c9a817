"""docs/paper-fidelity.md and engine/experiment/paper.py say the same, and every test the page names exists."""

from __future__ import annotations

import re

from engine.experiment.config import _toml_value
from engine.experiment.paper import ASPECTS, DEVIATIONS, PAPER_PRESETS

from conftest import REPO

PAGE = (REPO / "docs" / "paper-fidelity.md").read_text(encoding="utf-8")


def test_the_page_lists_every_aspect_with_its_keys_values_and_test():
    for aspect in ASPECTS:
        row = next((line for line in PAGE.splitlines() if line.startswith(f"| {aspect.name} |")), None)
        assert row is not None, f"no row for {aspect.name}"
        for key, value in aspect.keys.items():
            assert f"`{key} = {_toml_value(value)}`" in row, (aspect.name, key)
        assert aspect.authors in row
        if aspect.test:
            assert f"`{aspect.test}`" in row
    for deviation in DEVIATIONS:
        assert f"- {deviation}" in PAGE
    for name in PAPER_PRESETS:
        assert f"`{name}`" in PAGE


def test_every_named_test_exists():
    for aspect in ASPECTS:
        if not aspect.test:
            continue
        path, _, name = aspect.test.partition("::")
        source = (REPO / path).read_text(encoding="utf-8")
        if name:
            assert re.search(rf"^def {re.escape(name)}\(", source, re.M), aspect.test
