"""FAB on a really trained small CNN, and its hyperplane-box projection against scipy's solvers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

from advrobust.attacks import FAB, PGD, DeepFool
from advrobust.attacks.fab import _target_gap, project_hyperplane_box
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

Batch = tuple[torch.Tensor, torch.Tensor]
EPS = {"linf": 0.3, "l2": 2.0}
N = 64  # FAB linearises every class per step: a smaller batch keeps the file fast


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def reference_projection(point: np.ndarray, w: np.ndarray, b: float, norm: str) -> float:
    """The smallest norm of d with <w, point + d> = b and point + d in [0, 1], by a generic solver."""
    d = point.size
    box = [(-p, 1 - p) for p in point]
    c = b - w @ point
    if norm == "linf":  # variables (d, t): minimise t with -t <= d_i <= t
        a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
        res = linprog(
            np.r_[np.zeros(d), 1.0],
            A_ub=a_ub,
            b_ub=np.zeros(2 * d),
            A_eq=np.r_[w, 0.0][None],
            b_eq=[c],
            bounds=[*box, (0, None)],
        )
        return float(res.fun)
    res = minimize(
        lambda z: z @ z,
        np.zeros(d),
        jac=lambda z: 2 * z,
        constraints=[{"type": "eq", "fun": lambda z: w @ z - c, "jac": lambda z: w}],
        bounds=box,
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return float(np.sqrt(res.fun))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_matches_a_generic_solver(norm: str) -> None:
    rng = np.random.default_rng(0)
    rows, dims = 30, 8
    point = rng.uniform(0, 1, (rows, dims))
    w = rng.normal(size=(rows, dims))
    w[rng.uniform(size=(rows, dims)) < 0.2] = 0.0
    b = (w * rng.uniform(0, 1, (rows, dims))).sum(1)  # planes through a point of the box
    b[0] = w[0] @ point[0]  # the point already lies on the plane
    inputs = torch.tensor(point), torch.tensor(w), torch.tensor(b)
    d = project_hyperplane_box(*inputs, norm, (0.0, 1.0)).numpy()  # type: ignore[arg-type]
    for given, original in zip(inputs, (point, w, b), strict=True):
        np.testing.assert_array_equal(given.numpy(), original)  # the inputs are left as they were
    np.testing.assert_allclose((w * (point + d)).sum(1), b, atol=1e-9)
    assert (point + d).min() >= -1e-12 and (point + d).max() <= 1 + 1e-12
    assert np.abs(d[0]).max() == 0
    ord_ = np.inf if norm == "linf" else 2
    mine = np.linalg.norm(d, ord=ord_, axis=1)
    reference = [reference_projection(point[i], w[i], b[i], norm) for i in range(rows)]
    np.testing.assert_allclose(mine, reference, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_goes_to_the_nearest_corner_when_the_plane_misses_the_box(norm: str) -> None:
    point = torch.tensor([[0.2, 0.5, 0.9, 0.4]], dtype=torch.float64)
    w = torch.tensor([[1.0, -2.0, 0.0, 0.5]], dtype=torch.float64)
    b = torch.tensor([10.0], dtype=torch.float64)  # max of <w, z> over the box is 1.5
    d = project_hyperplane_box(point, w, b, norm, (0.0, 1.0))  # type: ignore[arg-type]
    torch.testing.assert_close(point + d, torch.tensor([[1.0, 0.0, 0.9, 1.0]], dtype=torch.float64))


@pytest.fixture(scope="module")
def small(batch: Batch) -> Batch:
    x, y = batch
    return x[:N], y[:N]


@pytest.fixture(scope="module")
def fab_linf(trained_cnn: nn.Module, small: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = small
    return FAB(threat=ThreatModel(eps=0.3), steps=30).run_min_norm(trained_cnn, x, y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_min_norm_points_are_adversarial_and_beat_deepfool(
    trained_cnn: nn.Module, small: Batch, fab_linf: tuple[torch.Tensor, torch.Tensor], norm: str
) -> None:
    x, y = small
    threat = ThreatModel(norm=norm, eps=EPS[norm])  # type: ignore[arg-type]
    if norm == "linf":
        x_adv, distance = fab_linf
    else:
        x_adv, distance = FAB(threat=threat, steps=30).run_min_norm(trained_cnn, x, y)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    found = torch.isfinite(distance)
    assert float(found.float().mean()) > 0.95
    assert bool((predict(trained_cnn, x_adv)[found] != y[found]).all())
    torch.testing.assert_close(distance[found], threat.distance(x_adv, x)[found])
    wrong = predict(trained_cnn, x) != y
    assert bool((distance[wrong] == 0).all()) and bool((distance[~wrong] > 0).all())
    _, deepfool = DeepFool(threat=threat).run_min_norm(trained_cnn, x, y)
    assert float(distance.median()) <= 1.1 * float(deepfool.median())
    both = found & torch.isfinite(deepfool)
    assert float(distance[both].mean()) < float(deepfool[both].mean())


def test_distances_are_on_the_scale_pgd_confirms(
    trained_cnn: nn.Module, small: Batch, fab_linf: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = small
    median = float(fab_linf[1].median())
    fooled = []
    for scale in (1.05, 0.3):
        pgd = PGD(threat=ThreatModel(eps=median * scale), steps=20)
        x_adv = pgd(trained_cnn, x, y, generator=torch.Generator().manual_seed(0))
        fooled.append(float((predict(trained_cnn, x_adv) != y).float().mean()))
    assert fooled[0] >= 0.5 > fooled[1]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attack_call_holds_eps_and_drops_accuracy(trained_cnn: nn.Module, small: Batch, norm: str) -> None:
    x, y = small
    x_before = x.clone()
    threat = ThreatModel(norm=norm, eps=EPS[norm])  # type: ignore[arg-type]
    x_adv = FAB(threat=threat, steps=10)(trained_cnn, x, y)
    FAB(threat=threat, steps=5, targeted=True, n_target_classes=2)(trained_cnn, x, y)
    assert torch.equal(x, x_before)  # the steps are written into FAB's own buffers, never into x
    assert float(threat.distance(x_adv, x).max()) <= threat.eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    clean = float((predict(trained_cnn, x) == y).float().mean())
    assert float((predict(trained_cnn, x_adv) == y).float().mean()) < clean - 0.5


def test_fab_t_hits_explicit_targets(trained_cnn: nn.Module, small: Batch) -> None:
    x, y = small
    targets = (y + 1) % 10
    x_adv, distance = FAB(threat=ThreatModel(eps=0.3), steps=30).run_min_norm(
        trained_cnn, x, y, targets=targets
    )
    found = torch.isfinite(distance)
    assert float(found.float().mean()) > 0.85
    assert bool((predict(trained_cnn, x_adv)[found] == targets[found]).all())
    with pytest.raises(ConfigError, match="targets equal the true labels"):
        FAB(threat=ThreatModel(), steps=1)(trained_cnn, x, y, targets=y)


def test_fab_t_over_runner_up_classes(
    trained_cnn: nn.Module, small: Batch, fab_linf: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # Without targets FAB-T only has to misclassify; trying 3 classes is at least as good as trying 1.
    x, y = small
    attack = FAB(threat=ThreatModel(eps=0.3), steps=15, targeted=True, n_target_classes=1)
    x_one, one = attack.run_min_norm(trained_cnn, x, y)
    x_three, three = FAB(
        threat=ThreatModel(eps=0.3), steps=15, targeted=True, n_target_classes=3
    ).run_min_norm(trained_cnn, x, y)
    for x_adv, distance in ((x_one, one), (x_three, three)):
        found = torch.isfinite(distance)
        assert float(found.float().mean()) > 0.9
        assert bool((predict(trained_cnn, x_adv)[found] != y[found]).all())
    assert bool((three <= one).all()) and bool((three < one).any())
    assert float(three.median()) <= 1.1 * float(fab_linf[1].median())


def test_target_gap_against_the_strongest_rival_or_the_label() -> None:
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x = torch.rand(5, 1, 3, 4)
    goal, label = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 2, 3, 0, 2])
    weight = linear[1].weight.detach()
    logits = linear(x).detach()
    gap, grad, _ = _target_gap(linear, x, goal, label)
    rows = torch.arange(5)
    torch.testing.assert_close(gap.squeeze(1), logits[rows, goal] - logits[rows, label])
    torch.testing.assert_close(grad.reshape(5, 12), weight[goal] - weight[label])
    rival = logits.scatter(1, goal.unsqueeze(1), float("-inf")).argmax(dim=1)
    gap, grad, _ = _target_gap(linear, x, goal)
    torch.testing.assert_close(gap.squeeze(1), logits[rows, goal] - logits[rows, rival])
    torch.testing.assert_close(grad.reshape(5, 12), weight[goal] - weight[rival])


def test_fab_t_rivals_agree_until_the_iterate_leaves_the_true_class(
    trained_cnn: nn.Module, small: Batch
) -> None:
    # Both linearise the same boundary at the (correctly classified) input, so one step gives the same point;
    # later steps, from iterates in a third class, differ. Both only report misclassified points.
    x, y = small
    threat = ThreatModel(norm="l2", eps=1.5)
    runs = {}
    for steps in (1, 20):
        for rival in ("strongest", "label"):
            attack = FAB(threat=threat, steps=steps, targeted=True, n_target_classes=3, rival=rival)
            runs[steps, rival] = attack.run_min_norm(trained_cnn, x, y)
    assert torch.equal(runs[1, "strongest"][1], runs[1, "label"][1])
    assert not torch.equal(runs[20, "strongest"][1], runs[20, "label"][1])
    for x_adv, distance in runs.values():
        found = torch.isfinite(distance)
        assert bool((predict(trained_cnn, x_adv)[found] != y[found]).all())
    found = torch.isfinite(runs[20, "label"][1])
    assert float(found.float().mean()) > 0.9


def test_restarts_only_improve_and_seed_reproduces(trained_cnn: nn.Module, small: Batch) -> None:
    x, y = small
    x, y = x[:32], y[:32]
    threat = ThreatModel(norm="l2", eps=2.0)
    _, one = FAB(threat=threat, steps=8).run_min_norm(trained_cnn, x, y)
    attack = FAB(threat=threat, steps=8, restarts=2)
    a, two = attack.run_min_norm(trained_cnn, x, y, generator=torch.Generator().manual_seed(1))
    b, again = attack.run_min_norm(trained_cnn, x, y, generator=torch.Generator().manual_seed(1))
    c, _ = attack.run_min_norm(trained_cnn, x, y, generator=torch.Generator().manual_seed(2))
    # Restart 0 starts at the input, so each sample's best can only shrink.
    assert bool((two <= one).all()) and bool((two < one).any())
    assert torch.equal(a, b) and torch.equal(two, again)
    assert not torch.equal(a, c)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="l1"):
        FAB(threat=ThreatModel(norm="l1", eps=10.0))
    with pytest.raises(ConfigError, match="steps"):
        FAB(threat=ThreatModel(), steps=0)
    with pytest.raises(ConfigError, match="restarts"):
        FAB(threat=ThreatModel(), restarts=0)
    with pytest.raises(ConfigError, match="eta"):
        FAB(threat=ThreatModel(), beta=1.5)
    with pytest.raises(ConfigError, match="rival must be one of strongest, label"):
        FAB(threat=ThreatModel(), rival="true")  # type: ignore[arg-type]


def test_run_takes_an_input_that_requires_grad(trained_cnn: nn.Module, small: Batch) -> None:
    # ``run`` is public to subclasses and wrappers: an x still attached to a graph must work as a plain one.
    x, y = small
    attack = FAB(threat=ThreatModel(eps=0.3), steps=5, targeted=True, n_target_classes=2)
    plain = attack.run(trained_cnn, x, y, None, None)
    attached = attack.run(trained_cnn, x.clone().requires_grad_(True), y, None, None)
    assert torch.equal(plain, attached)


def test_projection_keeps_the_wider_type_of_mixed_inputs() -> None:
    # Half-precision images with float32 logits: the plane's offset is float32, and so is the step.
    gen = torch.Generator().manual_seed(3)
    point = torch.rand(6, 10, generator=gen).half()
    w = torch.randn(6, 10, generator=gen).half()
    b = (w.float() * torch.rand(6, 10, generator=gen)).sum(1)
    for norm in ("linf", "l2"):
        d = project_hyperplane_box(point, w, b, norm, (0.0, 1.0))  # type: ignore[arg-type]
        assert d.dtype == torch.float32
