"""Reports: the diagnosis JSON/Markdown/PNG, mean ± spread, and the before/after comparison."""

from __future__ import annotations

import json

import pytest
from helpers import VOCAB
from PIL import Image

from halluremedy.diagnose import (
    Diagnosis,
    analyse,
    write_comparison,
    write_report,
)


@pytest.fixture
def diagnosis(fake_run) -> Diagnosis:
    return analyse(fake_run, VOCAB, {"model": "fake", "dataset": "d:diag", "backend": "annotations"})


def test_write_report_writes_json_markdown_and_chart(diagnosis, tmp_path):
    paths = write_report(diagnosis, tmp_path / "r")
    assert Diagnosis.load(paths["json"]).to_dict() == diagnosis.to_dict()
    text = paths["markdown"].read_text()
    assert "| moon |" in text and "star -> moon" in text and "worst_classes.png" in text
    assert "| color | circle | red | blue | 1 | caption |" in text
    with Image.open(paths["chart"]) as im:
        assert im.size[0] > 300 and im.size[1] > 100


def test_write_comparison_tables_arms_and_paired_differences(diagnosis, tmp_path):
    rows = {"base": [{"CHAIR_i/greedy": 0.5}],
            "a": [{"CHAIR_i/greedy": 0.2}, {"CHAIR_i/greedy": 0.4}],
            "b": [{"CHAIR_i/greedy": 0.3}, {"CHAIR_i/greedy": 0.6}]}
    after = {"a": [diagnosis, diagnosis], "b": [diagnosis, diagnosis]}
    paths = write_comparison(diagnosis, after, rows, tmp_path, comparisons=[("a", "b"), ("a", "missing")],
                             columns=["CHAIR_i/greedy"], notes=["hello"], extra={"config": {"x": 1}})
    text = paths["markdown"].read_text()
    assert "| a | 2 | 0.300 ± 0.141 |" in text and "| base | 1 | 0.500 |" in text
    assert "| a - b | -0.150 ± 0.071 |" in text and "hello" in text
    results = json.loads(paths["json"].read_text())
    assert results["held_out"]["b"]["CHAIR_i/greedy"]["values"] == [0.3, 0.6]
    assert list(results["paired_differences"]) == ["a - b"] and results["config"] == {"x": 1}
    assert results["rediagnosis"]["base"]["diag/hallucination/moon"]["mean"] == pytest.approx(
        diagnosis.classes["moon"].hallucination_rate)
    assert paths["chart"].stat().st_size > 1000


def test_write_comparison_tables_classes_over_seeds(diagnosis, tmp_path):
    rows = {"base": [{"CHAIR_s/greedy": 0.5}], "a": [{"CHAIR_s/greedy": 0.4}]}
    classes = {"base": [{"class/moon/hallucinated": 0.1, "class/star/hallucinated": 0.3, "class/star/recall": 0.5}],
               "a": [{"class/moon/hallucinated": 0.2, "class/star/hallucinated": 0.0, "class/star/recall": 0.25},
                     {"class/moon/hallucinated": 0.4, "class/star/hallucinated": 0.1, "class/star/recall": 0.75}]}
    paths = write_comparison(diagnosis, {}, rows, tmp_path, class_rows=classes, class_label="t:test")
    text = paths["markdown"].read_text()
    # classes ordered by the base's hallucinated mentions (star first); cells are means over seeds
    assert "## By class on t:test: hallucinated mentions per 1000 captions (mean over seeds)" in text
    assert "| arm | star | moon |" in text and "| base | 300 | 100 |" in text and "| a | 50 | 300 |" in text
    assert "| base | 0.50 |  |" in text and "| a | 0.50 |  |" in text
    results = json.loads(paths["json"].read_text())
    assert results["by_class"]["split"] == "t:test"
    assert results["by_class"]["arms"]["a"]["class/moon/hallucinated"]["values"] == [0.2, 0.4]
    assert "By class" not in write_comparison(diagnosis, {}, rows, tmp_path / "none")["markdown"].read_text()
