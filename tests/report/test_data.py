"""Gathering runs into a report: models found in folders, results attached, merging, the headline threat."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from advrobust.data import load_dataset
from advrobust.errors import DataError
from advrobust.report import Report, build_report, gather, headline_threat, load_report, per_class
from advrobust.report.data import ModelEntry
from advrobust.report.examples import fill_labels


def test_a_folder_gives_each_model_its_card_history_runs_and_audit(runs_root: Path) -> None:
    data = gather([runs_root])
    names = sorted(m.name for m in data.models)
    assert names == ["bitdepth", "standard"]
    standard, bitdepth = data.model("standard"), data.model("bitdepth")
    assert standard.key != bitdepth.key
    assert standard.card is not None and standard.card["arch"] == "small-cnn"
    assert standard.history is not None and len(standard.history["history"]) == 2
    assert bitdepth.history is None  # a transform defense trains nothing
    assert len(standard.runs) == 1 and len(bitdepth.runs) == 1
    assert standard.audits == [] and len(bitdepth.audits) == 1
    assert [float(e) for e in standard.by_eps("linf")] == [0.1, 0.2]
    assert standard.curves() and standard.curves()[0]["norm"] == "linf"


def test_eval_json_records_the_labels_of_its_samples(runs_json: dict[str, dict[str, Any]]) -> None:
    labels = runs_json["standard"]["meta"]["data"]["labels"]
    assert labels == load_dataset("mnist-mini", split="test").take(100).labels.tolist()


def test_labels_missing_from_an_old_run_are_reloaded_from_the_named_data(
    runs_root: Path, tmp_path: Path
) -> None:
    shutil.copytree(runs_root / "standard", tmp_path / "standard")
    path = tmp_path / "standard" / "eval.json"
    run = json.loads(path.read_text())
    expected = run["meta"]["data"].pop("labels")
    path.write_text(json.dumps(run))
    entry = gather([tmp_path]).model("standard")
    assert entry.evaluations()[0].labels is None
    fill_labels(entry)
    assert entry.runs[0]["meta"]["data"]["labels"] == expected


def test_per_class_accuracy_adds_up_to_the_totals(runs_root: Path) -> None:
    entry = gather([runs_root]).model("standard")
    ev = entry.by_eps("linf")[0.1]
    classes = per_class(ev, entry.classes)
    assert classes is not None and [c.name for c in classes] == [str(k) for k in range(10)]
    assert sum(c.clean.correct for c in classes) == ev.result.clean.correct
    assert sum(c.robust.correct for c in classes) == ev.result.robust.correct
    assert sum(c.robust.total for c in classes) == ev.result.n


def test_headline_is_the_largest_eps_every_model_shares_or_the_one_given(runs_root: Path) -> None:
    models = gather([runs_root]).models
    headline = headline_threat(models)
    assert headline is not None and (headline.norm, headline.eps) == ("linf", 0.2)
    given = headline_threat(models, eps=0.1)
    assert given is not None and given.eps == 0.1


def test_results_find_their_model_by_the_run_directory_they_name(runs_root: Path) -> None:
    # The eval JSON alone, given explicitly: meta.model.path leads back to the run directory and its card.
    data = gather([runs_root / "bitdepth" / "eval.json"])
    (entry,) = data.models
    assert entry.name == "bitdepth" and entry.card is not None
    assert entry.card["training"]["defense"]["transforms"][0]["name"] == "bitdepth"


def test_a_report_json_merges_with_more_runs_without_duplicates(
    report: Report, runs_root: Path, tmp_path: Path
) -> None:
    merged = build_report([report.json_path, runs_root], tmp_path, examples=0)
    assert sorted(m.name for m in merged.data.models) == ["bitdepth", "standard"]
    assert all(len(m.runs) == 1 for m in merged.data.models)
    # The merged JSON alone rebuilds the same report, gallery included, where the run directories are gone.
    moved = json.loads(report.json_path.read_text())
    for model in moved["models"]:
        model["path"] = str(tmp_path / "gone" / model["name"])
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    alone = build_report([tmp_path / "moved.json"], tmp_path / "again")
    assert [m.examples for m in alone.data.models] == [m.examples for m in report.data.models]
    assert load_report(alone.json_path).to_dict()["models"] == alone.data.to_dict()["models"]


def test_inputs_that_are_not_advrobust_files_are_one_line_errors(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"schema": "something/1"}')
    with pytest.raises(DataError, match="not a file advrobust reports on"):
        gather([other])
    with pytest.raises(DataError, match="no file at"):
        gather([tmp_path / "missing.json"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no run directory"):
        gather([tmp_path / "empty"])


def test_a_distilled_model_costs_its_teacher_training_too() -> None:
    card = {"training": {"seconds": 2.0, "teacher": {"path": "t", "seconds": 1.5, "trained_here": True}}}
    assert ModelEntry(name="distilled", key="d", card=card).training_seconds == 3.5
    assert ModelEntry(name="plain", key="p", card={"training": {"seconds": 2.0}}).training_seconds == 2.0
    assert (
        ModelEntry(name="old", key="o", card={"training": {"teacher": {"seconds": 1.0}}}).training_seconds
        is None
    )
