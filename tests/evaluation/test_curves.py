"""Robustness curves: consistent with fixed-eps evaluations, monotone, and honest about their sources."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from advrobust.attacks import APGD
from advrobust.evaluation import evaluate
from advrobust.evaluation.curves import robustness_curve
from advrobust.threat import ThreatModel

Batch = tuple[torch.Tensor, torch.Tensor]


def test_linf_curve_is_monotone_and_bounds_fixed_eps_results(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    x, y = x[:100], y[:100]
    curve = robustness_curve(trained_cnn, x, y, norm="linf", eps_max=0.2, points=5)
    assert curve.eps == [0.0, 0.05, 0.1, 0.15, 0.2]
    assert curve.sources == ["fab", "deepfool", "apgd"]
    clean = int((trained_cnn(x).argmax(1) == y).sum()) / 100
    assert curve.accuracy[0] == clean
    assert all(b <= a for a, b in zip(curve.accuracy, curve.accuracy[1:], strict=False))
    assert curve.accuracy[-1] < 0.1
    # At a grid point the curve is the worst case over the minimum-norm attacks and APGD, so it is at
    # most APGD's own accuracy at that eps (the same seed and batches).
    apgd_alone = evaluate(trained_cnn, (x, y), [APGD(threat=ThreatModel(eps=0.1))]).robust.value
    assert curve.accuracy_at(0.1) <= apgd_alone
    assert all(lo <= a <= hi for a, lo, hi in zip(curve.accuracy, curve.ci_low, curve.ci_high, strict=True))
    # Per-sample distances agree with the curve at every eps.
    assert curve.accuracy_at(0.05) == curve.accuracy[1]
    data = curve.to_dict()
    assert data["schema"] == "advrobust.curve/1" and len(data["distances"]) == 100


def test_l2_curve_uses_cw_too(trained_cnn: nn.Module, batch: Batch) -> None:
    from advrobust.attacks import CW

    x, y = batch
    x, y = x[:24], y[:24]
    cw = CW(
        threat=ThreatModel(norm="l2", eps=3.0),
        steps=100,
        binary_search_steps=4,
        initial_const=0.1,
        step_size=0.1,
    )
    curve = robustness_curve(
        trained_cnn, x, y, norm="l2", eps_max=3.0, points=4, attacks=[cw], fixed_eps_attack=None
    )
    assert curve.sources == ["cw"]
    finite = [d for d in curve.distances if math.isfinite(d)]
    assert len(finite) >= 20
    assert curve.accuracy[-1] <= 0.2


def test_a_defended_model_gets_an_adaptive_curve(trained_cnn: nn.Module, batch: Batch) -> None:
    """Through a non-differentiable defense the curve goes through BPDA: it does not show masked gradients as
    robustness (a plain curve stays near the clean accuracy at every eps)."""
    from advrobust.defenses import InputTransformDefense

    x, y = batch
    x, y = x[:48], y[:48]
    masked = InputTransformDefense(trained_cnn, ["bitdepth:4"]).eval()
    curve = robustness_curve(masked, x, y, norm="linf", eps_max=0.2, points=3)
    assert curve.sources == ["bpda(fab)", "bpda(deepfool)", "bpda(apgd)"]
    plain = robustness_curve(trained_cnn, x, y, norm="linf", eps_max=0.2, points=3)
    assert curve.accuracy[-1] <= plain.accuracy[-1] + 0.1  # about the undefended model's, not the clean one
    assert curve.accuracy[-1] < curve.accuracy[0] - 0.5
    noisy = InputTransformDefense(trained_cnn, ["noise:0.1"]).eval()
    random_curve = robustness_curve(noisy, x, y, norm="linf", eps_max=0.2, points=3)
    assert random_curve.sources == ["eot(apgd)"]
    assert random_curve.accuracy[-1] < 0.5


def test_a_fixed_eps_evaluation_folds_into_the_curve() -> None:
    from advrobust.evaluation.curves import RobustnessCurve

    inf = math.inf
    curve = RobustnessCurve(
        norm="linf",
        eps=[0.0, 0.1, 0.2, 0.3],
        accuracy=[0.75, 0.75, 0.5, 0.5],
        ci_low=[0.0] * 4,
        ci_high=[1.0] * 4,
        distances=[0.0, 0.15, inf, inf],
        sources=["fab"],
        n=4,
    )
    # The suite broke samples 1 and 2 at 0.1 (sample 0 was misclassified clean, sample 3 held).
    tighter = curve.with_fixed_eps(0.1, [False, True, True, False], "standard")
    assert tighter.distances == [0.0, 0.1, 0.1, inf]
    assert tighter.accuracy == [0.75, 0.25, 0.25, 0.25]
    assert tighter.sources == ["fab", "standard"]
    assert tighter.with_fixed_eps(0.3, [False] * 4, "standard").sources == ["fab", "standard"]


def test_what_the_curve_broke_within_an_evaluated_eps_counts_there() -> None:
    from advrobust.evaluation.curves import RobustnessCurve
    from advrobust.evaluation.results import Accuracy, AttackResult, EvalResult
    from advrobust.runs import CURVE_BROKEN, _with_curve

    # Five samples: misclassified, broken by the evaluation, robust to it but 0.05 from the curve's point,
    # robust to both (the curve's point is 0.2 away), and robust to the evaluation but misclassified by the
    # curve's own clean check (distance 0: one draw of a randomized model, no attack's find).
    result = EvalResult(
        threat={"norm": "linf", "eps": 0.1, "bounds": [0.0, 1.0]},
        clean=Accuracy(4, 5),
        robust=Accuracy(3, 5),
        attacks=[AttackResult("pgd", {}, Accuracy(3, 5), 4, 1, 1.0)],
        clean_correct=[False, True, True, True, True],
        robust_correct=[False, False, True, True, True],
        broken_by=[-2, 0, -1, -1, -1],
        seconds=1.0,
        clean_seconds=0.1,
        seed=0,
        cascade=True,
    )
    curve = RobustnessCurve(
        norm="linf",
        eps=[0.0, 0.1],
        accuracy=[0.6, 0.2],
        ci_low=[0.0, 0.0],
        ci_high=[1.0, 1.0],
        distances=[0.0, 0.08, 0.05, 0.2, 0.0],
        sources=["fab"],
        n=5,
    )
    folded = _with_curve(result, curve)
    assert folded.robust_correct == [False, False, False, True, True]
    assert folded.robust == Accuracy(2, 5)
    assert folded.broken_by == [-2, 0, CURVE_BROKEN, -1, -1]
    assert folded.meta["curve_broken"] == 1 and "fab" in folded.meta["curve_note"]
    assert _with_curve(folded, curve) == folded  # nothing more to fold
    far = dataclasses.replace(curve, distances=[0.0, 0.08, 0.15, 0.2, 0.0])
    assert _with_curve(result, far) is result
