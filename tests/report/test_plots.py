"""Each plot draws the evaluation's numbers: the data read back from its artists equals the results."""

from __future__ import annotations

import copy
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from advrobust.report import Report, gather, plot_curves, plot_per_class, plot_tradeoff, plot_training
from advrobust.report.data import Headline, ModelEntry
from advrobust.report.plots import Plot


def _decoded(plot: Plot) -> np.ndarray[Any, Any]:
    image = np.asarray(Image.open(io.BytesIO(plot.png)).convert("RGB"))
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # not a blank canvas
    return image


def test_curve_from_results_is_clean_accuracy_then_robust_accuracy_per_eps(
    runs_json: dict[str, dict[str, Any]], report: Report
) -> None:
    plot = report.plots["curves"]
    assert plot is not None
    _decoded(plot)
    drawn = plot.data["linf"]["bitdepth"]
    results = runs_json["bitdepth"]["results"]
    assert drawn["source"] == "results"
    assert drawn["eps"] == [0.0] + [r["threat"]["eps"] for r in results]
    assert drawn["accuracy"] == [results[0]["clean"]["value"]] + [r["robust"]["value"] for r in results]
    assert drawn["ci_low"] == [results[0]["clean"]["ci_low"]] + [r["robust"]["ci_low"] for r in results]
    assert drawn["ci_high"] == [results[0]["clean"]["ci_high"]] + [r["robust"]["ci_high"] for r in results]


def test_curve_recorded_with_the_run_is_drawn_as_recorded_with_the_fixed_eps_points(
    runs_json: dict[str, dict[str, Any]], report: Report
) -> None:
    plot = report.plots["curves"]
    assert plot is not None
    drawn = plot.data["linf"]["standard"]
    curve = runs_json["standard"]["meta"]["curve"]
    assert drawn["source"] == "curve"
    assert drawn["eps"] == curve["eps"] and drawn["accuracy"] == curve["accuracy"]
    results = runs_json["standard"]["results"]
    assert drawn["points"]["eps"] == [r["threat"]["eps"] for r in results]
    assert drawn["points"]["accuracy"] == [r["robust"]["value"] for r in results]


def test_tradeoff_places_each_model_at_its_clean_and_robust_accuracy_sized_by_training_time(
    runs_json: dict[str, dict[str, Any]], report: Report
) -> None:
    plot = report.plots["tradeoff"]
    assert plot is not None
    _decoded(plot)
    for name in ("standard", "bitdepth"):
        at_headline = runs_json[name]["results"][-1]  # eps 0.2, the headline
        assert plot.data[name]["clean"] == at_headline["clean"]["value"]
        assert plot.data[name]["robust"] == at_headline["robust"]["value"]
    seconds = report.data.model("standard").training_seconds
    assert plot.data["standard"]["training_seconds"] == seconds


def test_tradeoff_marker_area_grows_with_training_time(report: Report) -> None:
    fast, slow = (ModelEntry.from_dict(copy.deepcopy(m.to_dict())) for m in report.data.models[:2])
    assert fast.card is not None and slow.card is not None
    fast.card["training"]["seconds"], slow.card["training"]["seconds"] = 1.0, 10.0
    fast.name, slow.name = "fast", "slow"
    plot = plot_tradeoff([fast, slow], Headline("linf", 0.2))
    assert plot is not None and plot.data["slow"]["size"] > 5 * plot.data["fast"]["size"]


def test_per_class_bars_are_the_per_sample_results_grouped_by_label(
    runs_json: dict[str, dict[str, Any]], report: Report
) -> None:
    plot = report.plots["per_class"]
    assert plot is not None
    _decoded(plot)
    run = runs_json["standard"]
    labels = np.array(run["meta"]["data"]["labels"])
    robust = np.array(run["results"][-1]["per_sample"]["robust_correct"])
    clean = np.array(run["results"][-1]["per_sample"]["clean_correct"])
    drawn = plot.data["standard"]
    assert drawn["robust"] == pytest.approx([robust[labels == k].mean() for k in range(10)], abs=1e-12)
    assert drawn["clean"] == pytest.approx([clean[labels == k].mean() for k in range(10)], abs=1e-12)


def test_training_curves_are_the_history(report: Report) -> None:
    plot = report.plots["training"]
    assert plot is not None
    _decoded(plot)
    history = report.data.model("standard").history
    assert history is not None
    drawn = plot.data["standard"]
    for key in ("train_accuracy", "val_accuracy", "loss", "lr"):
        assert drawn[key]["epoch"] == [h["epoch"] for h in history["history"]]
        assert drawn[key]["value"] == [h[key] for h in history["history"]]
    assert "bitdepth" not in plot.data


def test_nothing_to_draw_gives_no_plot(runs_root: Any) -> None:
    bare = ModelEntry(name="bare", key="bare")
    assert plot_curves([bare]) is None
    assert plot_training([bare]) is None
    assert plot_per_class([bare], Headline("linf", 0.1)) is None
    assert plot_tradeoff([bare], Headline("linf", 0.1)) is None
    # Without labels there is no per-class plot, but the other plots stay.
    entry = gather([runs_root]).model("bitdepth")
    entry.runs[0]["meta"]["data"].pop("labels")
    assert plot_per_class([entry], Headline("linf", 0.2)) is None
    assert plot_curves([entry]) is not None
