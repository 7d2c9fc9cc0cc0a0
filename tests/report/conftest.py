"""Real runs to report on: a standard model trained for one epoch and its bit-depth defense, each evaluated
at two eps, the standard one with a robustness curve, the defense audited (about 10 s, once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from advrobust.attacks import create_attack
from advrobust.config import AuditSettings, DefendSettings, EvalSettings, TrainSettings
from advrobust.data import load_dataset
from advrobust.evaluation.curves import robustness_curve
from advrobust.models import load_model
from advrobust.report import Report, build_report
from advrobust.runs import audit_run, defend_run, eval_run, train_run
from advrobust.threat import ThreatModel

EPS = [0.1, 0.2]
N = 100


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    train_run(
        TrainSettings(
            data="mnist-mini", model="small-cnn", epochs=2, batch_size=64, lr=2e-3, out=str(root / "standard")
        )
    )
    defend_run(
        DefendSettings(model=str(root / "standard"), transform=["bitdepth:2"], out=str(root / "bitdepth"))
    )
    for name in ("standard", "bitdepth"):
        eval_run(
            EvalSettings(
                model=str(root / name),
                data="mnist-mini",
                n=N,
                eps=EPS,
                attack=["fgsm", "pgd"],
                steps=5,
                cascade=False,
                json=str(root / name / "eval.json"),
            )
        )
    # What `eval --curve` records, with a cheap minimum-norm attack (DeepFool) and FGSM on the grid.
    data = load_dataset("mnist-mini", split="test").take(N)
    curve = robustness_curve(
        load_model(root / "standard"),
        data.images.float() / 255,
        data.labels,
        eps_max=max(EPS),
        points=5,
        attacks=[create_attack("deepfool", threat=ThreatModel(eps=max(EPS)))],
        fixed_eps_attack="fgsm",
    )
    path = root / "standard" / "eval.json"
    run = json.loads(path.read_text())
    run["meta"]["curve"] = curve.to_dict()
    path.write_text(json.dumps(run))
    audit_run(
        AuditSettings(
            model=str(root / "bitdepth"),
            data="mnist-mini",
            n=50,
            eps=0.2,
            steps=5,
            square_queries=50,
            json=str(root / "bitdepth" / "audit.json"),
        )
    )
    return root


@pytest.fixture(scope="session")
def report(runs_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Report:
    torch.manual_seed(0)
    return build_report([runs_root], tmp_path_factory.mktemp("report"), examples=3, cards=True)


@pytest.fixture(scope="session")
def runs_json(runs_root: Path) -> dict[str, dict[str, Any]]:
    """The run JSON that ``advrobust eval --json`` wrote for each model."""
    return {
        name: json.loads((runs_root / name / "eval.json").read_text()) for name in ("standard", "bitdepth")
    }
