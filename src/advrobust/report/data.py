"""What a report shows, gathered from run directories and JSON files and merged per model.

The merged document has the schema ``advrobust.report/1``: one entry per model with its card, training
history, evaluation runs (``advrobust.run/1``), audits (``advrobust.audit/1``) and gallery examples. It is
what ``report.json`` holds, and a report can be rebuilt from it alone or merged with more runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from advrobust.errors import DataError
from advrobust.evaluation.results import RUN_SCHEMA, SCHEMA, Accuracy, EvalResult, attack_label

REPORT_SCHEMA = "advrobust.report/1"
AUDIT_SCHEMA = "advrobust.audit/1"
CARD_NAME = "card.json"
HISTORY_NAME = "history.json"
# How deep a directory given to the report is searched for run directories and result files.
_SCAN_DEPTH = 3

log = logging.getLogger(__name__)


@dataclass
class ModelEntry:
    """Everything known about one model: card, training history, evaluations, audits, gallery."""

    name: str
    key: str
    path: str | None = None
    card: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "path": self.path,
            "card": self.card,
            "history": self.history,
            "runs": self.runs,
            "audits": self.audits,
            "examples": self.examples,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelEntry:
        return cls(
            name=str(data["name"]),
            key=str(data["key"]),
            path=data.get("path"),
            card=data.get("card"),
            history=data.get("history"),
            runs=list(data.get("runs", [])),
            audits=list(data.get("audits", [])),
            examples=list(data.get("examples", [])),
        )

    @property
    def weights_sha256(self) -> str | None:
        if self.card is not None:
            return str(self.card.get("weights_sha256") or "") or None
        for run in self.runs:
            sha = run.get("meta", {}).get("model", {}).get("weights_sha256")
            if sha:
                return str(sha)
        return None

    @property
    def training_seconds(self) -> float | None:
        """Training time from the card (a transform defense inherits its source model's), with the teacher's
        for a distilled model: the defense cost both."""
        training = (self.card or {}).get("training", {})
        seconds = training.get("seconds")
        if not isinstance(seconds, (int, float)):
            return None
        teacher = training.get("teacher")
        extra = teacher.get("seconds") if isinstance(teacher, dict) else None
        return float(seconds) + (float(extra) if isinstance(extra, (int, float)) else 0.0)

    @property
    def classes(self) -> list[str] | None:
        classes = (self.card or {}).get("classes")
        return [str(c) for c in classes] if isinstance(classes, list) else None

    def evaluations(self) -> list[Evaluation]:
        """Every evaluation result of every run, with the labels of its samples when recorded."""
        out = []
        for run in self.runs:
            meta = run.get("meta", {})
            labels = meta.get("data", {}).get("labels")
            for item in run.get("results", []):
                result = EvalResult.from_dict(item)
                usable = isinstance(labels, list) and len(labels) == result.n
                out.append(Evaluation(result, [int(v) for v in labels] if usable else None, meta))
        return out

    def curves(self) -> list[dict[str, Any]]:
        """The robustness curves (``advrobust.curve/1``) recorded with the runs."""
        return [
            run["meta"]["curve"] for run in self.runs if isinstance(run.get("meta", {}).get("curve"), dict)
        ]

    def by_eps(self, norm: str) -> dict[float, Evaluation]:
        """One evaluation per eps of ``norm``: the lowest robust accuracy (strongest attack) among runs."""
        best: dict[float, Evaluation] = {}
        for ev in self.evaluations():
            if ev.result.threat.get("norm") != norm:
                continue
            eps = float(ev.result.threat["eps"])
            if eps not in best or ev.result.robust.value < best[eps].result.robust.value:
                best[eps] = ev
        return dict(sorted(best.items()))

    def norms(self) -> list[str]:
        return sorted({str(ev.result.threat.get("norm")) for ev in self.evaluations()})


@dataclass(frozen=True)
class Evaluation:
    """One ``EvalResult`` with the labels of its samples (for per-class accuracy) and its run's meta."""

    result: EvalResult
    labels: list[int] | None
    meta: dict[str, Any]

    @property
    def attack_label(self) -> str:
        return " + ".join(attack_label(a.name, a.params) for a in self.result.attacks) or "none"


@dataclass
class ReportData:
    """The merged content of a report (schema ``advrobust.report/1``)."""

    models: list[ModelEntry]
    title: str = "advrobust robustness report"
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "title": self.title,
            "created": self.created,
            "models": [m.to_dict() for m in self.models],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReportData:
        if data.get("schema") != REPORT_SCHEMA:
            raise DataError(
                f"not an advrobust report (schema {data.get('schema')!r}, expected {REPORT_SCHEMA!r})"
            )
        return cls(
            models=[ModelEntry.from_dict(m) for m in data.get("models", [])],
            title=str(data.get("title", "advrobust robustness report")),
            created=str(data.get("created", "")),
        )

    def model(self, name: str) -> ModelEntry:
        for entry in self.models:
            if entry.name == name:
                return entry
        raise KeyError(name)


def defense_label(card: dict[str, Any] | None) -> str:
    """The training objective (with its eps) and any input transforms, e.g. ``pgd-at linf 0.3 + jpeg``."""
    if not card:
        return "unknown"
    training = card.get("training", {})
    objective = training.get("objective", {})
    label = str(objective.get("name", "unknown")) if isinstance(objective, dict) else "unknown"
    threat = objective.get("threat") if isinstance(objective, dict) else None
    if isinstance(threat, dict) and "eps" in threat:
        label += f" {threat.get('norm', '')} {threat['eps']:g}"
    defense = training.get("defense")
    if isinstance(defense, dict):
        for t in defense.get("transforms", []):
            params = ", ".join(f"{k}={v}" for k, v in t.items() if k != "name")
            label += f" + {t.get('name')}" + (f"({params})" if params else "")
    return label


# ----------------------------------------------------------------------------------------------- gathering


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"no file at {path}: pass a run directory or a JSON file written by advrobust"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}): re-run the step that wrote it") from None


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _model_key(card: dict[str, Any]) -> str:
    # A transform defense keeps its source's weights: the recorded defense tells the two apart.
    key = str(card.get("weights_sha256") or "")
    defense = card.get("training", {}).get("defense")
    return key + ("+" + _fingerprint(defense)[:16] if defense else "")


class _Gatherer:
    """Collects models and documents from paths, attaching each document to its model."""

    def __init__(self) -> None:
        self.models: dict[str, ModelEntry] = {}
        self.dirs: dict[Path, str] = {}

    def entry_for_dir(self, folder: Path) -> ModelEntry:
        folder = folder.resolve()
        if folder in self.dirs:
            return self.models[self.dirs[folder]]
        card = _read(folder / CARD_NAME)
        if not isinstance(card, dict) or "arch" not in card:
            raise DataError(
                f"{folder / CARD_NAME} is not a model card: pass a run directory of `advrobust train`"
            )
        key = _model_key(card)
        entry = self.models.get(key)
        if entry is None:
            entry = ModelEntry(name=folder.name, key=key)
            self.models[key] = entry
        entry.path = entry.path or str(folder)
        entry.card = entry.card or card
        history = folder / HISTORY_NAME
        if entry.history is None and history.is_file():
            data = _read(history)
            entry.history = data if isinstance(data, dict) else None
        self.dirs[folder] = key
        return entry

    def entry_for_meta(self, model_meta: dict[str, Any], source: Path) -> ModelEntry:
        """The model a result or audit names in ``meta.model``: by its run directory, else its checksum."""
        sha = str(model_meta.get("weights_sha256") or "")
        raw = str(model_meta.get("path") or "")
        if raw:
            given = Path(raw)
            for candidate in (given, source.parent / given, source.parent / given.name):
                card_file = candidate / CARD_NAME
                if card_file.is_file():
                    card = _read(card_file)
                    if isinstance(card, dict) and (not sha or card.get("weights_sha256") == sha):
                        return self.entry_for_dir(candidate)
        name = Path(raw).name if raw else str(model_meta.get("arch", "model"))
        same = [m for m in self.models.values() if sha and m.weights_sha256 == sha]
        named = [m for m in same if m.name == name]
        if len(named) == 1 or len(same) == 1:
            return (named or same)[0]
        key = f"{sha}:{name}"
        if key not in self.models:
            self.models[key] = ModelEntry(name=name, key=key, path=raw or None)
        return self.models[key]

    def add_run(self, run: dict[str, Any], source: Path) -> None:
        meta = run.get("meta", {})
        if not run.get("results"):
            return
        model_meta = meta.get("model") or run["results"][0].get("meta", {}).get("model", {})
        entry = self.entry_for_meta(model_meta, source)
        known = {_fingerprint(r.get("results")) for r in entry.runs}
        if _fingerprint(run.get("results")) not in known:
            entry.runs.append(run)

    def add_audit(self, audit: dict[str, Any], source: Path) -> None:
        entry = self.entry_for_meta(audit.get("meta", {}).get("model", {}), source)
        if _fingerprint(audit) not in {_fingerprint(a) for a in entry.audits}:
            entry.audits.append(audit)

    def add_report(self, report: ReportData) -> None:
        for incoming in report.models:
            entry = self.models.get(incoming.key)
            if entry is None:
                self.models[incoming.key] = incoming
                continue
            entry.card = entry.card or incoming.card
            entry.history = entry.history or incoming.history
            entry.examples = entry.examples or incoming.examples
            for run in incoming.runs:
                known = {_fingerprint(r.get("results")) for r in entry.runs}
                if _fingerprint(run.get("results")) not in known:
                    entry.runs.append(run)
            for audit in incoming.audits:
                if _fingerprint(audit) not in {_fingerprint(a) for a in entry.audits}:
                    entry.audits.append(audit)

    def add_document(self, data: Any, source: Path, *, strict: bool) -> None:
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema == RUN_SCHEMA:
            self.add_run(data, source)
        elif schema == SCHEMA:
            self.add_run({"schema": RUN_SCHEMA, "meta": data.get("meta", {}), "results": [data]}, source)
        elif schema == AUDIT_SCHEMA:
            self.add_audit(data, source)
        elif schema == REPORT_SCHEMA:
            self.add_report(ReportData.from_dict(data))
        elif strict:
            raise DataError(
                f"{source} is not a file advrobust reports on (schema {schema!r}): pass a run directory, "
                "or the JSON of `advrobust eval --json`, `advrobust audit --json` or a report"
            )

    def add_path(self, path: Path) -> None:
        if path.is_dir():
            self.scan(path)
        elif path.name == CARD_NAME:
            self.entry_for_dir(path.parent)
        elif path.is_file() or not path.exists():
            self.add_document(_read(path), path, strict=True)
        else:
            raise DataError(f"{path} is neither a directory nor a file: pass a run directory or a JSON file")

    def scan(self, folder: Path) -> None:
        """Model directories first (anything with a card.json), then every result file beneath ``folder``."""
        files: list[Path] = []
        for root, dirs, names in os.walk(folder):
            depth = len(Path(root).relative_to(folder).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < _SCAN_DEPTH)
            files.extend(
                Path(root) / n for n in sorted(names) if n.endswith(".json") and not n.startswith(".")
            )
        cards = [f for f in files if f.name == CARD_NAME]
        if not cards and not files:
            raise DataError(
                f"{folder} holds no run directory or result file: pass what `advrobust train`/`eval` wrote"
            )
        for card in cards:
            self.entry_for_dir(card.parent)
        for file in files:
            if file.name in (CARD_NAME, HISTORY_NAME):
                continue
            try:
                data = _read(file)
            except DataError as exc:
                log.warning("skipping %s: %s", file, exc)
                continue
            self.add_document(data, file, strict=False)


def gather(paths: Iterable[str | os.PathLike[str]], *, title: str | None = None) -> ReportData:
    """Read run directories and JSON files (runs, evaluations, audits, reports) into one merged report.

    A directory is searched for run directories (``card.json``) and result files; results are attached to
    their model by the run directory they name, else by the weights' checksum.
    """
    gatherer = _Gatherer()
    for raw in paths:
        gatherer.add_path(Path(raw))
    if not gatherer.models:
        raise DataError(
            "found no model or result in the inputs: pass run directories or advrobust JSON files"
        )
    models = list(gatherer.models.values())
    names = Counter(m.name for m in models)
    seen: Counter[str] = Counter()
    for m in models:
        if names[m.name] > 1:
            seen[m.name] += 1
            m.name = f"{m.name}-{seen[m.name]}"
    return ReportData(models=models, **({"title": title} if title else {}))


def load_report(path: str | os.PathLike[str]) -> ReportData:
    """Read a ``report.json`` written by ``build_report``."""
    data = _read(Path(path))
    if not isinstance(data, dict):
        raise DataError(f"{path} is not an advrobust report")
    return ReportData.from_dict(data)


# ----------------------------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Headline:
    """The threat model that the report compares models at."""

    norm: str
    eps: float


def headline_threat(
    models: Sequence[ModelEntry], *, norm: str | None = None, eps: float | None = None
) -> Headline | None:
    """The norm most evaluated, at the largest eps that every model evaluated under it has (else given)."""
    counts = Counter(n for m in models for n in m.norms())
    if not counts:
        return None
    if norm is None:
        norm = max(counts, key=lambda n: (counts[n], n == "linf"))
    if eps is not None:
        return Headline(norm, float(eps))
    sets = [set(m.by_eps(norm)) for m in models if m.by_eps(norm)]
    if not sets:
        return None
    common = set.intersection(*sets)
    if common:
        return Headline(norm, max(common))
    everywhere = Counter(e for s in sets for e in s)
    return Headline(norm, max(everywhere, key=lambda e: (everywhere[e], e)))


@dataclass(frozen=True)
class ClassAccuracy:
    """Clean and robust accuracy of one class."""

    name: str
    clean: Accuracy
    robust: Accuracy


def per_class(evaluation: Evaluation, classes: Sequence[str] | None = None) -> list[ClassAccuracy] | None:
    """Clean and robust accuracy per true class, from the per-sample results; None without labels."""
    labels = evaluation.labels
    if labels is None:
        return None
    count = max([*labels, len(classes) - 1 if classes else 0]) + 1
    names = list(classes) if classes and len(classes) == count else [str(k) for k in range(count)]
    result = evaluation.result
    out = []
    for k in range(count):
        idx = [i for i, y in enumerate(labels) if y == k]
        clean = sum(result.clean_correct[i] for i in idx)
        robust = sum(result.robust_correct[i] for i in idx)
        out.append(ClassAccuracy(names[k], Accuracy(clean, len(idx)), Accuracy(robust, len(idx))))
    return out


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not finite."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
