"""The verdict in plain words: which model to use, what it costs, and when not to trust a number."""

from __future__ import annotations

from typing import Any

from advrobust.evaluation.results import Accuracy, AttackResult, EvalResult
from advrobust.report import Headline, ModelEntry, robustness_card, summary_rows, verdict
from advrobust.report.summary import recommended

N = 1000
HEADLINE = Headline("linf", 0.3)


def _model(
    name: str,
    clean: int,
    attacks: dict[str, int],
    *,
    seconds: float | None = 10.0,
    objective: str = "standard",
    audit: str | None = None,
    note: str | None = None,
    meta: dict[str, Any] | None = None,
    violations: int = 0,
) -> ModelEntry:
    """A model evaluated at linf 0.3 on N samples: ``attacks`` maps name to correct count (each on all)."""
    records = [
        AttackResult(
            name.split("(")[0],
            {"steps": 40} if name == "pgd" else {},
            Accuracy(c, N),
            N,
            N - c,
            1.0,
            violations=violations,
        )
        for name, c in attacks.items()
    ]
    robust = min(attacks.values())
    result = EvalResult(
        threat={"norm": "linf", "eps": 0.3, "bounds": [0.0, 1.0]},
        clean=Accuracy(clean, N),
        robust=Accuracy(robust, N),
        attacks=records,
        clean_correct=[i < clean for i in range(N)],
        robust_correct=[i < robust for i in range(N)],
        broken_by=[-1 if i < robust else (0 if i < clean else -2) for i in range(N)],
        seconds=1.0,
        clean_seconds=0.1,
        seed=0,
        cascade=False,
        meta=meta if meta is not None else ({"upper_bound": True, "adaptive_note": note} if note else {}),
    )
    card: dict[str, Any] = {"arch": "small-cnn", "training": {"objective": {"name": objective}}}
    if seconds is not None:
        card["training"]["seconds"] = seconds
    audits = [{"threat": {"norm": "linf", "eps": 0.3}, "status": audit, "checks": []}] if audit else []
    run = {"schema": "advrobust.run/1", "meta": {}, "results": [result.to_dict()]}
    return ModelEntry(name=name, key=name, card=card, runs=[run], audits=audits)


def test_the_most_robust_trusted_model_is_recommended_with_its_costs() -> None:
    models = [
        _model("standard", 980, {"pgd": 0}, seconds=10.0, audit="pass"),
        _model("pgd-at", 950, {"pgd": 700, "apgd": 650}, seconds=80.0, objective="pgd-at", audit="pass"),
    ]
    rows = summary_rows(models, HEADLINE)
    best = recommended(rows)
    assert best is not None and best.name == "pgd-at"
    assert best.robust == Accuracy(650, N) and best.clean == Accuracy(950, N)
    (line,) = verdict(models, HEADLINE)
    assert line == (
        "Use pgd-at against linf eps 0.3 attacks: 65.0% robust accuracy vs 0.0% for standard. It costs 3.0 "
        "points of clean accuracy (95.0% vs 98.0%) and 8.0x the training time (80 s vs 10 s)."
    )


def test_a_model_that_failed_its_audit_is_not_recommended_however_robust_it_looks() -> None:
    models = [
        _model("standard", 980, {"pgd": 0}, audit="pass"),
        _model("pgd-at", 950, {"pgd": 600, "apgd": 550}, objective="pgd-at", audit="pass"),
        _model("masked", 980, {"pgd": 900}, audit="fail"),
    ]
    lines = verdict(models, HEADLINE)
    assert lines[0].startswith(
        "masked shows the highest robust accuracy (90.0%) but failed the gradient-masking"
    )
    assert lines[1].startswith("Use pgd-at against linf eps 0.3 attacks")


def test_a_number_from_attacks_that_ignore_the_defense_is_not_recommended() -> None:
    note = "the model declares a non-differentiable part but pgd-40 ran without BPDA: ..."
    models = [
        _model("standard", 980, {"pgd": 100}, audit="pass"),
        _model("pgd-at", 950, {"pgd": 600, "apgd": 550}, objective="pgd-at", audit="pass"),
        _model("jpeg", 975, {"pgd": 950}, note=note),
    ]
    rows = {r.name: r for r in summary_rows(models, HEADLINE)}
    assert rows["jpeg"].caveat == note and rows["pgd-at"].caveat is None
    lines = verdict(models, HEADLINE)
    assert lines[0].startswith(
        f"jpeg shows the highest robust accuracy (95.0%) but its number comes with a caveat ({note})"
    )
    assert lines[1].startswith("Use pgd-at against linf eps 0.3 attacks")
    # Alone, it is still reported, with the warning.
    alone = verdict([_model("jpeg", 975, {"pgd": 950}, note=note)], HEADLINE)
    assert f"Do not trust jpeg's number yet: {note}." in alone


def test_a_defense_that_only_beats_the_naive_attack_is_called_out() -> None:
    models = [
        _model("standard", 980, {"pgd": 100}, audit="pass"),
        _model("jpeg", 975, {"pgd": 900, "bpda(apgd)": 120}, audit="pass"),
    ]
    lines = verdict(models, HEADLINE)
    assert any(
        line.startswith(
            "jpeg looks robust to pgd-40 (90.0%) but adaptive attacks (BPDA/EOT) bring it to 12.0%"
        )
        for line in lines
    )


def test_overlapping_intervals_and_missing_audits_and_weak_attacks_are_said() -> None:
    models = [_model("a", 980, {"pgd": 500}), _model("b", 980, {"pgd": 510})]
    lines = verdict(models, HEADLINE)
    assert "a is within the 95% confidence interval of b (n=1000)" in lines[1]
    assert "b has not been audited" in lines[2]
    assert "evaluated with pgd-40 only" in lines[3]


def test_one_model_gets_the_next_step() -> None:
    (line, *_) = verdict([_model("standard", 980, {"pgd": 0})], HEADLINE)
    assert line.startswith(
        "standard keeps 0.0% accuracy under linf eps 0.3 attacks (clean 98.0%, trained in 10 s)"
    )
    assert "advrobust train --defense pgd-at --norm linf --eps 0.3" in line
    assert verdict([], None)[0].startswith("No evaluation results yet")


def test_a_training_warning_on_the_card_is_said() -> None:
    failed = _model("fast-at-0.5", 900, {"pgd": 0}, objective="fast-at", audit="pass")
    assert failed.card is not None
    failed.card["training"]["warnings"] = ["the model is not robust: ..."]
    models = [_model("standard", 980, {"pgd": 0}, audit="pass"), failed]
    lines = verdict(models, HEADLINE)
    assert lines[-1] == "fast-at-0.5's training warned: the model is not robust: ...."
    assert verdict(models, None)[-1] == lines[-1]  # also before anything was evaluated
    assert not any("warned" in line for line in verdict(models[:1], HEADLINE))


def test_black_box_bounds_saturated_cross_entropy_and_violations_are_caveats_in_the_verdict_and_card() -> (
    None
):
    access = (
        "black-box (score) evaluation: only gradient-free attacks ran, so robust accuracy is an upper bound"
    )
    saturation = "the model's softmax is saturated (p > 1 - 1e-6) on 90% of the first batch"
    models = [
        _model("pgd-at", 950, {"pgd": 600, "apgd": 550}, objective="pgd-at", audit="pass"),
        _model(
            "square-only",
            950,
            {"square": 890},
            meta={"access": "score", "upper_bound": True, "access_note": access},
        ),
        _model("distilled", 950, {"apgd": 900}, meta={"upper_bound": True, "saturation_note": saturation}),
        _model("outside", 950, {"apgd": 880}, violations=3),
    ]
    rows = {r.name: r for r in summary_rows(models, HEADLINE)}
    assert rows["square-only"].caveat == access
    assert rows["distilled"].caveat == saturation
    assert rows["outside"].caveat == "3 returned point(s) lay outside the threat model"
    best = recommended(list(rows.values()))
    assert best is not None and best.name == "pgd-at"
    lines = verdict(models, HEADLINE)
    assert lines[0].startswith(
        f"distilled shows the highest robust accuracy (90.0%) but its number comes with a caveat ({saturation})"
    )
    alone = verdict([models[1]], HEADLINE)
    assert f"Do not trust square-only's number yet: {access}." in alone
    card = robustness_card(models[1], HEADLINE)
    assert "(upper bound: see the caveats)" in card and f"- linf eps 0.3: {access}" in card
    assert "Caveats" not in robustness_card(models[0], HEADLINE)
    # Points outside the threat model: a caveat, but not one that makes the number an upper bound.
    outside = robustness_card(models[3], HEADLINE)
    assert "(see the caveats)" in outside and "upper bound: see" not in outside


def test_the_html_report_shows_the_caveats_beside_its_tables() -> None:
    from advrobust.report import html

    access = (
        "black-box (score) evaluation: only gradient-free attacks ran, so robust accuracy is an upper bound"
    )
    models = [
        _model("pgd-at", 950, {"pgd": 600}, objective="pgd-at", audit="pass"),
        _model(
            "square-only",
            950,
            {"square": 890},
            meta={"access": "score", "upper_bound": True, "access_note": access},
        ),
    ]
    summary = html._summary(models, HEADLINE)
    assert f'<p class="note caveat">square-only: {access}</p>' in summary
    results = html._results(models)
    assert f"<li>linf eps 0.3: {access}</li>" in results and results.count("<li>") == 1
