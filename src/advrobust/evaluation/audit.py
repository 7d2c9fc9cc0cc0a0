"""Gradient-masking audit: the sanity checks of Carlini et al. 2019 (arXiv:1902.06705) and AutoAttack.

Each check reports pass / warn / fail with its evidence. A model that only looks robust because its gradients
are broken (non-differentiable layers, saturated softmax, randomness, detached inputs) fails with the reason.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack, create_attack, input_gradient
from advrobust.contract import check_model_io, eval_mode
from advrobust.evaluation.evaluate import evaluate, saturated_fraction
from advrobust.threat import ThreatModel

Status = Literal["pass", "warn", "fail"]
_ORDER = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class Check:
    """One audit check: its status, the evidence in words, and the numbers behind it."""

    name: str
    status: Status
    evidence: str
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "evidence": self.evidence, "values": self.values}


@dataclass(frozen=True)
class AuditReport:
    """All checks for one model and threat model, and a plain-words verdict."""

    threat: dict[str, Any]
    n: int
    checks: list[Check]

    @property
    def status(self) -> Status:
        worst: Status = "pass"
        for check in self.checks:
            if _ORDER[check.status] > _ORDER[worst]:
                worst = check.status
        return worst

    @property
    def verdict(self) -> str:
        failed = [c.name for c in self.checks if c.status == "fail"]
        warned = [c.name for c in self.checks if c.status == "warn"]
        if failed == ["convergence"]:
            return (
                "Do not trust this robustness number yet: the attack has not converged (more steps and "
                "restarts break more samples). Raise steps and restarts, or use the standard suite, and "
                "evaluate again."
            )
        if failed:
            return (
                f"Do not trust this robustness number: {', '.join(failed)} failed, the signs of gradient masking. "
                "Evaluate with the adaptive attacks (BPDA for non-differentiable parts, EOT for randomness) "
                "and black-box attacks before reporting."
            )
        if warned:
            return f"Usable with care: {', '.join(warned)} raised warnings; read their evidence."
        return "No sign of gradient masking in these checks."

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "advrobust.audit/1",
            "threat": self.threat,
            "n": self.n,
            "status": self.status,
            "verdict": self.verdict,
            "checks": [c.to_dict() for c in self.checks],
        }


@contextmanager
def _count_gradient_calls() -> Iterator[list[int]]:
    """Count calls of torch.autograd.grad and Tensor.backward made while the block runs."""
    calls = [0]
    original_grad = torch.autograd.grad
    original_backward = torch.Tensor.backward

    def grad(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original_grad(*args, **kwargs)

    def backward(self: Tensor, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original_backward(self, *args, **kwargs)  # type: ignore[no-untyped-call]

    torch.autograd.grad = grad
    torch.Tensor.backward = backward  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        torch.autograd.grad = original_grad
        torch.Tensor.backward = original_backward  # type: ignore[method-assign]


def _acc(model: nn.Module, x: Tensor, y: Tensor, attack: Attack, seed: int, batch_size: int) -> Tensor:
    result = evaluate(model, (x, y), [attack], batch_size=batch_size, seed=seed, cascade=False)
    return torch.tensor(result.robust_correct)


def _unbounded_eps(threat: ThreatModel, x: Tensor) -> float:
    """A budget that reaches every point of the input box."""
    width = threat.bounds[1] - threat.bounds[0]
    d = x[0].numel()
    return {"linf": width, "l2": width * math.sqrt(d), "l1": width * d}[threat.norm]


def audit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    steps: int = 40,
    seed: int = 0,
    batch_size: int = 256,
    square_queries: int = 1000,
    tolerance: float = 0.02,
) -> AuditReport:
    """Run the gradient-masking checks on ``model`` at ``(x, y)`` under ``threat``.

    ``tolerance`` is the fraction of samples by which a weaker attack may beat a stronger one before it
    counts as evidence of masking (noise in small samples).
    Shape: x (N, C, H, W) in threat.bounds, y (N,) int64.
    """
    checks: list[Check] = []
    n = x.shape[0]
    logits = check_model_io(model, x, y, threat.bounds)
    clean = logits.argmax(dim=1) == y
    clean_acc = float(clean.float().mean())

    # Outputs: logits, and not saturated (saturated softmax makes cross-entropy gradients vanish).
    saturated = saturated_fraction(logits)
    checks.append(
        Check(
            "logits",
            "warn" if saturated > 0.5 else "pass",
            f"outputs are logits; softmax saturated (p > 1 - 1e-6) on {100 * saturated:.0f}% of samples"
            + (
                ": cross-entropy gradients vanish there (as after defensive distillation), use margin/DLR "
                "losses (the standard suite does)"
                if saturated > 0.5
                else ""
            ),
            {"saturated_fraction": saturated},
        )
    )

    # Determinism: a randomized model needs EOT.
    with torch.no_grad(), eval_mode(model):
        again = model(x)
    deterministic = bool(torch.allclose(again, logits, atol=1e-5, rtol=1e-4))
    checks.append(
        Check(
            "deterministic",
            "pass" if deterministic else "warn",
            "two forward passes agree"
            if deterministic
            else "two forward passes differ: the model is randomized, "
            "evaluate it with EOT (expectation over transformation)",
            {"max_difference": float((again - logits).abs().max())},
        )
    )

    # Gradients reach the input, are finite and not zero.
    with eval_mode(model):
        probe = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(probe)
        connected = out.requires_grad
        with _count_gradient_calls() as calls, torch.enable_grad():
            model(x.detach().clone().requires_grad_(True))
    if not connected:
        checks.append(
            Check(
                "gradients",
                "fail",
                "the output does not depend differentiably on the input (the forward pass detaches it or leaves "
                "autograd): gradient attacks are blind, use BPDA",
                {"connected": False},
            )
        )
    else:
        grad, _, _ = input_gradient(model, x, y, None, "margin")
        flat = grad.reshape(n, -1)
        bad = (~torch.isfinite(flat).all(dim=1)) | (flat.abs().amax(dim=1) == 0)
        bad_frac = float(bad.float().mean())
        status: Status = "fail" if bad_frac > 0.05 else ("warn" if bad_frac > 0 else "pass")
        checks.append(
            Check(
                "gradients",
                status,
                f"input gradient of the margin loss is zero or not finite for {100 * bad_frac:.1f}% of samples"
                + (
                    ": a non-differentiable or saturating layer masks them, use BPDA"
                    if status == "fail"
                    else ""
                ),
                {"zero_or_nonfinite_fraction": bad_frac},
            )
        )
    checks.append(
        Check(
            "no-gradients-in-forward",
            "warn" if calls[0] else "pass",
            f"the forward pass computed gradients {calls[0]} time(s)"
            + (
                " (a gradient-based purification or defense inside the model: attack it adaptively)"
                if calls[0]
                else ""
            ),
            {"gradient_calls": calls[0]},
        )
    )

    # Attack-strength orderings.
    pgd = create_attack("pgd", threat=threat, steps=steps, loss="ce")
    pgd_ok = _acc(model, x, y, pgd, seed, batch_size)
    fgsm_ok = _acc(model, x, y, create_attack("fgsm", threat=threat), seed, batch_size)
    margin_ok = _acc(
        model, x, y, create_attack("pgd", threat=threat, steps=steps, loss="margin"), seed, batch_size
    )
    strong_ok = _acc(
        model,
        x,
        y,
        create_attack("pgd", threat=threat, steps=5 * steps, restarts=5, loss="margin"),
        seed,
        batch_size,
    )
    white_ok = pgd_ok & margin_ok & strong_ok
    pgd_acc, fgsm_acc = float(pgd_ok.float().mean()), float(fgsm_ok.float().mean())
    only_fgsm = float((~fgsm_ok & pgd_ok).float().mean())
    checks.append(
        Check(
            "iterative-beats-single-step",
            "fail" if only_fgsm > tolerance and fgsm_acc < pgd_acc else "pass",
            f"PGD-{steps} accuracy {100 * pgd_acc:.1f}% vs FGSM {100 * fgsm_acc:.1f}%; FGSM alone breaks "
            f"{100 * only_fgsm:.1f}% of samples that PGD does not",
            {"pgd": pgd_acc, "fgsm": fgsm_acc, "fgsm_only_fraction": only_fgsm},
        )
    )
    margin_gain = float((pgd_ok & ~margin_ok).float().mean())
    margin_acc = float(margin_ok.float().mean())
    checks.append(
        Check(
            "loss-choice",
            "warn" if margin_gain > tolerance else "pass",
            f"PGD with the margin loss breaks {100 * margin_gain:.1f}% more samples than with cross-entropy "
            f"(accuracy {100 * margin_acc:.1f}% vs {100 * pgd_acc:.1f}%)"
            + (
                ": cross-entropy is masked, e.g. by a saturated softmax (defensive distillation), so "
                "cross-entropy attacks (PGD-CE, the quick suite) overstate robustness; report margin/DLR "
                "numbers (the standard suite)"
                if margin_gain > tolerance
                else ""
            ),
            {"pgd_ce": pgd_acc, "pgd_margin": margin_acc},
        )
    )
    base_ok = pgd_ok & margin_ok
    gain = float((base_ok & ~strong_ok).float().mean())
    checks.append(
        Check(
            "convergence",
            "fail" if gain > 2.5 * tolerance else ("warn" if gain > tolerance else "pass"),
            f"5x more steps and 5 restarts break {100 * gain:.1f}% more samples"
            + (": the attack has not converged, raise steps and restarts" if gain > tolerance else ""),
            {"extra_broken_fraction": gain, "strong": float(strong_ok.float().mean())},
        )
    )

    # Budget: accuracy must fall as eps grows and reach 0 when the budget covers the whole box (there the
    # attacker may choose any input, so any model that predicts more than one class can be fooled on every
    # sample; what stays correct is what the attack failed to find: Carlini et al., 2019, section 5).
    grid = [threat.eps * f for f in (0.25, 0.5, 1.0, 2.0)] + [_unbounded_eps(threat, x)]
    curve = []
    for eps in grid:
        attack = create_attack("pgd", threat=threat.with_eps(eps), steps=max(steps, 100), loss="margin")
        curve.append(float(_acc(model, x, y, attack, seed, batch_size).float().mean()))
    rise = max((b - a for a, b in itertools.pairwise(curve)), default=0.0)
    increasing = rise > tolerance
    unbounded_acc = curve[-1]
    budget_status: Status = (
        "fail" if unbounded_acc > tolerance or rise > 2.5 * tolerance else ("warn" if increasing else "pass")
    )
    checks.append(
        Check(
            "budget",
            budget_status,
            "accuracy at eps "
            + ", ".join(f"{e:g}: {100 * a:.1f}%" for e, a in zip(grid, curve, strict=True))
            + (
                f"; with a budget covering the whole input box it stays at {100 * unbounded_acc:.1f}% "
                "(it must reach 0: any input is allowed there): gradients are masked"
                if unbounded_acc > tolerance
                else ""
            )
            + ("; accuracy rises with eps somewhere: the attack is unreliable" if increasing else ""),
            {"eps": grid, "accuracy": curve},
        )
    )

    # White-box must beat black-box and random noise.
    square_ok = _acc(
        model, x, y, create_attack("square", threat=threat, queries=square_queries), seed, batch_size
    )
    noise_ok = _acc(model, x, y, create_attack("noise", threat=threat), seed, batch_size)
    for name, other_ok, label in (
        ("white-box-beats-black-box", square_ok, "Square"),
        ("white-box-beats-noise", noise_ok, "random noise"),
    ):
        extra = float((white_ok & ~other_ok).float().mean())
        checks.append(
            Check(
                name,
                "fail" if extra > tolerance else "pass",
                f"{label} breaks {100 * extra:.1f}% of samples that every gradient attack missed "
                f"({label} accuracy {100 * float(other_ok.float().mean()):.1f}% vs white-box {100 * float(white_ok.float().mean()):.1f}%)"
                + (": the gradients mislead the attacks" if extra > tolerance else ""),
                {
                    "other": float(other_ok.float().mean()),
                    "white_box": float(white_ok.float().mean()),
                    "extra_fraction": extra,
                },
            )
        )
    checks.insert(
        0,
        Check("clean", "pass", f"clean accuracy {100 * clean_acc:.1f}% on {n} samples", {"clean": clean_acc}),
    )
    return AuditReport(threat=threat.to_dict(), n=n, checks=checks)
