"""Evaluation: robust accuracy as a per-sample worst case over attacks, with confidence intervals."""

from __future__ import annotations

from advrobust.evaluation.evaluate import evaluate
from advrobust.evaluation.results import SCHEMA, Accuracy, AttackResult, EvalResult
from advrobust.evaluation.stats import wilson_interval

__all__ = ["SCHEMA", "Accuracy", "AttackResult", "EvalResult", "evaluate", "wilson_interval"]
