"""``build_report``: gather runs, draw them, write ``report.html``, ``report.json`` and robustness cards."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from advrobust.fileio import atomic_write_bytes, atomic_write_json
from advrobust.report.card import robustness_card
from advrobust.report.data import Headline, ReportData, gather, headline_threat
from advrobust.report.examples import fill_labels, make_examples
from advrobust.report.html import render_html
from advrobust.report.plots import Plot, plot_curves, plot_per_class, plot_tradeoff, plot_training

HTML_NAME = "report.html"
JSON_NAME = "report.json"
log = logging.getLogger(__name__)


@dataclass
class Report:
    """What ``build_report`` wrote, the merged data it drew, and the figures with their data."""

    html_path: Path
    json_path: Path
    data: ReportData
    headline: Headline | None
    plots: dict[str, Plot | None]
    card_paths: list[Path] = field(default_factory=list)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def build_report(
    inputs: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str] = "report",
    *,
    title: str | None = None,
    norm: str | None = None,
    eps: float | None = None,
    examples: int = 6,
    cards: bool = False,
    device: str | torch.device | None = None,
) -> Report:
    """Merge run directories and JSON files (runs, evaluations, audits, earlier reports) and write the report.

    Writes ``out/report.html`` (self-contained) and ``out/report.json`` (schema ``advrobust.report/1``,
    the input of a later merge); with ``cards``, ``out/cards/NAME.md`` per model. Models are compared at
    ``norm``/``eps`` (default: the largest eps every model was evaluated at). ``examples`` adversarial
    examples per model are regenerated when the run directory and data are at hand (0: none).
    """
    data = gather(inputs, title=title)
    for entry in data.models:
        fill_labels(entry)
    headline = headline_threat(data.models, norm=norm, eps=eps)
    if headline is not None:
        target = torch.device(device) if device is not None else None
        for entry in data.models:
            fresh = make_examples(entry, headline, count=examples, device=target) if examples > 0 else []
            if fresh:
                entry.examples = fresh
            elif examples == 0 or any(
                (ex.get("norm"), ex.get("eps")) != (headline.norm, headline.eps) for ex in entry.examples
            ):
                entry.examples = []
    plots: dict[str, Plot | None] = {
        "curves": plot_curves(data.models, headline),
        "tradeoff": plot_tradeoff(data.models, headline) if headline else None,
        "per_class": plot_per_class(data.models, headline) if headline else None,
        "training": plot_training(data.models),
    }
    root = Path(out)
    html_path, json_path = root / HTML_NAME, root / JSON_NAME
    atomic_write_json(json_path, data.to_dict())
    atomic_write_bytes(html_path, render_html(data, headline, plots).encode("utf-8"))
    card_paths = []
    if cards:
        for entry in data.models:
            path = root / "cards" / f"{_slug(entry.name)}.md"
            atomic_write_bytes(path, robustness_card(entry, headline).encode("utf-8"))
            card_paths.append(path)
    return Report(html_path, json_path, data, headline, plots, card_paths)
