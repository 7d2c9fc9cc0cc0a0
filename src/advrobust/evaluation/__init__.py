"""Evaluation: robust accuracy as a per-sample worst case over attacks, with confidence intervals."""

from __future__ import annotations

from advrobust.evaluation.evaluate import evaluate
from advrobust.evaluation.results import (
    RUN_SCHEMA,
    SCHEMA,
    Accuracy,
    AttackResult,
    EvalResult,
    load_results,
    save_run,
)
from advrobust.evaluation.stats import wilson_interval

__all__ = [
    "RUN_SCHEMA",
    "SCHEMA",
    "Accuracy",
    "AttackResult",
    "EvalResult",
    "evaluate",
    "load_results",
    "save_run",
    "wilson_interval",
]
