"""The HTML report: one self-contained file (images as base64 PNG, inline CSS, no scripts or requests)."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from html import escape
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from PIL import Image

from advrobust.evaluation.results import Accuracy, attack_label
from advrobust.report.data import Headline, ModelEntry, ReportData, defense_label, per_class
from advrobust.report.plots import Plot, colour
from advrobust.report.summary import recommended, summary_rows, verdict

_GALLERY_PX = 84


def _template(name: str) -> str:
    return resources.files("advrobust.report").joinpath("templates", name).read_text(encoding="utf-8")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _acc(acc: Accuracy | None) -> str:
    """A table cell: the value, its 95% interval, and the exact value in ``data-value``."""
    if acc is None or acc.total == 0:
        return '<td class="num">-</td>'
    low, high = acc.interval
    return (
        f'<td class="num" data-value="{acc.value!r}" data-correct="{acc.correct}" data-total="{acc.total}">'
        f'{_pct(acc.value)} <span class="ci">[{100 * low:.1f}, {100 * high:.1f}]</span></td>'
    )


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _badge(status: str | None) -> str:
    return f'<span class="badge {escape(status or "none")}">{escape(status or "not run")}</span>'


def _img(png: bytes, alt: str, *, scale: int = 1, cls: str = "") -> str:
    if scale > 1:
        with Image.open(io.BytesIO(png)) as source:
            image = source.resize((source.width * scale, source.height * scale), Image.Resampling.NEAREST)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        png = buffer.getvalue()
        width, height = image.width, image.height
    else:
        with Image.open(io.BytesIO(png)) as image:
            width, height = image.width, image.height
    data = base64.b64encode(png).decode("ascii")
    extra = f' class="{cls}"' if cls else ""
    return f'<img{extra} src="data:image/png;base64,{data}" width="{width}" height="{height}" alt="{escape(alt)}">'


def _figure(plot: Plot | None, caption: str) -> str:
    if plot is None:
        return ""
    return f'<figure id="fig-{plot.name}">{_img(plot.png, plot.alt)}<figcaption>{escape(caption)}</figcaption></figure>'


def _command(command: Any) -> str:
    """The command line with the program's folder dropped (``advrobust eval ...``)."""
    if not isinstance(command, str) or not command:
        return "-"
    program, _, rest = command.partition(" ")
    return f"{Path(program).name} {rest}".strip()


def _code_spans(text: str) -> str:
    """Markdown-style `code` in already escaped text as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _swatch(k: int) -> str:
    return f'<span class="swatch" style="background:{colour(k)}"></span>'


def _summary(models: Sequence[ModelEntry], headline: Headline | None) -> str:
    rows = summary_rows(models, headline)
    best = recommended(rows)
    threat = f"{headline.norm} eps {headline.eps:g}" if headline else "-"
    head = (
        "<tr><th>model</th><th>defense</th><th>clean accuracy</th>"
        f"<th>robust accuracy ({escape(threat)})</th><th>training time</th><th>attacks</th><th>audit</th></tr>"
    )
    body = []
    for k, row in enumerate(rows):
        cls = ' class="best"' if row is best and len(rows) > 1 else ""
        body.append(
            f'<tr{cls} data-model="{escape(row.name)}"><td>{_swatch(k)}{escape(row.name)}</td>'
            f"<td>{escape(row.defense)}</td>{_acc(row.clean)}{_acc(row.robust)}"
            f'<td class="num" data-value="{row.training_seconds!r}">{_seconds(row.training_seconds)}</td>'
            f"<td>{escape(row.attacks)}</td><td>{_badge(row.audit)}</td></tr>"
        )
    lines = "".join(f"<p>{_code_spans(escape(line))}</p>" for line in verdict(models, headline))
    caveats = "".join(
        f'<p class="note caveat">{escape(row.name)}: {escape(row.caveat)}</p>' for row in rows if row.caveat
    )
    return (
        f'<section id="summary"><div class="verdict">{lines}</div>'
        f'<div class="scroll"><table id="summary-table"><thead>{head}</thead><tbody>{"".join(body)}</tbody>'
        "</table></div>"
        '<p class="note">Accuracies with 95% Wilson confidence intervals. Robust accuracy is the worst case over '
        f"the attacks, per sample: an upper bound on the true robust accuracy.</p>{caveats}</section>"
    )


def _results(models: Sequence[ModelEntry]) -> str:
    parts = []
    for entry in models:
        evaluations = sorted(
            entry.evaluations(),
            key=lambda ev: (str(ev.result.threat["norm"]), float(ev.result.threat["eps"])),
        )
        if not evaluations:
            continue
        names = []
        for ev in evaluations:
            for a in ev.result.attacks:
                label = attack_label(a.name, a.params)
                if label not in names:
                    names.append(label)
        head = "".join(f"<th>{escape(n)}</th>" for n in names)
        rows = []
        for ev in evaluations:
            r = ev.result
            by_name = {attack_label(a.name, a.params): a.accuracy for a in r.attacks}
            cells = "".join(_acc(by_name.get(n)) for n in names)
            rows.append(
                f'<tr data-model="{escape(entry.name)}" data-norm="{escape(str(r.threat["norm"]))}" '
                f'data-eps="{float(r.threat["eps"])!r}">'
                f'<td>{escape(str(r.threat["norm"]))}</td><td class="num">{float(r.threat["eps"]):g}</td>'
                f'<td class="num">{r.n}</td>{_acc(r.clean)}{cells}{_acc(r.robust)}'
                f'<td class="num">{_seconds(r.seconds)}</td><td>{"cascade" if r.cascade else "each on all"}</td></tr>'
            )
        caveats = "".join(
            f"<li>{escape(str(ev.result.threat['norm']))} eps {float(ev.result.threat['eps']):g}: "
            f"{escape('; '.join(ev.result.caveats))}</li>"
            for ev in evaluations
            if ev.result.caveats
        )
        parts.append(
            f"<h3>{escape(entry.name)}</h3><div class='scroll'><table class='results' data-model='{escape(entry.name)}'>"
            f"<thead><tr><th>norm</th><th>eps</th><th>n</th><th>clean</th>{head}<th>robust (worst case)</th>"
            f"<th>time</th><th>attacks run</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
            + (f'<ul class="caveats">{caveats}</ul>' if caveats else "")
        )
    if not parts:
        return ""
    return (
        '<section id="results"><h2>Results per eps</h2><p class="note">In a cascade each attack sees only the '
        "samples still standing, so its column is the accuracy after it and all earlier ones.</p>"
        + "".join(parts)
        + "</section>"
    )


def _gallery(models: Sequence[ModelEntry]) -> str:
    parts = []
    for entry in models:
        if not entry.examples:
            continue
        cards = []
        for ex in entry.examples:
            size = _GALLERY_PX
            side = decode_side(ex["original"])
            scale = max(1, round(size / side))
            symbol = {"linf": "∞", "l2": "2", "l1": "1"}.get(str(ex["norm"]), str(ex["norm"]))
            outcome = (
                f'<span class="fooled">pred {escape(str(ex["adv_pred"]))}</span>'
                if ex["fooled"]
                else f'<span class="held">pred {escape(str(ex["adv_pred"]))}</span>'
            )
            cards.append(
                f'<div class="example" data-index="{ex["index"]}"><div class="row">'
                f'<div class="cell">{_img(_b64(ex["original"]), "original", scale=scale)}'
                f"true {escape(str(ex['label_name']))}<br>pred {escape(str(ex['clean_pred']))} "
                f"({_pct(ex['clean_confidence'])})</div>"
                f'<div class="cell">{_img(_b64(ex["perturbation"]), "perturbation", scale=scale)}'
                f"‖δ‖<sub>{symbol}</sub> = {ex['perturbation_norm']:.3g}<br>shown ×{ex['amplification']:.1f}</div>"
                f'<div class="cell">{_img(_b64(ex["adversarial"]), "adversarial", scale=scale)}'
                f"{outcome}<br>({_pct(ex['adv_confidence'])})</div></div></div>"
            )
        first = entry.examples[0]
        attacks = ", ".join(dict.fromkeys(str(ex["attack"]) for ex in entry.examples))
        parts.append(
            f"<h3>{escape(entry.name)}</h3><p class='note'>{escape(str(first['norm']))} eps {first['eps']:g}: "
            "each test image attacked again by the attack that first broke it in the evaluation (one that "
            f"withstood them all: by the first attack that moves it) ({escape(attacks)})"
            "; the middle image is the perturbation, amplified (grey = 0).</p>"
            f"<div class='gallery'>{''.join(cards)}</div>"
        )
    if not parts:
        return ""
    return '<section id="gallery"><h2>Adversarial examples</h2>' + "".join(parts) + "</section>"


def _b64(data: str) -> bytes:
    return base64.b64decode(data)


def decode_side(data: str) -> int:
    """The height of a base64 PNG."""
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return int(image.height)


def _per_class(models: Sequence[ModelEntry], headline: Headline | None, plot: Plot | None) -> str:
    if headline is None or plot is None:
        return ""
    columns = []
    for entry in models:
        ev = entry.by_eps(headline.norm).get(headline.eps)
        classes = per_class(ev, entry.classes) if ev is not None else None
        if classes is not None:
            columns.append((entry, classes))
    names = [c.name for c in columns[0][1]]
    head = "".join(f"<th>{escape(e.name)} clean</th><th>{escape(e.name)} robust</th>" for e, _ in columns)
    rows = []
    for i, name in enumerate(names):
        cells = "".join(
            _acc(c[i].clean) + _acc(c[i].robust) if i < len(c) else "<td></td><td></td>" for _, c in columns
        )
        rows.append(f'<tr data-class="{escape(name)}"><td>{escape(name)}</td>{cells}</tr>')
    return (
        f'<section id="per-class"><h2>Per-class accuracy ({escape(headline.norm)} eps {headline.eps:g})</h2>'
        f"{_figure(plot, 'Which classes the attacks break first.')}"
        f"<details><summary>table</summary><div class='scroll'><table id='per-class-table'><thead><tr>"
        f"<th>class</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div></details></section>"
    )


def _audits(models: Sequence[ModelEntry]) -> str:
    parts = []
    for entry in models:
        for audit in entry.audits:
            threat = audit.get("threat", {})
            rows = "".join(
                f"<tr><td>{escape(str(c.get('name')))}</td><td>{_badge(str(c.get('status')))}</td>"
                f"<td>{escape(str(c.get('evidence', '')))}</td></tr>"
                for c in audit.get("checks", [])
            )
            parts.append(
                f"<h3>{escape(entry.name)}: {escape(str(threat.get('norm')))} eps {threat.get('eps', 0):g}, "
                f"n={audit.get('n')} {_badge(str(audit.get('status')))}</h3>"
                f"<p><strong>Verdict:</strong> {escape(str(audit.get('verdict', '')))}</p>"
                f"<table class='audit' data-model='{escape(entry.name)}'><thead><tr><th>check</th><th>status</th>"
                f"<th>evidence</th></tr></thead><tbody>{rows}</tbody></table>"
            )
    if not parts:
        missing = ", ".join(m.name for m in models)
        return (
            '<section id="audit"><h2>Gradient-masking audit</h2><p class="note">No audit in this report for '
            f"{escape(missing)}: run <code>advrobust audit --model RUN_DIR --json audit.json</code> and pass the "
            "JSON (or leave it in the run directory).</p></section>"
        )
    return (
        '<section id="audit"><h2>Gradient-masking audit</h2><p class="note">The sanity checks of Carlini et al. '
        "(2019): a model that passes them is less likely to owe its robustness to broken gradients.</p>"
        + "".join(parts)
        + "</section>"
    )


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows if v not in (None, "", "-", "None")
    )
    return f"<table class='kv'>{body}</table>"


def _mono(value: Any) -> str:
    return f'<span class="mono">{escape(str(value))}</span>' if value not in (None, "", "-") else "-"


def _provenance(models: Sequence[ModelEntry]) -> str:
    parts = []
    for entry in models:
        card = entry.card or {}
        training = card.get("training", {})
        config = training.get("config", {}) if isinstance(training.get("config"), dict) else {}
        history_env = (entry.history or {}).get("environment", {})
        rows: list[tuple[str, Any]] = [
            ("architecture", escape(str(card.get("arch", "-")))),
            ("defense", escape(defense_label(card) if card else "-")),
            ("weights sha256", _mono(entry.weights_sha256)),
            ("training data", escape(str(card.get("dataset", "-")))),
            ("training data sha256", _mono((training.get("data_source") or {}).get("sha256"))),
            (
                "training",
                escape(
                    ", ".join(
                        f"{k} {config[k]}"
                        for k in ("epochs", "batch_size", "optimizer", "lr", "schedule", "seed")
                        if k in config
                    )
                ),
            ),
            ("training time", _seconds(entry.training_seconds)),
            ("training command", _mono(_command(history_env.get("command")))),
            (
                "advrobust / torch (training)",
                escape(f"{card.get('advrobust_version', '-')} / {card.get('torch_version', '-')}"),
            ),
        ]
        for j, run in enumerate(entry.runs):
            meta = run.get("meta", {})
            data = meta.get("data", {})
            env = meta.get("environment", {})
            results = run.get("results", [])
            seeds = sorted({r.get("seed") for r in results})
            tag = f"evaluation {j + 1}" if len(entry.runs) > 1 else "evaluation"
            rows += [
                (
                    f"{tag}: data",
                    escape(f"{data.get('name', '-')} ({data.get('split', '-')}, n={data.get('n', '-')})"),
                ),
                (f"{tag}: data sha256", _mono((data.get("source") or {}).get("sha256"))),
                (f"{tag}: seed", escape(", ".join(str(s) for s in seeds))),
                (
                    f"{tag}: time",
                    escape(
                        ", ".join(
                            f"eps {r['threat']['eps']:g}: {_seconds(r.get('seconds'))}" for r in results
                        )
                    ),
                ),
                (f"{tag}: command", _mono(_command(env.get("command")))),
                (
                    f"{tag}: environment",
                    escape(
                        f"advrobust {env.get('advrobust', '-')}, torch {env.get('torch', '-')}, "
                        f"python {env.get('python', '-')}, {env.get('platform', '-')}, {env.get('processor', '-')}, "
                        f"{env.get('threads', '-')} threads, GPU {env.get('cuda') or 'none'}, "
                        f"{meta.get('processes', 1)} process(es)"
                    ),
                ),
                (f"{tag}: created", escape(str(env.get("created", "-")))),
            ]
        parts.append(f"<h3>{escape(entry.name)}</h3>{_kv(rows)}")
    return '<section id="provenance"><h2>Provenance</h2>' + "".join(parts) + "</section>"


def render_html(
    report: ReportData,
    headline: Headline | None,
    plots: dict[str, Plot | None],
) -> str:
    """The whole report as one HTML document."""
    from advrobust import __version__

    models = report.models
    threat = f"compared at {headline.norm} eps {headline.eps:g}" if headline else "no evaluation yet"
    header = (
        f"<header><h1>{escape(report.title)}</h1><p class='sub'>{len(models)} model"
        f"{'s' if len(models) != 1 else ''} · {escape(threat)} · {escape(report.created)} · advrobust "
        f"{escape(__version__)}</p></header>"
    )
    figures = "".join(
        _figure(plots.get(name), caption)
        for name, caption in (
            (
                "tradeoff",
                "Up and right is better; marker area is training time, hollow markers have none recorded.",
            ),
            (
                "curves",
                "Lines: robust accuracy; bands: 95% intervals; dots: fixed-eps evaluations; dashed: the "
                "eps compared above.",
            ),
        )
    )
    training = plots.get("training")
    body = "".join(
        [
            header,
            _summary(models, headline),
            f"<section id='figures' class='grid2'>{figures}</section>" if figures else "",
            _results(models),
            _gallery(models),
            _per_class(models, headline, plots.get("per_class")),
            (
                "<section id='training'><h2>Training</h2>"
                + _figure(training, "Per-epoch metrics from history.json.")
                + "</section>"
                if training
                else ""
            ),
            _audits(models),
            _provenance(models),
            "<footer>Generated by advrobust from report.json beside this file; "
            "<code>advrobust report report.json RUN_DIR ...</code> merges more runs into it.</footer>",
        ]
    )
    return Template(_template("report.html")).substitute(
        title=escape(report.title), css=_template("report.css"), body=body, version=escape(__version__)
    )
