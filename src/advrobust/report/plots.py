"""The report's figures (matplotlib, Agg canvas, no pyplot state), each returned with the numbers it draws.

``Plot.data`` is read back from the drawn artists, so a test of it checks what the picture shows.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from advrobust.evaluation.results import Accuracy
from advrobust.report.data import Headline, ModelEntry, finite, per_class

# Colour-blind-safe palette (Okabe & Ito); a model keeps its colour in every figure.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
DPI = 110


@dataclass(frozen=True)
class Plot:
    """A rendered figure: PNG bytes, a text alternative, and the data points drawn in it."""

    name: str
    png: bytes
    alt: str
    data: dict[str, Any]


def colour(index: int) -> str:
    """The colour of the ``index``-th model."""
    return PALETTE[index % len(PALETTE)]


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, color="#e4e4e4", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, list(axes)


def _render(name: str, fig: Figure, alt: str, data: dict[str, Any]) -> Plot:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return Plot(name=name, png=buffer.getvalue(), alt=alt, data=data)


def _floats(values: Any) -> list[float]:
    return [float(v) for v in values]


def _err(accs: Sequence[Accuracy]) -> list[list[float]]:
    """Error-bar lengths below and above each value (never negative: a Wilson bound can round past it)."""
    return [
        [max(0.0, a.value - a.interval[0]) for a in accs],
        [max(0.0, a.interval[1] - a.value) for a in accs],
    ]


def curve_series(entry: ModelEntry, norm: str) -> dict[str, Any] | None:
    """Accuracy vs eps for one model: the recorded robustness curve when there is one, else clean accuracy at
    eps 0 and the robust accuracy of each evaluated eps; with confidence bands."""
    curves = [c for c in entry.curves() if c.get("norm") == norm]
    points = entry.by_eps(norm)
    if curves:
        curve = max(curves, key=lambda c: (len(c["eps"]), c.get("n", 0)))
        return {
            "source": "curve",
            "eps": _floats(curve["eps"]),
            "accuracy": _floats(curve["accuracy"]),
            "ci_low": _floats(curve["ci_low"]),
            "ci_high": _floats(curve["ci_high"]),
            "points": {eps: ev.result.robust for eps, ev in points.items()},
        }
    if not points:
        return None
    first = next(iter(points.values())).result.clean
    accs = [first, *(ev.result.robust for ev in points.values())]
    return {
        "source": "results",
        "eps": [0.0, *points],
        "accuracy": [a.value for a in accs],
        "ci_low": [a.interval[0] for a in accs],
        "ci_high": [a.interval[1] for a in accs],
        "points": {eps: ev.result.robust for eps, ev in points.items()},
    }


def plot_curves(models: Sequence[ModelEntry], headline: Headline | None = None) -> Plot | None:
    """Robust accuracy vs eps per model (one panel per norm), 95% bands; dots are the fixed-eps evaluations."""
    norms = sorted({n for m in models for n in m.norms()}, key=lambda n: (n != "linf", n))
    if not norms:
        return None
    fig, axes = _figure(5.6 * len(norms), 3.6, ncols=len(norms))
    data: dict[str, Any] = {}
    for ax, norm in zip(axes, norms, strict=True):
        panel: dict[str, Any] = {}
        for k, entry in enumerate(models):
            series = curve_series(entry, norm)
            if series is None:
                continue
            c = colour(k)
            (line,) = ax.plot(series["eps"], series["accuracy"], color=c, linewidth=2, label=entry.name)
            ax.fill_between(
                series["eps"], series["ci_low"], series["ci_high"], color=c, alpha=0.18, linewidth=0
            )
            drawn: dict[str, Any] = {
                "source": series["source"],
                "eps": _floats(line.get_xdata()),
                "accuracy": _floats(line.get_ydata()),
                "ci_low": series["ci_low"],
                "ci_high": series["ci_high"],
            }
            if series["source"] == "curve" and series["points"]:
                eps = list(series["points"])
                accs = list(series["points"].values())
                dots = ax.errorbar(
                    eps,
                    [a.value for a in accs],
                    yerr=_err(accs),
                    fmt="o",
                    color=c,
                    markersize=5,
                    capsize=3,
                    markeredgecolor="white",
                )
                drawn["points"] = {
                    "eps": _floats(dots.lines[0].get_xdata()),
                    "accuracy": _floats(dots.lines[0].get_ydata()),
                }
            panel[entry.name] = drawn
        if headline is not None and headline.norm == norm:
            ax.axvline(headline.eps, color="#888888", linestyle="--", linewidth=1)
        ax.set_title(f"Accuracy under {norm} attacks", fontsize=11, loc="left")
        ax.set_xlabel(f"eps ({norm})")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(left=0)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        ax.legend(frameon=False, fontsize=9)
        data[norm] = panel
    names = ", ".join(m.name for m in models)
    alt = f"Robust accuracy against eps for {names}; shaded bands are 95% confidence intervals."
    out = _render("curves", fig, alt, data)
    return out


def _label_offsets(points: Sequence[tuple[float, float]], span: tuple[float, float]) -> list[float]:
    """Vertical text offsets (points) that keep the labels of nearby markers from overlapping."""
    offsets: list[float] = []
    for i, (x, y) in enumerate(points):
        near = [
            offsets[j]
            for j, (u, v) in enumerate(points[:i])
            if abs(u - x) < 0.12 * span[0] and abs(v - y) < 0.08 * span[1]
        ]
        offset = 6.0
        while offset in near:
            offset += 13.0
        offsets.append(offset)
    return offsets


def plot_tradeoff(models: Sequence[ModelEntry], headline: Headline) -> Plot | None:
    """Clean vs robust accuracy at the headline threat, one marker per model, area proportional to the
    training time; error bars are 95% intervals. Up and right is better."""
    rows = []
    for k, entry in enumerate(models):
        ev = entry.by_eps(headline.norm).get(headline.eps)
        if ev is not None:
            rows.append((k, entry, ev))
    if not rows:
        return None
    seconds = [finite(entry.training_seconds) for _, entry, _ in rows]
    longest = max([s for s in seconds if s is not None] or [1.0])
    fig, (ax,) = _figure(5.6, 3.9)
    # Clean accuracies are usually close together: zoom on them, robust accuracy keeps its full range.
    left = max(0.0, min(ev.result.clean.interval[0] for _, _, ev in rows) - 0.05)
    ax.set_xlim(left, 1.0 + (1.0 - left) * 0.02)
    ax.set_ylim(-0.03, 1.03)
    points = [(ev.result.clean.value, ev.result.robust.value) for _, _, ev in rows]
    offsets = _label_offsets(points, (1.0 - left, 1.0))
    data: dict[str, Any] = {}
    for (k, entry, ev), sec, dy in zip(rows, seconds, offsets, strict=True):
        clean, robust = ev.result.clean, ev.result.robust
        size = 40 + 560 * (sec / longest) if sec is not None else 80
        ax.errorbar(
            clean.value,
            robust.value,
            xerr=_err([clean]),
            yerr=_err([robust]),
            fmt="none",
            ecolor=colour(k),
            elinewidth=1,
            capsize=2,
            alpha=0.7,
        )
        dot = ax.scatter(
            [clean.value],
            [robust.value],
            s=[size],
            color=colour(k) if sec is not None else "white",
            edgecolors=colour(k),
            linewidths=1.5,
            alpha=0.85,
            zorder=3,
        )
        ax.annotate(
            entry.name,
            (clean.value, robust.value),
            xytext=(-(size**0.5) / 2 - 3, dy),
            textcoords="offset points",
            ha="right",
            fontsize=9,
            color=colour(k),
            fontweight="bold",
            zorder=5,
        )
        (x, y) = np.asarray(dot.get_offsets())[0]
        data[entry.name] = {
            "clean": float(x),
            "robust": float(y),
            "training_seconds": sec,
            "size": float(dot.get_sizes()[0]),
        }
    for fraction in (0.1, 1.0):
        ax.scatter([], [], s=40 + 560 * fraction, color="#bbbbbb", label=f"{fraction * longest:.2g} s")
    ax.legend(
        frameon=False,
        fontsize=8,
        loc="best",
        labelspacing=1.6,
        borderpad=1.0,
        title="training",
        title_fontsize=8,
    )
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel(f"robust accuracy ({headline.norm} eps {headline.eps:g})")
    ax.set_title("Robust vs clean accuracy (area: training time)", fontsize=11, loc="left")
    alt = "Clean against robust accuracy per model: " + "; ".join(
        f"{name} clean {100 * d['clean']:.1f}%, robust {100 * d['robust']:.1f}%" for name, d in data.items()
    )
    return _render("tradeoff", fig, alt, data)


def plot_per_class(models: Sequence[ModelEntry], headline: Headline) -> Plot | None:
    """Robust accuracy per true class at the headline threat (bars), clean accuracy as a tick above each."""
    rows = []
    for k, entry in enumerate(models):
        ev = entry.by_eps(headline.norm).get(headline.eps)
        classes = per_class(ev, entry.classes) if ev is not None else None
        if classes is not None:
            rows.append((k, entry, classes))
    if not rows:
        return None
    count = max(len(c) for _, _, c in rows)
    fig, (ax,) = _figure(min(11.2, max(5.6, 0.3 * count * len(rows) + 1.5)), 3.2)
    width = 0.8 / len(rows)
    data: dict[str, Any] = {}
    for j, (k, entry, classes) in enumerate(rows):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(classes))]
        bars = ax.bar(
            xs, [c.robust.value for c in classes], width=width * 0.92, color=colour(k), label=entry.name
        )
        ticks = ax.scatter(xs, [c.clean.value for c in classes], marker="_", s=120, color="#333333", zorder=3)
        data[entry.name] = {
            "classes": [c.name for c in classes],
            "robust": [float(b.get_height()) for b in bars],
            "clean": [float(y) for y in np.asarray(ticks.get_offsets())[:, 1]],
        }
    names = rows[0][2]
    ax.set_xticks(range(len(names)), [c.name for c in names])
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set_xlabel("true class")
    ax.set_ylabel("robust accuracy")
    ax.set_title(
        f"Robust accuracy per class ({headline.norm} eps {headline.eps:g}); ticks: clean accuracy",
        fontsize=11,
        loc="left",
    )
    if len(rows) > 1:
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    alt = f"Robust accuracy per class at {headline.norm} eps {headline.eps:g} for " + ", ".join(data)
    return _render("per_class", fig, alt, data)


_ACCURACY_SERIES = (
    ("train_accuracy", "train", "-"),
    ("val_accuracy", "test (clean)", "--"),
    ("holdout_robust_accuracy", "held-out (robust)", ":"),
)


def plot_training(models: Sequence[ModelEntry]) -> Plot | None:
    """Per-epoch accuracy, loss and learning rate from each model's ``history.json``."""
    rows = [(k, m) for k, m in enumerate(models) if m.history and m.history.get("history")]
    if not rows:
        return None
    fig, axes = _figure(11.2, 3.2, ncols=3)
    data: dict[str, Any] = {}
    for k, entry in rows:
        history = (entry.history or {})["history"]
        drawn: dict[str, Any] = {}
        for key, label, style in _ACCURACY_SERIES:
            pairs = [(h["epoch"], h[key]) for h in history if finite(h.get(key)) is not None]
            if pairs:
                (line,) = axes[0].plot(
                    *zip(*pairs, strict=True),
                    linestyle=style,
                    color=colour(k),
                    marker=".",
                    label=f"{entry.name}: {label}",
                )
                drawn[key] = {"epoch": _floats(line.get_xdata()), "value": _floats(line.get_ydata())}
        for ax, key in ((axes[1], "loss"), (axes[2], "lr")):
            pairs = [(h["epoch"], h[key]) for h in history if finite(h.get(key)) is not None]
            if pairs:
                (line,) = ax.plot(*zip(*pairs, strict=True), color=colour(k), marker=".", label=entry.name)
                drawn[key] = {"epoch": _floats(line.get_xdata()), "value": _floats(line.get_ydata())}
        data[entry.name] = drawn
    axes[0].set_title("Accuracy", fontsize=11, loc="left")
    axes[0].yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axes[0].legend(frameon=False, fontsize=7)
    axes[1].set_title("Training loss", fontsize=11, loc="left")
    axes[2].set_title("Learning rate", fontsize=11, loc="left")
    losses = [v for d in data.values() for v in d.get("loss", {}).get("value", [])]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(rows) > 1:
        axes[1].legend(frameon=False, fontsize=8)
    alt = "Training curves (accuracy, loss, learning rate per epoch) of " + ", ".join(data)
    return _render("training", fig, alt, data)
