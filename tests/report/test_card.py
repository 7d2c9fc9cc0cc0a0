"""The Markdown robustness card holds the evaluation's numbers and the model's provenance."""

from __future__ import annotations

from typing import Any

from advrobust.report import Report, robustness_card


def test_card_has_a_row_per_eps_with_the_json_numbers(
    report: Report, runs_json: dict[str, dict[str, Any]]
) -> None:
    entry = report.data.model("standard")
    card = robustness_card(entry, report.headline)
    assert card.startswith("# Robustness card: standard\n")
    for result in runs_json["standard"]["results"]:
        robust = result["robust"]
        cell = f"{100 * robust['value']:.1f}% [{100 * robust['ci_low']:.1f}, {100 * robust['ci_high']:.1f}]"
        row = next(
            line for line in card.splitlines() if line.startswith(f"| linf | {result['threat']['eps']:g}")
        )
        assert cell in row
        fgsm, pgd = (a["accuracy"]["value"] for a in result["attacks"])
        assert f"fgsm {100 * fgsm:.1f}%, pgd-5 {100 * pgd:.1f}%" in row
    assert "(headline)" in card
    assert f"`{entry.weights_sha256}`" in card
    assert "Not audited" in card


def test_card_of_an_audited_defense_gives_the_audit_verdict(report: Report) -> None:
    entry = report.data.model("bitdepth")
    card = robustness_card(entry, report.headline)
    assert "bitdepth(bits=2)" in card
    assert entry.audits[0]["verdict"] in card


def test_build_report_writes_one_card_per_model(report: Report) -> None:
    assert sorted(p.name for p in report.card_paths) == ["bitdepth.md", "standard.md"]
    for path in report.card_paths:
        assert path.read_text(encoding="utf-8") == robustness_card(
            report.data.model(path.stem), report.headline
        )
