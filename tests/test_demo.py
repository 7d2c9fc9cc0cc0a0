"""`advrobust demo` end to end, as a newcomer runs it: the numbers a user expects, and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from advrobust.evaluation import EvalResult, load_results


def test_demo_shows_the_tradeoff_and_the_naive_vs_adaptive_gap(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "advrobust", "demo", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Robust accuracy under linf attacks" in done.stdout and "naive PGD" in done.stdout

    by_eps = {r.threat["eps"]: r for r in load_results(out / "results.json")}
    assert by_eps[0.1].clean.value >= 0.95  # a normally trained model is accurate...
    assert by_eps[0.3].robust.value <= 0.02  # ...and PGD at eps 0.3 breaks (nearly) everything
    assert by_eps[0.1].robust.value < by_eps[0.1].clean.value

    rows = {
        name: load_results(out / name / "eval-defense.json")[0]
        for name in ("standard", "fast-at", "jpeg-bitdepth")
    }
    standard, fast, jpeg = rows["standard"], rows["fast-at"], rows["jpeg-bitdepth"]
    # Adversarial training: clean accuracy about the same, robust accuracy up a lot (eps 0.1).
    assert fast.clean.value >= standard.clean.value - 0.05
    assert fast.robust.value >= standard.robust.value + 0.2
    # The adaptive column is the strongest evaluation there is: plain PGD, then the whole adaptive suite.
    for result in (standard, fast, jpeg):
        assert result.cascade and result.attacks[0].label == "pgd-40"
    assert [a.label for a in jpeg.attacks][1:] == [
        "bpda(apgd-100)",
        "bpda(apgd-t-dlr-100)",
        "bpda(fab-t-100)",
        "square",
    ]
    assert [a.label for a in fast.attacks][1:] == ["apgd-100", "apgd-t-dlr-100", "fab-t-100", "square"]
    # The transform defense looks robust to plain PGD and is not: BPDA brings it back down.
    naive = jpeg.attacks[0].accuracy.value
    assert naive >= jpeg.robust.value + 0.2
    assert jpeg.robust.value <= standard.robust.value + 0.1
    # Defensive distillation at T = 100: cross-entropy PGD is fooled by the saturated softmax, margin PGD not.
    distilled = load_results(out / "distilled" / "eval-defense.json")[0]
    margin = EvalResult.from_dict(distilled.meta["pgd_margin_loss"])
    assert margin.attacks[0].params["loss"] == "margin" and margin.n == distilled.n
    assert distilled.attacks[0].accuracy.value >= margin.robust.value + 0.2  # cross-entropy PGD first
    assert distilled.robust.value <= standard.robust.value + 0.1
    assert "with the margin loss" in done.stdout
    report = out / "report" / "report.html"
    assert report.exists() and str(report) in done.stdout.replace("\n", "")
    merged = json.loads((out / "report" / "report.json").read_text())
    assert merged["schema"] == "advrobust.report/1"
    # The four compared models, not the distilled model's teacher (trained, never evaluated).
    assert [m["name"] for m in merged["models"]] == ["standard", "fast-at", "jpeg-bitdepth", "distilled"]
