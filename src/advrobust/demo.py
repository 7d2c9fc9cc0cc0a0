"""``advrobust demo``: train a small CNN on the bundled MNIST subset, attack it, measure it; then compare
defenses (adversarial training, input transformations, defensive distillation) under naive and adaptive
attacks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from advrobust.attacks import PGD
from advrobust.config import DefendSettings, EvalSettings, TrainSettings
from advrobust.evaluation import EvalResult, evaluate, save_run
from advrobust.evaluation.suites import build_suite
from advrobust.models.io import CARD_NAME
from advrobust.runs import TrainOutcome, defend_run, eval_run, load_model_and_data, train_run
from advrobust.threat import ThreatModel
from advrobust.training import StepInfo

DEMO_DATA = "mnist-mini"
RESULTS_NAME = "results.json"
REPORT_DIR = "report"


DEFENSE_EPS = 0.1  # on 5,000 images a few epochs of Fast-AT get robust at 0.1, not yet at 0.3
TRANSFORMS = ("jpeg:75", "bitdepth:4")
# The first 150 test images: the adaptive suite on the four models took 160-181 s on 200 images on 2 AVX2
# cores (Square's 5,000 queries run the model, and for one model the JPEG codec, each time), more than the
# demo's 3 minutes in all; 150 keeps the 95% intervals within about 8 points either side.
DEFENSE_SAMPLES = 150
# Defensive distillation as published (Papernot et al., 2016): teacher and student both at T = 100. A student
# distilled at T = 100 from the demo's normally trained model learns that model's logits (KL at T is minimal
# at z_student = z_teacher + c) and masks nothing: 46% vs 48% under CE vs margin PGD in our runs.
DISTILL_TEMPERATURE = 100.0
EVAL_NAME = "eval-defense.json"


@dataclass
class DefenseRow:
    """One model of the defense comparison: its evaluation (naive PGD and adaptive attacks) and its cost."""

    name: str
    description: str
    path: Path
    result: EvalResult
    train_seconds: float

    @property
    def naive(self) -> float:
        """Accuracy under plain PGD-40 (what a careless evaluation would report)."""
        return self.result.attacks[0].accuracy.value

    margin: float | None = None
    """Accuracy under PGD-40 with the margin loss on the logits, when it was run (distillation)."""

    @property
    def adaptive(self) -> float:
        """Worst case over plain PGD and the ``adaptive`` suite: the strongest evaluation advrobust has."""
        return self.result.robust.value


@dataclass
class DemoOutcome:
    """What the demo made: the trained run, one evaluation per eps, the defense comparison, and paths."""

    trained: TrainOutcome
    results: list[EvalResult]
    out: Path
    results_path: Path
    seconds: float
    report_path: Path | None = None
    defenses: list[DefenseRow] | None = None


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
    defense_epochs: int = 5,
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
    robust = train_run(
        TrainSettings(
            data=DEMO_DATA,
            model="small-cnn",
            defense="fast-at",
            eps=DEFENSE_EPS,
            epochs=defense_epochs,
            batch_size=64,
            lr=5e-3,
            schedule="cyclic",
            seed=seed,
            out=str(root / "fast-at"),
        ),
        progress=train_progress,
    )
    defended = defend_run(
        DefendSettings(model=str(trained.path), transform=list(TRANSFORMS), out=str(root / "jpeg-bitdepth"))
    )
    # Without --teacher, "distillation" trains its teacher at the temperature first (in distilled/teacher).
    distilled = train_run(
        TrainSettings(
            data=DEMO_DATA,
            model="small-cnn",
            defense="distillation",
            temperature=DISTILL_TEMPERATURE,
            epochs=defense_epochs,
            batch_size=batch_size,
            lr=2e-3,
            schedule="cosine",
            seed=seed,
            out=str(root / "distilled"),
        ),
        progress=train_progress,
    )
    distill_seconds = distilled.result.seconds + (
        distilled.teacher.result.seconds if distilled.teacher is not None else 0.0
    )
    rows = [
        _compare("standard", "none", trained.path, trained.result.seconds, seed, eval_progress),
        _compare(
            "fast-at",
            f"Fast-AT {DEFENSE_EPS:g}",
            robust.path,
            robust.result.seconds,
            seed,
            eval_progress,
        ),
        _compare(
            "jpeg-bitdepth",
            "JPEG-75 + 4-bit",
            defended.path,
            trained.result.seconds,
            seed,
            eval_progress,
        ),
        _compare(
            "distilled",
            f"distill T={DISTILL_TEMPERATURE:g}",
            distilled.path,
            distill_seconds,
            seed,
            eval_progress,
            margin=True,
        ),
    ]
    report_path = None
    if report:
        from advrobust.report import build_report  # late: matplotlib is only needed here

        # Each model's card, not its folder: a folder would also bring in the distilled model's teacher.
        inputs = [results_path, *(p for row in rows for p in (row.path / CARD_NAME, row.path / EVAL_NAME))]
        report_path = build_report(inputs, root / REPORT_DIR, title="advrobust demo report").html_path
    return DemoOutcome(
        trained, evaluated.results, root, results_path, time.perf_counter() - start, report_path, rows
    )


def _compare(
    name: str,
    description: str,
    path: Path,
    train_seconds: float,
    seed: int,
    progress: Callable[[int, int], None] | None,
    *,
    margin: bool = False,
) -> DefenseRow:
    """Plain PGD-40, then the ``adaptive`` suite (AutoAttack's recipe, through BPDA/EOT where the model
    declares them) on the samples PGD left, at DEFENSE_EPS; with ``margin``, also PGD-40 with the margin loss
    on every sample (cross-entropy's gradient vanishes on saturated logits).
    """
    model, data, meta = load_model_and_data(EvalSettings(model=str(path), data=DEMO_DATA, n=DEFENSE_SAMPLES))
    threat = ThreatModel(norm="linf", eps=DEFENSE_EPS)
    margin_accuracy = None
    if margin:
        # Its own accuracy on every sample, kept (per sample) in the evaluation's meta.
        pgd_margin = PGD(threat=threat, steps=40, loss="margin")
        by_margin = evaluate(model, data, [pgd_margin], seed=seed, progress=progress)
        margin_accuracy = by_margin.robust.value
        meta = {**meta, "pgd_margin_loss": by_margin.to_dict()}
    # A cascade: PGD runs first on every sample, so its column is its own accuracy.
    attacks = [PGD(threat=threat, steps=40), *build_suite("adaptive", threat, model=model)]
    result = evaluate(model, data, attacks, seed=seed, cascade=True, progress=progress, meta=meta)
    save_run(path / EVAL_NAME, [result], meta=meta)
    return DefenseRow(name, description, path, result, train_seconds, margin_accuracy)
