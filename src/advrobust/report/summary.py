"""The at-a-glance comparison: one row per model at the headline threat, and a verdict in plain words."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from advrobust.evaluation.results import Accuracy, attack_label
from advrobust.report.data import Headline, ModelEntry, defense_label

_STRONG_ATTACKS = ("apgd", "square", "fab", "cw", "bpda", "eot")


@dataclass(frozen=True)
class SummaryRow:
    """One model's headline numbers."""

    name: str
    defense: str
    clean: Accuracy | None
    robust: Accuracy | None
    training_seconds: float | None
    attacks: str
    audit: str | None
    caveat: str | None = None
    """Set when the evaluation's gradient attacks ignored the model's non-differentiable or random parts."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "defense": self.defense,
            "clean": self.clean.to_dict() if self.clean else None,
            "robust": self.robust.to_dict() if self.robust else None,
            "training_seconds": self.training_seconds,
            "attacks": self.attacks,
            "audit": self.audit,
            "caveat": self.caveat,
        }


def audit_status(entry: ModelEntry, headline: Headline | None = None) -> str | None:
    """The worst status among the model's audits (those at the headline threat when there are any)."""
    audits = entry.audits
    if headline is not None:
        matching = [
            a
            for a in audits
            if a.get("threat", {}).get("norm") == headline.norm
            and a.get("threat", {}).get("eps") == headline.eps
        ]
        audits = matching or audits
    statuses = [str(a.get("status")) for a in audits]
    for status in ("fail", "warn", "pass"):
        if status in statuses:
            return status
    return None


def summary_rows(models: Sequence[ModelEntry], headline: Headline | None) -> list[SummaryRow]:
    """A row per model: clean accuracy and robust accuracy at the headline threat, cost, attacks, audit."""
    rows = []
    for entry in models:
        ev = entry.by_eps(headline.norm).get(headline.eps) if headline else None
        evaluations = entry.evaluations()
        clean = ev.result.clean if ev else (evaluations[0].result.clean if evaluations else None)
        rows.append(
            SummaryRow(
                name=entry.name,
                defense=defense_label(entry.card),
                clean=clean,
                robust=ev.result.robust if ev else None,
                training_seconds=entry.training_seconds,
                attacks=ev.attack_label if ev else "-",
                audit=audit_status(entry, headline),
                caveat="; ".join(ev.result.caveats) or None if ev else None,
            )
        )
    return rows


def _named(row: SummaryRow) -> str:
    """``name (defense)``, without repeating a defense that the name already says."""
    return row.name if row.defense.split(" ")[0] in row.name else f"{row.name} ({row.defense})"


def _pct(acc: Accuracy) -> str:
    return f"{100 * acc.value:.1f}%"


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "unknown time"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def best_row(rows: Sequence[SummaryRow]) -> SummaryRow | None:
    """The most robust model (ties: the more accurate one clean)."""
    scored = [r for r in rows if r.robust is not None and r.clean is not None]
    if not scored:
        return None
    return max(scored, key=lambda r: (r.robust.value if r.robust else 0.0, r.clean.value if r.clean else 0.0))


def recommended(rows: Sequence[SummaryRow]) -> SummaryRow | None:
    """The most robust model among those whose audit did not fail and whose number came from attacks that
    adapt to it (all of them when none qualifies)."""
    return best_row([r for r in rows if r.audit != "fail" and r.caveat is None]) or best_row(rows)


def _masking_lines(models: Sequence[ModelEntry], headline: Headline) -> list[str]:
    """Models that a non-adaptive attack overrates by 15 points or more where BPDA/EOT was run."""
    lines = []
    for entry in models:
        ev = entry.by_eps(headline.norm).get(headline.eps)
        if ev is None:
            continue
        result = ev.result
        own = result.attacks if not result.cascade else result.attacks[:1]
        labels = [attack_label(a.name, a.params) for a in result.attacks]
        naive = [
            (a, label) for a, label in zip(own, labels, strict=False) if not label.startswith(("bpda", "eot"))
        ]
        if not naive or not any(label.startswith(("bpda", "eot")) for label in labels):
            continue
        attack, label = max(naive, key=lambda pair: pair[0].accuracy.value)
        if attack.accuracy.value - result.robust.value >= 0.15:
            lines.append(
                f"{entry.name} looks robust to {label} ({_pct(attack.accuracy)}) but adaptive attacks (BPDA/EOT) "
                f"bring it to {_pct(result.robust)}: its defense hides gradients rather than removing "
                "adversarial examples."
            )
    return lines


def _training_lines(models: Sequence[ModelEntry]) -> list[str]:
    """The warnings a model's training ended with (its card's ``training.warnings``), one line each."""
    lines = []
    for entry in models:
        warnings = (entry.card or {}).get("training", {}).get("warnings") or []
        lines += [f"{entry.name}'s training warned: {warning}." for warning in warnings]
    return lines


def verdict(models: Sequence[ModelEntry], headline: Headline | None) -> list[str]:
    """Plain sentences: which model to use at the headline threat, what it costs, and how far to trust it;
    then any warning a model's training ended with."""
    return _verdict(models, headline) + _training_lines(models)


def _verdict(models: Sequence[ModelEntry], headline: Headline | None) -> list[str]:
    if headline is None:
        return [
            "No evaluation results yet: run `advrobust eval --model RUN_DIR --json results.json` and report it."
        ]
    rows = summary_rows(models, headline)
    best = recommended(rows)
    threat = f"{headline.norm} eps {headline.eps:g}"
    if best is None or best.robust is None or best.clean is None:
        return [f"No model was evaluated at {threat}."]
    lines = []
    top = best_row(rows)
    if top is not None and top is not best and top.robust is not None:
        why = (
            "failed the gradient-masking audit: do not trust that number until `advrobust eval --suite "
            "adaptive` confirms it"
            if top.audit == "fail"
            else f"its number comes with a caveat ({top.caveat}): do not trust it until an evaluation without "
            "that caveat confirms it"
        )
        lines.append(f"{top.name} shows the highest robust accuracy ({_pct(top.robust)}) but {why}.")
    others = [r for r in rows if r is not best and r.robust is not None and r.clean is not None]
    if not others:
        trained = f", trained in {_time(best.training_seconds)}" if best.training_seconds else ""
        hint = (
            f"Train a defense (e.g. `advrobust train --defense pgd-at --norm {headline.norm} --eps {headline.eps:g}`) "
            "and report both models to see what robustness costs."
            if best.defense == "standard"
            else "Report it with an undefended model to see what the defense buys and costs."
        )
        lines.append(
            f"{_named(best)} keeps {_pct(best.robust)} accuracy under {threat} attacks "
            f"(clean {_pct(best.clean)}{trained}). {hint}"
        )
    else:
        baseline = max(others, key=lambda r: r.clean.value if r.clean else 0.0)
        assert baseline.clean is not None and baseline.robust is not None
        delta = 100 * (best.clean.value - baseline.clean.value)
        cost = ""
        if best.training_seconds and baseline.training_seconds:
            ratio = best.training_seconds / baseline.training_seconds
            cost = (
                f" and {'' if delta < 0 else 'takes '}{ratio:.1f}x the training time "
                f"({_time(best.training_seconds)} vs {_time(baseline.training_seconds)})"
            )
        price = (
            f"It costs {abs(delta):.1f} points of clean accuracy ({_pct(best.clean)} vs {_pct(baseline.clean)})"
            if delta < 0
            else f"It loses no clean accuracy ({_pct(best.clean)} vs {_pct(baseline.clean)})"
        )
        lines.append(
            f"Use {_named(best)} against {threat} attacks: {_pct(best.robust)} robust accuracy vs "
            f"{_pct(baseline.robust)} for {baseline.name}. {price}{cost}."
        )
        rivals = [
            r
            for r in others
            if (r.audit != "fail" or best.audit == "fail") and (r.caveat is None or best.caveat)
        ]
        runner = best_row(rivals)
        if (
            runner is not None
            and runner.robust is not None
            and runner.robust.interval[1] >= best.robust.interval[0]
        ):
            lines.append(
                f"{runner.name} is within the 95% confidence interval of {best.name} "
                f"(n={best.robust.total}): evaluate more samples to separate them."
            )
    lines += _masking_lines(models, headline)
    if best.caveat is not None:
        lines.append(f"Do not trust {best.name}'s number yet: {best.caveat}.")
    if best.audit == "fail":
        lines.append(
            f"Do not trust {best.name}'s number yet: its gradient-masking audit failed (see the audit section); "
            "evaluate it with `--suite adaptive`."
        )
    elif best.audit is None:
        lines.append(f"{best.name} has not been audited for gradient masking: run `advrobust audit`.")
    if not any(a in best.attacks for a in _STRONG_ATTACKS):
        lines.append(
            f"{best.name} was evaluated with {best.attacks} only: `advrobust eval --suite standard` gives a "
            "tighter (lower) robust accuracy."
        )
    return lines
