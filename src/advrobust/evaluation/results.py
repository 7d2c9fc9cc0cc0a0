"""Result objects of an evaluation, with a stable JSON schema (``advrobust.eval/1``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advrobust.errors import DataError
from advrobust.evaluation.stats import wilson_interval
from advrobust.fileio import atomic_write_json

SCHEMA = "advrobust.eval/1"


@dataclass(frozen=True)
class Accuracy:
    """``correct`` out of ``total``, with a Wilson confidence interval."""

    correct: int
    total: int
    confidence: float = 0.95

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total, self.confidence)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {
            "value": self.value if self.total else None,
            "correct": self.correct,
            "total": self.total,
            "ci_low": low,
            "ci_high": high,
            "confidence": self.confidence,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Accuracy:
        return cls(int(data["correct"]), int(data["total"]), float(data["confidence"]))

    def __str__(self) -> str:
        low, high = self.interval
        return f"{100 * self.value:.1f}% [{100 * low:.1f}, {100 * high:.1f}] (n={self.total})"


def attack_label(name: str, params: dict[str, Any]) -> str:
    """``pgd-40``, ``apgd-dlr-100``, ``apgd-t-dlr-100``, ``fab-t-100``, ``fab-t-label-100``, ``fgsm``: an
    attack's name, ``-t`` when it is targeted, its loss where not cross-entropy, FAB's rival where not the
    strongest class, and its step count."""
    inner = params.get("attack")
    if isinstance(inner, dict) and isinstance(inner.get("name"), str):
        rest = {k: v for k, v in inner.items() if k != "name"}
        return f"{name}({attack_label(inner['name'], rest)})"
    label = name
    if params.get("targeted") is True:
        label += "-t"
    loss = params.get("loss")
    if isinstance(loss, str) and loss != "ce" and name in ("apgd", "pgd"):
        label += f"-{loss}"
    rival = params.get("rival")
    if name == "fab" and params.get("targeted") is True and isinstance(rival, str) and rival != "strongest":
        label += f"-{rival}"
    steps = params.get("steps")
    if isinstance(steps, int):
        label += f"-{steps}"
    return label


@dataclass(frozen=True)
class AttackResult:
    """One attack's outcome. In a cascade ``accuracy`` is the robust accuracy after this attack and all
    earlier ones (each attack only sees the samples still standing); otherwise it is this attack's alone.
    """

    name: str
    params: dict[str, Any]
    accuracy: Accuracy
    attacked: int
    fooled: int
    seconds: float
    violations: int = 0

    @property
    def label(self) -> str:
        """A short name that tells the attacks of a suite apart, e.g. ``apgd-t-dlr-100``."""
        return attack_label(self.name, self.params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": self.params,
            "accuracy": self.accuracy.to_dict(),
            "attacked": self.attacked,
            "fooled": self.fooled,
            "seconds": self.seconds,
            "violations": self.violations,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackResult:
        return cls(
            name=data["name"],
            params=dict(data["params"]),
            accuracy=Accuracy.from_dict(data["accuracy"]),
            attacked=int(data["attacked"]),
            fooled=int(data["fooled"]),
            seconds=float(data["seconds"]),
            violations=int(data.get("violations", 0)),
        )


@dataclass(frozen=True)
class EvalResult:
    """Clean and robust accuracy of one model under one threat model, per sample and in total.

    ``broken_by[i]`` is the index of the first attack that fooled sample i, -1 if none did, -2 if the
    sample was already misclassified without attack, and -3 if only the robustness curve's attacks of the
    same run fooled it within this eps (``advrobust eval --curve``).
    """

    threat: dict[str, Any]
    clean: Accuracy
    robust: Accuracy
    attacks: list[AttackResult]
    clean_correct: list[bool]
    robust_correct: list[bool]
    broken_by: list[int]
    seconds: float
    clean_seconds: float
    seed: int
    cascade: bool
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.clean.total

    @property
    def caveats(self) -> list[str]:
        """What limits this robust accuracy, in words (empty when nothing does): black-box access, gradient
        attacks that ignore what the model declares, cross-entropy against a saturated softmax, bf16
        autocast, non-finite logits, returned points outside the threat model."""
        keys = ("access_note", "adaptive_note", "saturation_note", "amp_note", "nonfinite_note")
        notes = [str(self.meta[k]) for k in keys if self.meta.get(k)]
        outside = sum(a.violations for a in self.attacks)
        if outside:
            notes.append(f"{outside} returned point(s) lay outside the threat model")
        return notes

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "threat": self.threat,
            "n": self.n,
            "clean": self.clean.to_dict(),
            "robust": self.robust.to_dict(),
            "attacks": [a.to_dict() for a in self.attacks],
            "seconds": self.seconds,
            "clean_seconds": self.clean_seconds,
            "seed": self.seed,
            "cascade": self.cascade,
            "meta": self.meta,
            "per_sample": {
                "clean_correct": self.clean_correct,
                "robust_correct": self.robust_correct,
                "broken_by": self.broken_by,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        if data.get("schema") != SCHEMA:
            raise DataError(
                f"not an advrobust evaluation result (schema {data.get('schema')!r}, expected {SCHEMA!r})"
            )
        per_sample = data["per_sample"]
        return cls(
            threat=dict(data["threat"]),
            clean=Accuracy.from_dict(data["clean"]),
            robust=Accuracy.from_dict(data["robust"]),
            attacks=[AttackResult.from_dict(a) for a in data["attacks"]],
            clean_correct=[bool(v) for v in per_sample["clean_correct"]],
            robust_correct=[bool(v) for v in per_sample["robust_correct"]],
            broken_by=[int(v) for v in per_sample["broken_by"]],
            seconds=float(data["seconds"]),
            clean_seconds=float(data["clean_seconds"]),
            seed=int(data["seed"]),
            cascade=bool(data["cascade"]),
            meta=dict(data.get("meta", {})),
        )

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the result as JSON, atomically."""
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> EvalResult:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"no result file at {path}: run `advrobust eval --json {path}` first") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{path} is not valid JSON ({exc}): re-run the evaluation to rewrite it"
            ) from None
        return cls.from_dict(data)


RUN_SCHEMA = "advrobust.run/1"


def save_run(path: str | os.PathLike[str], results: list[EvalResult], *, meta: dict[str, Any]) -> Path:
    """Write the results of one ``advrobust eval`` (one per eps) with their provenance, atomically."""
    atomic_write_json(path, {"schema": RUN_SCHEMA, "meta": meta, "results": [r.to_dict() for r in results]})
    return Path(path)


def load_results(path: str | os.PathLike[str]) -> list[EvalResult]:
    """Read a file written by ``save_run`` or ``EvalResult.save_json``."""
    data = _read_json(path)
    if isinstance(data, dict) and data.get("schema") == RUN_SCHEMA:
        return [EvalResult.from_dict(r) for r in data["results"]]
    return [EvalResult.from_dict(data)]


def _read_json(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"no result file at {path}: run `advrobust eval --json {path}` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}): re-run the evaluation to rewrite it") from None
