"""Reports: a self-contained HTML page with plots, Markdown robustness cards and mergeable JSON.

This layer only reads results (objects or their JSON) and draws them; nothing below imports it.
"""

from __future__ import annotations

from advrobust.report.build import Report, build_report
from advrobust.report.card import robustness_card
from advrobust.report.data import (
    REPORT_SCHEMA,
    Evaluation,
    Headline,
    ModelEntry,
    ReportData,
    gather,
    headline_threat,
    load_report,
    per_class,
)
from advrobust.report.html import render_html
from advrobust.report.plots import Plot, plot_curves, plot_per_class, plot_tradeoff, plot_training
from advrobust.report.summary import SummaryRow, summary_rows, verdict

__all__ = [
    "REPORT_SCHEMA",
    "Evaluation",
    "Headline",
    "ModelEntry",
    "Plot",
    "Report",
    "ReportData",
    "SummaryRow",
    "build_report",
    "gather",
    "headline_threat",
    "load_report",
    "per_class",
    "plot_curves",
    "plot_per_class",
    "plot_tradeoff",
    "plot_training",
    "render_html",
    "robustness_card",
    "summary_rows",
    "verdict",
]
