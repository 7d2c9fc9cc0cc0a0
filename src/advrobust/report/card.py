"""The robustness card: one model's robustness in Markdown, for a model card or a README."""

from __future__ import annotations

from typing import Any

from advrobust.evaluation.results import Accuracy, attack_label
from advrobust.report.data import Headline, ModelEntry, defense_label
from advrobust.report.summary import audit_status


def _acc(acc: Accuracy) -> str:
    low, high = acc.interval
    return f"{100 * acc.value:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def robustness_card(entry: ModelEntry, headline: Headline | None = None) -> str:
    """A Markdown card: what the model is, its accuracy per eps with 95% intervals, audit and provenance."""
    card = entry.card or {}
    training = card.get("training", {})
    lines = [f"# Robustness card: {entry.name}", ""]
    facts = [
        ("Architecture", card.get("arch")),
        ("Data set", card.get("dataset")),
        ("Defense", defense_label(card) if card else None),
        ("Training time", f"{entry.training_seconds:.1f} s" if entry.training_seconds is not None else None),
        ("Weights sha256", f"`{entry.weights_sha256}`" if entry.weights_sha256 else None),
    ]
    lines += [f"- **{k}**: {v}" for k, v in facts if v]
    evaluations = sorted(
        entry.evaluations(), key=lambda ev: (str(ev.result.threat["norm"]), float(ev.result.threat["eps"]))
    )
    if evaluations:
        first = evaluations[0]
        data = first.meta.get("data", {})
        lines += [
            "",
            f"## Accuracy under attack ({data.get('name', 'test data')}, n={first.result.n}, 95% Wilson intervals)",
            "",
            "| norm | eps | clean | robust (worst case) | attacks |",
            "|---|---:|---:|---:|---|",
        ]
        for ev in evaluations:
            r = ev.result
            mark = (
                " **(headline)**"
                if headline and (r.threat["norm"], float(r.threat["eps"])) == (headline.norm, headline.eps)
                else ""
            )
            # Each attack's own accuracy when each ran on every sample; in a cascade only the worst case is own.
            attacks = ", ".join(
                attack_label(a.name, a.params) + ("" if r.cascade else f" {100 * a.accuracy.value:.1f}%")
                for a in r.attacks
            )
            flag = (
                " (upper bound: see the caveats)"
                if r.meta.get("upper_bound")
                else (" (see the caveats)" if r.caveats else "")
            )
            lines.append(
                f"| {r.threat['norm']} | {float(r.threat['eps']):g}{mark} | {_acc(r.clean)} | {_acc(r.robust)}{flag} | "
                f"{attacks} |"
            )
        lines += [
            "",
            "Robust accuracy is the worst case over the attacks per sample: an upper bound on the true value.",
        ]
        caveats = [(ev.result, ev.result.caveats) for ev in evaluations if ev.result.caveats]
        if caveats:
            lines += ["", "**Caveats**:", ""]
            lines += [
                f"- {r.threat['norm']} eps {float(r.threat['eps']):g}: {'; '.join(notes)}"
                for r, notes in caveats
            ]
    for curve in entry.curves():
        pairs = ", ".join(
            f"{eps:g}: {100 * acc:.1f}%" for eps, acc in zip(curve["eps"], curve["accuracy"], strict=True)
        )
        lines += [
            "",
            f"Robustness curve ({curve['norm']}, from {', '.join(curve.get('sources', []))}): {pairs}.",
        ]
    status = audit_status(entry, headline)
    lines += ["", "## Gradient-masking audit", ""]
    if status is None:
        lines.append("Not audited: run `advrobust audit --model RUN_DIR`.")
    for audit in entry.audits:
        threat = audit.get("threat", {})
        lines.append(
            f"- {threat.get('norm')} eps {threat.get('eps', 0):g}, n={audit.get('n')}: **{audit.get('status')}**. "
            f"{audit.get('verdict', '')}"
        )
    env: dict[str, Any] = next((run.get("meta", {}).get("environment", {}) for run in entry.runs), {})
    config = training.get("config", {}) if isinstance(training.get("config"), dict) else {}
    lines += [
        "",
        "## Provenance",
        "",
        f"- advrobust {env.get('advrobust', card.get('advrobust_version', '?'))}, "
        f"torch {env.get('torch', card.get('torch_version', '?'))}, python {env.get('python', '?')}",
        f"- training seed {config.get('seed', '?')}, evaluation seed "
        f"{', '.join(sorted({str(ev.result.seed) for ev in evaluations})) or '?'}",
    ]
    data_sha = (training.get("data_source") or {}).get("sha256")
    if data_sha:
        lines.append(f"- training data sha256 `{data_sha}`")
    return "\n".join(lines) + "\n"
