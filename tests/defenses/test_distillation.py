"""Distillation: defensive distillation keeps accuracy but only masks cross-entropy gradients (margin/DLR
attacks, the standard suite and the audit see through it); robust distillation passes a robust teacher's
robustness to a smaller student; the CLI trains both and records the teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrobust.attacks import APGD, PGD
from advrobust.cli import main
from advrobust.data import ImageDataset
from advrobust.defenses import (
    Distillation,
    Distilled,
    RobustDistillation,
    TemperatureCE,
    describe_teacher,
    distill,
)
from advrobust.defenses.distillation import InnerLoss
from advrobust.errors import ConfigError
from advrobust.evaluation import evaluate
from advrobust.evaluation.audit import audit
from advrobust.models import ModelCard, Normalize, create_model, load_model, read_card, save_model
from advrobust.threat import ThreatModel
from advrobust.training import TrainConfig, create_objective, train

Batch = tuple[torch.Tensor, torch.Tensor]
THREAT = ThreatModel(norm="linf", eps=0.1)
MNIST = {"mean": [0.1307], "std": [0.3081]}


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=10, in_channels=1, **MNIST)


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    """A student 6x smaller than small-cnn (28k parameters vs 166k)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        Normalize(**MNIST),
        nn.Conv2d(1, 8, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def accuracy_under(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: PGD | APGD) -> float:
    return evaluate(model, (x, y), [attack], seed=0).robust.value


@pytest.fixture(scope="module")
def distilled(mini_train: ImageDataset) -> Distilled:
    """Papernot's recipe at T = 100 on 5,000 MNIST images: teacher at T, then the student on its soft labels."""
    config = TrainConfig(epochs=3, batch_size=32, lr=2e-3, seed=0)
    return distill(small_cnn(), mini_train, temperature=100, train_teacher=True, config=config)


def test_distilled_student_keeps_the_teachers_accuracy_with_a_saturated_softmax(
    distilled: Distilled, trained_cnn: nn.Module, batch: Batch
) -> None:
    x, y = batch
    with torch.no_grad():
        student, teacher, normal = distilled.student(x), distilled.teacher(x), trained_cnn(x)
    student_acc = float((student.argmax(1) == y).float().mean())
    teacher_acc = float((teacher.argmax(1) == y).float().mean())
    assert student_acc >= teacher_acc - 0.05 and student_acc >= 0.85, (student_acc, teacher_acc)
    assert not distilled.student.training
    # Deployed at T = 1: logits about T times larger than a normal network's, a saturated softmax.
    assert student.abs().amax(1).median() > 20 * normal.abs().amax(1).median()
    saturated = F.softmax(student, dim=1).amax(1) > 1 - 1e-6
    assert float(saturated.float().mean()) > 0.9
    assert distilled.teacher_result is not None
    assert distilled.result.history[-1]["loss"] < distilled.result.history[0]["loss"]


def test_cross_entropy_attacks_are_masked_but_margin_and_dlr_attacks_are_not(
    distilled: Distilled, trained_cnn: nn.Module, batch: Batch
) -> None:
    """Carlini & Wagner (2017): defensive distillation adds no robustness against attacks on the logits."""
    x, y = batch[0][:100], batch[1][:100]
    student = distilled.student
    ce = accuracy_under(student, x, y, PGD(threat=THREAT, steps=40))
    margin = accuracy_under(student, x, y, PGD(threat=THREAT, steps=40, loss="margin"))
    dlr = accuracy_under(student, x, y, APGD(threat=THREAT, steps=50, loss="dlr"))
    apgd_ce = accuracy_under(student, x, y, APGD(threat=THREAT, steps=50, loss="ce"))
    undefended = accuracy_under(trained_cnn, x, y, PGD(threat=THREAT, steps=40, loss="margin"))
    assert ce >= margin + 0.25 and apgd_ce >= dlr + 0.25, (ce, margin, apgd_ce, dlr)  # looks robust
    assert margin <= undefended + 0.1 and dlr <= undefended + 0.1, (margin, dlr, undefended)  # is not


def test_standard_suite_measures_the_distilled_model_at_the_undefended_level(
    distilled: Distilled, trained_cnn: nn.Module, batch: Batch
) -> None:
    x, y = batch[0][:40], batch[1][:40]
    result = evaluate(distilled.student, (x, y), "standard", threat=THREAT, seed=0)
    undefended = accuracy_under(trained_cnn, x, y, PGD(threat=THREAT, steps=40, loss="margin"))
    apgd_ce = result.attacks[0]  # the cascade's first attack: cross-entropy, which the softmax masks
    assert apgd_ce.params["loss"] == "ce"
    assert apgd_ce.accuracy.value >= result.robust.value + 0.25, result.to_dict()
    assert result.robust.value <= undefended + 0.12, (result.robust.value, undefended)


def test_audit_warns_and_explains_the_cross_entropy_number(distilled: Distilled, batch: Batch) -> None:
    x, y = batch[0][:50], batch[1][:50]
    report = audit(distilled.student, x, y, THREAT, steps=20, square_queries=100)
    checks = {c.name: c for c in report.checks}
    assert checks["logits"].status == "warn"
    assert "saturated" in checks["logits"].evidence and "margin/DLR" in checks["logits"].evidence
    loss_choice = checks["loss-choice"]
    assert loss_choice.status == "warn"
    assert loss_choice.values["pgd_ce"] >= loss_choice.values["pgd_margin"] + 0.25
    margin_pct = f"{100 * loss_choice.values['pgd_margin']:.1f}%"
    assert margin_pct in loss_choice.evidence and "defensive distillation" in loss_choice.evidence
    assert checks["gradients"].status == "pass"  # the margin loss still has gradients: nothing to BPDA
    assert "logits" in report.verdict and "loss-choice" in report.verdict


def test_losses_follow_the_papers_formulas(batch: Batch) -> None:
    x, y = batch[0][:16], batch[1][:16]
    student, teacher = small_cnn(0), small_cnn(1).train()
    logits = student(x)
    loss, out = TemperatureCE(temperature=50).loss(student, x, y, generator=None)
    assert torch.allclose(loss, F.cross_entropy(logits / 50, y)) and torch.equal(out, logits)

    with torch.no_grad():
        soft = F.softmax(teacher.eval()(x) / 20, dim=1)
    teacher.train()
    log_p = F.log_softmax(logits / 20, dim=1)
    kl = (soft * (soft.log() - log_p)).sum(1).mean()
    loss, _ = Distillation(teacher=teacher, temperature=20, alpha=0.75).loss(student, x, y, generator=None)
    assert torch.allclose(loss, 0.75 * kl + 0.25 * F.cross_entropy(logits / 20, y), atol=1e-6)
    loss.backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is None for p in teacher.parameters())  # the teacher only gives labels
    assert teacher.training  # and its mode is restored
    # A student that is its teacher has nothing left to learn.
    same, _ = Distillation(teacher=student, temperature=20).loss(student, x, y, generator=None)
    assert float(same.detach()) == pytest.approx(0.0, abs=1e-6)


def test_robust_distillation_loss_and_attack_forwards(batch: Batch) -> None:
    x, y = batch[0][:16], batch[1][:16]
    student = tiny_cnn().train()
    teacher = small_cnn(1)
    modes: list[bool] = []
    student[1].register_forward_hook(lambda module, _i, _o: modes.append(module.training))
    cases: tuple[tuple[InnerLoss, float], ...] = (("ce", 1.0), ("kl", 0.5))
    for inner, alpha in cases:
        modes.clear()
        objective = RobustDistillation(
            teacher=teacher, threat=THREAT, steps=3, temperature=10, alpha=alpha, inner_loss=inner
        )
        loss, logits = objective.loss(student, x, y, generator=torch.Generator().manual_seed(0))
        clean = 1 if alpha < 1 else 0
        assert modes == [False] * 3 + [True] * (1 + clean)  # the attack in eval mode, the loss in train mode
        assert loss.dim() == 0 and loss.requires_grad and logits.shape == (16, 10)
        with torch.no_grad():
            soft = F.softmax(teacher(x) / 10, dim=1)
            kl = F.kl_div(F.log_softmax(logits / 10, dim=1), soft, reduction="none").sum(1).mean()
            expected = alpha * 100 * kl + (1 - alpha) * F.cross_entropy(student(x), y)
        assert torch.allclose(loss.detach(), expected, rtol=1e-5)


def test_options_are_checked_and_the_teacher_is_recorded_by_its_fingerprint() -> None:
    teacher = small_cnn()
    with pytest.raises(ConfigError, match="needs a trained teacher"):
        create_objective("distillation")
    with pytest.raises(ConfigError, match="needs a trained teacher"):
        create_objective("robust-distillation", temperature=30)
    with pytest.raises(ConfigError, match="temperature"):
        TemperatureCE(temperature=0)
    with pytest.raises(ConfigError, match="alpha"):
        Distillation(teacher=teacher, alpha=1.5)
    with pytest.raises(ConfigError, match="inner_loss"):
        RobustDistillation(teacher=teacher, inner_loss="dlr")  # type: ignore[arg-type]
    params = RobustDistillation(teacher=teacher, threat=THREAT).params()
    json.dumps(params)
    assert params["teacher"] == describe_teacher(teacher)
    assert params["teacher"]["arch"] == "small-cnn" and params["teacher"]["parameters"] == 166406
    assert params["threat"]["eps"] == 0.1 and params["temperature"] == 30.0 and params["alpha"] == 1.0
    with torch.no_grad():
        next(teacher.parameters())[0].add_(1e-3)
    assert describe_teacher(teacher)["state_sha256"] != params["teacher"]["state_sha256"]


@pytest.fixture(scope="module")
def robust_teacher(mini_train: ImageDataset) -> nn.Module:
    """small-cnn adversarially trained (PGD-3 at linf eps 0.1) on 2,000 images, 3 epochs."""
    model = small_cnn()
    objective = create_objective("pgd-at", threat=THREAT, steps=3)
    config = TrainConfig(epochs=3, batch_size=32, lr=2e-3, seed=0, robust_val=0)
    train(model, mini_train.take(2000), objective=objective, config=config)
    return model


def test_robust_distillation_gives_a_small_student_the_teachers_robustness(
    robust_teacher: nn.Module, mini_train: ImageDataset, batch: Batch
) -> None:
    data = mini_train.take(2000)
    config = TrainConfig(epochs=3, batch_size=32, lr=2e-3, seed=0, robust_val=0)
    normal = tiny_cnn()
    train(normal, data, config=config)
    student = tiny_cnn()
    objective = RobustDistillation(teacher=robust_teacher, threat=THREAT, steps=3)
    result = train(student, data, objective=objective, config=config)
    assert "train_robust_accuracy" in result.history[-1]
    x, y = batch
    clean = evaluate(student, (x, y), [PGD(threat=THREAT, steps=20)]).clean.value
    ard = accuracy_under(student, x, y, PGD(threat=THREAT, steps=20))
    ard_margin = accuracy_under(student, x, y, PGD(threat=THREAT, steps=20, loss="margin"))
    base = accuracy_under(normal, x, y, PGD(threat=THREAT, steps=20))
    assert clean >= 0.75, clean
    # Well above the normally trained student, under cross-entropy and margin PGD alike (nothing masked).
    assert min(ard, ard_margin) >= base + 0.15, (ard, ard_margin, base)


def test_cli_distillation_trains_the_teacher_then_the_student(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "distilled"
    args = ["train", "--defense", "distillation", "--temperature", "20", "--epochs", "1", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    assert "trained the teacher (temperature-ce temperature=20)" in capsys.readouterr().out
    teacher_card, card = read_card(out / "teacher"), read_card(out)
    assert teacher_card.training["objective"] == {"name": "temperature-ce", "temperature": 20.0}
    objective = card.training["objective"]
    assert objective["name"] == "distillation" and objective["temperature"] == 20.0
    assert card.training["teacher"] == {
        "path": str(out / "teacher"),
        "weights_sha256": teacher_card.weights_sha256,
        "arch": "small-cnn",
        "objective": {"name": "temperature-ce", "temperature": 20.0},
        "trained_here": True,
        "seconds": teacher_card.training["seconds"],
    }
    assert objective["teacher"] == describe_teacher(load_model(out / "teacher"))
    assert isinstance(load_model(out), nn.Module)
    # Resuming the finished two-stage run retrains nothing and saves the same weights. (Compared by value:
    # the file checksum of identical weights may differ, safetensors writes its metadata in any order.)
    before = [describe_teacher(load_model(path))["state_sha256"] for path in (out, out / "teacher")]
    assert main([*args, "--resume", "--quiet"]) == 0
    after = [describe_teacher(load_model(path))["state_sha256"] for path in (out, out / "teacher")]
    assert after == before


def test_cli_robust_distillation_records_its_teacher(
    robust_teacher: nn.Module, mini_train: ImageDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher_dir = tmp_path / "robust-teacher"
    save_model(robust_teacher, teacher_dir, ModelCard.from_model(robust_teacher, input_shape=(1, 28, 28)))
    out = tmp_path / "student"
    common = ["train", "--epochs", "1", "--out", str(out), "--quiet"]
    options = ["--eps", "0.1", "--steps", "1", "--temperature", "10", "--alpha", "0.9", "--robust-val", "0"]
    assert main([*common, "--defense", "robust-distillation", "--teacher", str(teacher_dir), *options]) == 0
    card = read_card(out)
    objective = card.training["objective"]
    assert objective["name"] == "robust-distillation" and objective["threat"]["eps"] == 0.1
    assert objective["temperature"] == 10.0 and objective["alpha"] == 0.9 and objective["steps"] == 1
    teacher = card.training["teacher"]
    assert teacher["path"] == str(teacher_dir) and teacher["trained_here"] is False
    assert teacher["weights_sha256"] == read_card(teacher_dir).weights_sha256
    # Without a teacher, or with a defense that takes none: a clear error, nothing trained.
    capsys.readouterr()
    assert main([*common, "--defense", "robust-distillation", "--eps", "0.1"]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert main([*common, "--defense", "standard", "--teacher", str(teacher_dir)]) == 2
    assert "--teacher does not apply" in capsys.readouterr().err
