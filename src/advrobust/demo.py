"""``advrobust demo``: train a small CNN on the bundled MNIST subset, attack it, measure it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from advrobust.config import EvalSettings, TrainSettings
from advrobust.evaluation import EvalResult
from advrobust.runs import TrainOutcome, eval_run, train_run
from advrobust.training import StepInfo

DEMO_DATA = "mnist-mini"
RESULTS_NAME = "results.json"
REPORT_DIR = "report"


@dataclass
class DemoOutcome:
    """What the demo made: the trained run, one evaluation per eps, and where they were written."""

    trained: TrainOutcome
    results: list[EvalResult]
    out: Path
    results_path: Path
    seconds: float
    report_path: Path | None = None


def run_demo(
    out: str | Path = "advrobust-demo",
    *,
    epochs: int = 5,
    batch_size: int = 32,
    seed: int = 0,
    eps: Sequence[float] = (0.1, 0.2, 0.3),
    steps: int = 40,
    train_progress: Callable[[StepInfo], None] | None = None,
    eval_progress: Callable[[int, int], None] | None = None,
    report: bool = True,
) -> DemoOutcome:
    """Train ``small-cnn`` normally on mnist-mini (Adam, lr 2e-3, cosine schedule), then evaluate it under FGSM and PGD-``steps`` (linf).

    Each attack runs on every sample (no cascade) so that the table shows each one's own accuracy next to
    the worst case over both. With ``report``, writes the HTML report to ``out/report/report.html``.
    """
    start = time.perf_counter()
    root = Path(out)
    trained = train_run(
        TrainSettings(
            data=DEMO_DATA,
            model="small-cnn",
            epochs=epochs,
            batch_size=batch_size,
            lr=2e-3,
            schedule="cosine",
            seed=seed,
            out=str(root / "standard"),
        ),
        progress=train_progress,
    )
    results_path = root / RESULTS_NAME
    evaluated = eval_run(
        EvalSettings(
            model=str(trained.path),
            data=DEMO_DATA,
            norm="linf",
            eps=list(eps),
            attack=["fgsm", "pgd"],
            steps=steps,
            cascade=False,
            seed=seed,
            json_path=str(results_path),
        ),
        progress=eval_progress,
    )
    report_path = None
    if report:
        from advrobust.report import build_report  # late: matplotlib is only needed here

        report_path = build_report(
            [trained.path, results_path], root / REPORT_DIR, title="advrobust demo report"
        ).html_path
    return DemoOutcome(
        trained, evaluated.results, root, results_path, time.perf_counter() - start, report_path
    )
